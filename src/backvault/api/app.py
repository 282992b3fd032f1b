"""The HTTP server: AWS Backup's REST API plus backvault's ``/backvault/...`` extensions, in one FastAPI app.

Every AWS operation request goes through ``handle_operation``: body (size-limited) -> SigV4
authentication -> per-key throttle -> route and parse (protocol.py) -> authorization of
``backup:<Operation>`` on the resources the request names -> the control service -> serialization.
Errors are AWS-shaped (``x-amzn-ErrorType`` header, ``__type``/``Message`` body); an unexpected
exception becomes a 500 InternalFailure whose body carries only a request id, never a stack trace.

The extensions (storage locations, source endpoints, discovery, users and keys) are ordinary FastAPI
routes, listed in the OpenAPI document at ``/openapi.json``; the AWS operations are not (botocore's
service model is their specification).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backvault.api.auth import Principal, authenticate_request, authorize, require_action
from backvault.api.dashboard import dashboard_router
from backvault.api.extension_routes import extension_router
from backvault.api.identity_routes import router as identity_router
from backvault.api.operations import operation_handler
from backvault.api.protocol import (
    RestJsonProtocol,
    UnknownOperationException,
    backup_protocol,
    internal_failure,
    redacted_traceback,
    serialize_error,
)
from backvault.api.resource_arns import operation_resource_arns
from backvault.api.throttle import MAX_REQUEST_BODY_BYTES, RequestTooLarge, Throttle
from backvault.control.context import ServiceContext
from backvault.control.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from backvault.control.metrics import render_metrics
from backvault.domain.errors import BackupServiceError, InternalFailure, InvalidParameterValueException

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-amzn-RequestId"
ALL_METHODS = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"]


@dataclass(frozen=True)
class ApiState:
    """What request handlers need, kept on ``app.state.api``."""

    context: ServiceContext
    region: str
    throttle: Throttle
    protocol: RestJsonProtocol

    def authenticate(
        self, *, method: str, raw_path: str, query_string: str, headers: Mapping[str, str], body: bytes
    ) -> Principal:
        """Verify the request's signature and charge the caller's throttle."""
        principal = authenticate_request(
            self.context,
            method=method,
            path=raw_path,
            query_string=query_string,
            headers=headers,
            body=body,
            region=self.region,
        )
        self.throttle.check(principal.access_key_id)
        return principal


def create_app(
    context: ServiceContext, *, region: str = "local", throttle: Throttle | None = None
) -> FastAPI:
    """Return the API application serving ``context``'s catalog, signed for ``region``."""
    app = FastAPI(
        title="backvault extensions",
        version="1",
        description=(
            "backvault's own endpoints under /backvault/ (storage locations, source endpoints, discovery, "
            "notification sinks and deliveries, users and access keys). Requests are signed with AWS "
            f"Signature V4 (service 'backup', region '{region}'). The AWS Backup API itself is served at its "
            "usual paths; see botocore's 'backup' service model."
        ),
    )
    state = ApiState(context, region, throttle or Throttle(), backup_protocol())
    app.state.api = state
    app.state.context = context
    app.state.region = region
    app.state.throttle = state.throttle
    app.add_middleware(BodySizeLimit, max_bytes=MAX_REQUEST_BODY_BYTES)
    app.add_exception_handler(BackupServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.include_router(extension_router(state))
    app.include_router(identity_router)
    app.add_api_route(
        "/backvault/metrics",
        _metrics_endpoint,
        methods=["GET"],
        dependencies=[Depends(require_action("backvault:GetMetrics"))],
        summary="Prometheus metrics of the whole installation (text format)",
    )
    # The web dashboard (HTML, its own cookie sessions); before the catch-all, which would take its paths.
    app.include_router(dashboard_router(context, region=region, throttle=state.throttle))
    app.add_api_route(
        "/{aws_path:path}", _aws_endpoint, methods=ALL_METHODS, include_in_schema=False, name="aws-backup"
    )
    return app


async def _metrics_endpoint(request: Request) -> Response:
    state: ApiState = request.app.state.api
    body = await run_in_threadpool(render_metrics, state.context)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


# --- AWS operations -----------------------------------------------------------------------------------


async def _aws_endpoint(request: Request) -> Response:
    state: ApiState = request.app.state.api
    body = await request.body()
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    status, headers, content = await run_in_threadpool(
        handle_operation,
        state,
        method=request.method,
        raw_path=raw_path.decode("latin-1"),
        query_string=request.scope.get("query_string", b"").decode("latin-1"),
        headers=request.headers,
        body=body,
    )
    return Response(content=content, status_code=status, headers=headers)


def handle_operation(
    state: ApiState, *, method: str, raw_path: str, query_string: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Run one AWS Backup API request to its (status, headers, body)."""
    request_id = str(uuid.uuid4())
    started = time.monotonic()
    operation = "-"
    caller = "-"
    try:
        principal = state.authenticate(
            method=method, raw_path=raw_path, query_string=query_string, headers=headers, body=body
        )
        caller = principal.access_key_id
        operation, labels = state.protocol.match(method, raw_path, query_string)
        parameters = state.protocol.parse_request(operation, labels, query_string, headers, body)
        resources = operation_resource_arns(state.context, operation, parameters)
        authorize(state.context, principal, f"backup:{operation}", resources)
        result = operation_handler(operation)(state.context, parameters)
        status, answer_headers, content = state.protocol.serialize_response(operation, result)
    except BackupServiceError as error:
        status, answer_headers, content = serialize_error(error)
    except Exception as error:
        logger.error("request %s (%s) failed:\n%s", request_id, operation, redacted_traceback(error))
        status, answer_headers, content = serialize_error(internal_failure(request_id))
    answer_headers[REQUEST_ID_HEADER] = request_id
    logger.info(
        "%s %s key=%s -> %d in %.1f ms (request %s)",
        operation,
        method,
        caller,
        status,
        (time.monotonic() - started) * 1000,
        request_id,
    )
    return status, answer_headers, content


# --- errors of the extension routes ------------------------------------------------------------------


def error_response(error: BackupServiceError) -> Response:
    """Return the AWS-shaped HTTP answer for an error."""
    status, headers, content = serialize_error(error)
    headers[REQUEST_ID_HEADER] = str(uuid.uuid4())
    return Response(content=content, status_code=status, headers=headers)


async def _service_error_handler(request: Request, error: Exception) -> Response:
    if not isinstance(error, BackupServiceError):  # registered for that class only
        error = InternalFailure("internal error")
    return error_response(error)


async def _validation_error_handler(request: Request, error: Exception) -> Response:
    problems = []
    for item in error.errors() if isinstance(error, RequestValidationError) else []:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        problems.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    message = "Invalid request: " + ("; ".join(problems) or "the request does not match the operation")
    return error_response(InvalidParameterValueException(message + "."))


async def _http_error_handler(request: Request, error: Exception) -> Response:
    status = error.status_code if isinstance(error, StarletteHTTPException) else 500
    if status in (404, 405):
        return error_response(
            UnknownOperationException(f"No backvault operation matches {request.method} {request.url.path}.")
        )
    return error_response(InvalidParameterValueException(str(getattr(error, "detail", "bad request"))))


# --- request size -------------------------------------------------------------------------------------


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by declared length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Content-Length up front and count streamed bytes against the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(self._too_large())(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(
            f"The request body is larger than {self.max_bytes} bytes, the most this server accepts."
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
