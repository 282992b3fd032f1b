"""The dashboard's HTTP routes under /backvault/dashboard/: login, logout, the pages and the stylesheet.

Pages are server-rendered (Jinja2, autoescaped) and read-only. A request carries the session cookie
(session.py); the key it names is looked up on every request, so a deleted or deactivated key is
signed out at its next click, and each page authorizes its AWS action as the API does (views.py).
Form posts (login, logout) must come from this server's own pages (Origin/Referer), on top of the
cookie's SameSite=Strict. Errors are HTML pages here, not the API's JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from backvault.api.dashboard import views
from backvault.api.dashboard.charts import state_class
from backvault.api.dashboard.session import (
    COOKIE_NAME,
    SESSION_SECONDS,
    LoginThrottle,
    SessionSigner,
    WrongCredentials,
    same_origin,
    secrets_match,
)
from backvault.api.protocol import redacted_traceback
from backvault.api.throttle import RequestThrottled, Throttle
from backvault.control.context import ServiceContext
from backvault.control.identity import Principal, record_access_key_use, signing_secret
from backvault.domain.errors import BackupServiceError, UnrecognizedClientException

logger = logging.getLogger(__name__)

BASE_PATH = "/backvault/dashboard"
LOGIN_PATH = f"{BASE_PATH}/login"
INVALID_LOGIN = "Invalid access key or secret"
_HERE = Path(__file__).resolve().parent
_SECURITY_HEADERS = {
    # Inline SVG needs no script; the only style sheet is ours; forms post only back here.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAVIGATION = (
    ("overview", "Overview", "/"),
    ("resources", "Protected resources", "/resources"),
    ("jobs", "Jobs", "/jobs"),
    ("recovery_points", "Recovery points", "/recovery-points"),
    ("compliance", "Compliance", "/compliance"),
    ("restore_tests", "Restore tests", "/restore-tests"),
)


def template_environment() -> Environment:
    """The Jinja2 environment of the dashboard's templates (autoescaping everything)."""
    environment = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        when=views.format_time,
        size=views.human_size,
        duration=views.human_duration,
        state_class=state_class,
    )
    environment.globals.update(base=BASE_PATH, navigation=NAVIGATION, job_duration=views.job_duration)
    return environment


class Dashboard:
    """The dashboard's request handlers over one catalog."""

    def __init__(
        self,
        context: ServiceContext,
        *,
        region: str,
        throttle: Throttle | None = None,
        login_throttle: LoginThrottle | None = None,
        signer: SessionSigner | None = None,
    ) -> None:
        self.context = context
        self.region = region
        self.throttle = throttle
        self.login_throttle = login_throttle or LoginThrottle()
        self.signer = signer or SessionSigner()
        self.templates = template_environment()
        self.stylesheet = (_HERE / "static" / "dashboard.css").read_bytes()

    # --- rendering ---------------------------------------------------------------------------------

    def render(
        self, template: str, *, status: int = 200, principal: Principal | None = None, **values: Any
    ) -> HTMLResponse:
        """Render a template with the page chrome's values into an HTML response."""
        body = self.templates.get_template(template).render(
            user=principal,
            region=self.region,
            account=self.context.account,
            active=values.pop("active", None),
            **values,
        )
        return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)

    def error_page(self, status: int, title: str, message: str, principal: Principal | None) -> HTMLResponse:
        """An HTML error page."""
        return self.render("error.html", status=status, principal=principal, title=title, message=message)

    # --- sessions ----------------------------------------------------------------------------------

    def _signed_in(self, request: Request) -> Principal | None:
        """The principal of the request's session, if it is valid and its key still usable."""
        session = self.signer.verify(request.cookies.get(COOKIE_NAME), self.context.now())
        if session is None:
            return None
        try:
            principal, _ = signing_secret(self.context, session.access_key_id)
        except BackupServiceError as error:
            logger.info("dashboard session of key %s refused: %s", session.access_key_id, error.code)
            return None
        return principal

    def _to_login(self, request: Request) -> Response:
        response = RedirectResponse(LOGIN_PATH, status_code=303, headers=_SECURITY_HEADERS)
        if COOKIE_NAME in request.cookies:
            self._clear_cookie(response)
        return response

    def _clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE_NAME, path=BASE_PATH, httponly=True, samesite="strict")

    # --- login and logout --------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        """GET the login page."""
        return self.render("login.html", error=None)

    async def login(self, request: Request) -> Response:
        """POST credentials: set the session cookie, or answer 401 with the login page."""
        if not same_origin(request.headers):
            return self.error_page(403, "Refused", "Cross-site form posts are refused.", None)
        try:
            form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:  # more fields than the form has
            return self.error_page(400, "Bad request", "The sign-in form was not understood.", None)
        access_key_id = (form.get("access_key_id") or [""])[0].strip()
        secret = (form.get("secret_access_key") or [""])[0]
        client = request.client.host if request.client else "-"
        if not self.login_throttle.allow(client, access_key_id):
            logger.warning("dashboard login throttled (client %s)", client)
            return self.render(
                "login.html", status=429, error="Too many login attempts: wait a minute, then try again."
            )
        try:
            principal = await run_in_threadpool(self._check_credentials, access_key_id, secret)
        except WrongCredentials:
            logger.info("dashboard login refused (client %s)", client)
            return self.render("login.html", status=401, error=INVALID_LOGIN)
        logger.info("dashboard login of user %s with key %s", principal.user_name, principal.access_key_id)
        response = RedirectResponse(f"{BASE_PATH}/", status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE_NAME,
            self.signer.issue(principal.access_key_id, self.context.now()),
            max_age=SESSION_SECONDS,
            path=BASE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _check_credentials(self, access_key_id: str, secret: str) -> Principal:
        """The principal a key id and secret belong to; WrongCredentials for anything else."""
        try:
            principal, expected = signing_secret(self.context, access_key_id)
        except UnrecognizedClientException:
            secrets_match(secret, "-" * 40)  # spend the same time as a wrong secret would
            raise WrongCredentials() from None
        except BackupServiceError as error:  # the key exists but cannot be unwrapped
            logger.error("dashboard login with key %s failed: %s", access_key_id, error.code)
            raise WrongCredentials() from None
        if not secrets_match(secret, expected):
            raise WrongCredentials()
        try:
            record_access_key_use(self.context, access_key_id, self.region)
        except BackupServiceError as error:  # bookkeeping only
            logger.warning("could not record the use of access key %s: %s", access_key_id, error.code)
        return principal

    async def logout(self, request: Request) -> Response:
        """POST: end the session (clear the cookie) and go back to the login page."""
        if not same_origin(request.headers):
            return self.error_page(403, "Refused", "Cross-site form posts are refused.", None)
        response = RedirectResponse(LOGIN_PATH, status_code=303, headers=_SECURITY_HEADERS)
        self._clear_cookie(response)
        return response

    # --- pages -------------------------------------------------------------------------------------

    def page(self, name: str, template: str, build: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
        """Return the GET handler of a page: session, throttle, the view (authorized), render."""

        async def handler(request: Request) -> Response:
            principal = await run_in_threadpool(self._signed_in, request)
            if principal is None:
                return self._to_login(request)
            if self.throttle is not None:
                try:
                    self.throttle.check(principal.access_key_id)
                except RequestThrottled as error:
                    return self.error_page(429, "Slow down", error.message, principal)
            query = {key: value for key, value in request.query_params.items() if value}
            # Catalog reads and rendering both run off the event loop.
            return await run_in_threadpool(self._build_page, name, template, build, principal, query)

        handler.__name__ = f"dashboard_{name}"
        return handler

    def _build_page(
        self,
        name: str,
        template: str,
        build: Callable[..., dict[str, Any]],
        principal: Principal,
        query: dict[str, str],
    ) -> HTMLResponse:
        try:
            values = build(self.context, principal, query)
        except views.PageForbidden as refused:
            return self.render(
                "forbidden.html",
                status=403,
                principal=principal,
                action=refused.action,
                message=refused.message,
            )
        except views.BadPageRequest as error:
            return self.error_page(400, "Bad request", str(error), principal)
        except BackupServiceError as error:  # the catalog is busy or unreachable, for example
            return self.error_page(error.http_status, error.code, error.message, principal)
        except Exception as error:
            logger.error("dashboard page %s failed:\n%s", name, redacted_traceback(error))
            return self.error_page(
                500, "Internal error", "The page could not be built; see the log.", principal
            )
        return self.render(template, principal=principal, active=name, **values)

    async def stylesheet_file(self, request: Request) -> Response:
        """GET the style sheet (public: the login page needs it)."""
        return Response(
            self.stylesheet,
            media_type="text/css",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    async def to_base(self, request: Request) -> Response:
        """GET /backvault/dashboard: to the overview's canonical URL."""
        return RedirectResponse(f"{BASE_PATH}/", status_code=308)

    async def not_found(self, request: Request) -> Response:
        """Any other path under the dashboard."""
        return self.error_page(404, "Not found", "There is no dashboard page here.", None)


def _overview(context: ServiceContext, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
    return views.overview(context, principal)


def _resources(context: ServiceContext, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
    return views.resources(context, principal)


def _jobs(context: ServiceContext, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
    job_type = query.get("type")
    state = query.get("state")
    return views.jobs(
        context,
        principal,
        job_type=job_type.upper() if job_type else None,
        state=state.upper() if state else None,
    )


def _recovery_points(context: ServiceContext, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
    return views.recovery_points(context, principal, vault_name=query.get("vault"))


def _compliance(context: ServiceContext, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
    return views.compliance(context, principal)


def _restore_tests(context: ServiceContext, principal: Principal, query: dict[str, str]) -> dict[str, Any]:
    return views.restore_tests(context, principal)


def dashboard_router(
    context: ServiceContext,
    *,
    region: str,
    throttle: Throttle | None = None,
    login_throttle: LoginThrottle | None = None,
    signer: SessionSigner | None = None,
) -> APIRouter:
    """Return the dashboard's routes; include them before the API's catch-all route."""
    dashboard = Dashboard(
        context, region=region, throttle=throttle, login_throttle=login_throttle, signer=signer
    )
    router = APIRouter(include_in_schema=False)
    router.add_api_route(BASE_PATH, dashboard.to_base, methods=["GET"])
    router.add_api_route(LOGIN_PATH, dashboard.login_form, methods=["GET"])
    router.add_api_route(LOGIN_PATH, dashboard.login, methods=["POST"])
    router.add_api_route(f"{BASE_PATH}/logout", dashboard.logout, methods=["POST"])
    router.add_api_route(f"{BASE_PATH}/static/dashboard.css", dashboard.stylesheet_file, methods=["GET"])
    pages = {
        "overview": ("overview.html", _overview),
        "resources": ("resources.html", _resources),
        "jobs": ("jobs.html", _jobs),
        "recovery_points": ("recovery_points.html", _recovery_points),
        "compliance": ("compliance.html", _compliance),
        "restore_tests": ("restore_tests.html", _restore_tests),
    }
    for name, _, path in NAVIGATION:
        template, build = pages[name]
        router.add_api_route(BASE_PATH + path, dashboard.page(name, template, build), methods=["GET"])
    router.add_api_route(
        BASE_PATH + "/{rest:path}",
        dashboard.not_found,
        methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"],
    )
    return router
