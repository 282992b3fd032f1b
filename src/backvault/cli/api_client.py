"""A small client of the backvault API: boto3's ``backup`` client plus SigV4-signed ``/backvault/...`` calls.

Every failure comes out as one ``ApiError`` carrying the AWS error code, the server's message and the
HTTP status, so the commands can print ``AccessDeniedException: ...`` and exit 1. Timestamps in the
extension answers (epoch seconds, as in the AWS API) are turned into datetimes like boto3 does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from botocore.httpsession import URLLib3Session

from backvault.cli.client_config import Profile

SERVICE_NAME = "backup"
USER_AGENT = "backvault-cli"
# Members of extension answers that hold epoch-second timestamps.
_TIME_SUFFIXES = ("Date", "Time")


class ApiError(Exception):
    """A refused or failed API call: the AWS error code, the server's message and the HTTP status."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ApiClient:
    """Calls the AWS Backup operations and backvault's extension routes of one server."""

    def __init__(self, profile: Profile, *, timeout: float = 60.0) -> None:
        self.profile = profile
        self.timeout = timeout
        self._backup: Any = None
        self._http: URLLib3Session | None = None

    def __repr__(self) -> str:
        return f"ApiClient({self.profile.endpoint_url!r}, key={self.profile.access_key_id!r})"

    @property
    def backup(self) -> Any:
        """The boto3 ``backup`` client for this server (made on first use)."""
        if self._backup is None:
            session = boto3.session.Session(
                aws_access_key_id=self.profile.access_key_id,
                aws_secret_access_key=self.profile.secret_access_key,
                region_name=self.profile.region,
            )
            self._backup = session.client(
                SERVICE_NAME,
                endpoint_url=self.profile.endpoint_url,
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=self.timeout,
                    user_agent_extra=USER_AGENT,
                ),
            )
        return self._backup

    def call(self, operation: str, **parameters: Any) -> dict[str, Any]:
        """Run one AWS Backup operation (boto3 method name, e.g. ``list_backup_vaults``)."""
        method = getattr(self.backup, operation)
        try:
            answer: dict[str, Any] = method(**parameters)
        except ClientError as error:
            raise _client_error(error) from None
        except ParamValidationError as error:
            raise ApiError("ParamValidationError", str(error).strip()) from None
        except BotoCoreError as error:
            raise self._transport_error(error) from None
        answer.pop("ResponseMetadata", None)
        return answer

    def collect(self, operation: str, result_key: str, **parameters: Any) -> list[dict[str, Any]]:
        """Run a list operation page by page and return every member under ``result_key``."""
        members: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.call(operation, **parameters, **({"NextToken": token} if token else {}))
            members.extend(page.get(result_key) or [])
            token = page.get("NextToken")
            if not token:
                return members

    def extension(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        """Send a SigV4-signed request to a ``/backvault/...`` route and return its JSON answer."""
        url = self.profile.endpoint_url + path
        pairs = [(key, _query_value(value)) for key, value in (query or {}).items() if value is not None]
        if pairs:
            url += "?" + urlencode(pairs, quote_via=quote)
        data = json.dumps(body).encode("utf-8") if body is not None else b""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT} if data else {}
        request = AWSRequest(method=method, url=url, data=data, headers=headers)
        credentials = Credentials(self.profile.access_key_id, self.profile.secret_access_key)
        SigV4Auth(credentials, SERVICE_NAME, self.profile.region).add_auth(request)
        if self._http is None:
            self._http = URLLib3Session(timeout=self.timeout)
        try:
            response = self._http.send(request.prepare())
        except BotoCoreError as error:
            raise self._transport_error(error) from None
        content = response.content or b""
        if response.status_code >= 400:
            raise _extension_error(response.status_code, response.headers, content)
        if not content:
            return {}
        try:
            answer = json.loads(content)
        except ValueError:
            raise ApiError(
                "InvalidResponse", f"{method} {path} answered {response.status_code} without JSON"
            ) from None
        return _with_datetimes(answer) if isinstance(answer, dict) else {"Result": answer}

    def extension_collect(
        self, path: str, result_key: str, query: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """GET an extension list route page by page and return every member under ``result_key``."""
        members: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.extension("GET", path, query={**(query or {}), "nextToken": token})
            members.extend(page.get(result_key) or [])
            token = page.get("NextToken")
            if not token:
                return members

    def _transport_error(self, error: BotoCoreError) -> ApiError:
        return ApiError(
            "ConnectionError",
            f"cannot reach the backvault API at {self.profile.endpoint_url}: {error}; is the server running "
            "(backvault server --listen HOST:PORT) and is the endpoint URL right?",
        )


def path_segment(value: str) -> str:
    """Return ``value`` percent-encoded for use as one path segment."""
    return quote(value, safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _client_error(error: ClientError) -> ApiError:
    details = error.response.get("Error", {})
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(details.get("Code") or "Unknown")
    message = str(details.get("Message") or "the server gave no message")
    return ApiError(code, message, status)


def _extension_error(status: int, headers: Mapping[str, str], content: bytes) -> ApiError:
    code = headers.get("x-amzn-ErrorType", "").split(":")[0]
    message = ""
    try:
        body = json.loads(content) if content else {}
    except ValueError:
        body = {}
    if isinstance(body, dict):
        code = code or str(body.get("__type") or body.get("Code") or "").split("#")[-1]
        message = str(body.get("Message") or body.get("message") or "")
    return ApiError(code or f"HTTP{status}", message or f"the server answered HTTP {status}", status)


def _with_datetimes(document: Any, key: str = "") -> Any:
    """Turn epoch-second members named ...Date/...Time into UTC datetimes, as boto3 does for AWS answers."""
    if isinstance(document, dict):
        return {name: _with_datetimes(value, name) for name, value in document.items()}
    if isinstance(document, list):
        return [_with_datetimes(item, key) for item in document]
    if key.endswith(_TIME_SUFFIXES) and isinstance(document, int | float) and not isinstance(document, bool):
        return datetime.fromtimestamp(document, UTC)
    return document
