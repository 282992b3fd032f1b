"""AWS Backup's rest-json wire protocol, driven by botocore's own service model.

Paths, methods, member locations, names, types and status codes all come from
``botocore.session.get_session().get_service_model("backup")``, so what this module accepts and
answers is exactly what boto3, the AWS CLI and other SDKs send and expect:

- ``RestJsonProtocol.match`` finds the operation for a method and a *raw* (still percent-encoded)
  path: ARN labels such as ``{recoveryPointArn}`` arrive with their ``/`` and ``:`` encoded, so
  splitting must happen before decoding.
- ``parse_request`` builds the operation's input from URI labels, the query string, headers and the
  JSON body, converting types (timestamps as epoch seconds or ISO 8601) and checking required members.
- ``serialize_response`` and ``serialize_error`` produce the status, headers and body.

Input members are returned under their model names (``ByCreatedBefore``), which the operation
adapters turn into the services' snake_case keyword arguments.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote

import botocore.session

from backvault.api.wire_values import (
    check_required,
    from_json,
    from_text,
    header_text,
    json_default,
    load_json_body,
    query_value,
    to_json,
)
from backvault.domain.errors import (
    BackupServiceError,
    InternalFailure,
)

SERVICE_NAME = "backup"
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
# Unexpected errors may quote a database or S3 URL; its password must not reach the log.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@")


# --- protocol-level errors AWS answers with (not service errors, so not in domain/errors.py) ---------


class UnknownOperationException(BackupServiceError):
    """No operation of the service matches the request's method and path."""

    code: ClassVar[str] = "UnknownOperationException"
    http_status: ClassVar[int] = 404
    fault: ClassVar[str] = "Sender"


class UnsupportedOperationException(BackupServiceError):
    """A valid AWS Backup operation that this server does not provide (yet)."""

    code: ClassVar[str] = "UnsupportedOperationException"
    http_status: ClassVar[int] = 400
    fault: ClassVar[str] = "Sender"


# --- routes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Label:
    name: str
    greedy: bool


@dataclass(frozen=True)
class Route:
    """One operation's HTTP binding: method, path segments (literals or labels) and literal query keys."""

    operation_name: str
    method: str
    segments: tuple[str | _Label, ...]
    required_query: tuple[tuple[str, str], ...]

    @property
    def specificity(self) -> tuple[int, int]:
        """Sort key: routes with more literal segments and query conditions are tried first."""
        literals = sum(1 for segment in self.segments if isinstance(segment, str))
        return (literals, len(self.required_query))

    def match(self, path_segments: Sequence[str], query: Mapping[str, list[str]]) -> dict[str, str] | None:
        """Return the decoded label values if the raw path segments and query fit this route."""
        for key, value in self.required_query:
            if key not in query or (value and value not in query[key]):
                return None
        labels: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            if isinstance(segment, _Label) and segment.greedy:
                rest = path_segments[index:]
                if not rest or not any(rest):
                    return None
                labels[segment.name] = unquote("/".join(rest))
                return labels
            if index >= len(path_segments):
                return None
            given = path_segments[index]
            if isinstance(segment, str):
                if given != segment:
                    return None
            else:
                if given == "":
                    return None
                labels[segment.name] = unquote(given)
        return labels if len(path_segments) == len(self.segments) else None


def _parse_request_uri(operation_name: str, method: str, request_uri: str) -> Route:
    path, _, query = request_uri.partition("?")
    segments: list[str | _Label] = []
    for part in path.split("/")[1:]:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            segments.append(_Label(name.rstrip("+"), name.endswith("+")))
        elif "{" in part:
            raise ValueError(f"{operation_name}: unsupported URI template segment {part!r}")
        else:
            segments.append(part)
    required = tuple(parse_qsl(query, keep_blank_values=True)) if query else ()
    return Route(operation_name, method.upper(), tuple(segments), required)


def split_raw_path(raw_path: str) -> list[str]:
    """Split a raw (percent-encoded) path into segments, without the leading empty one."""
    return raw_path.split("/")[1:] if raw_path.startswith("/") else raw_path.split("/")


def query_multimap(query_string: str) -> dict[str, list[str]]:
    """Parse a query string into name -> all values, in order."""
    values: dict[str, list[str]] = {}
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        values.setdefault(key, []).append(value)
    return values


# --- the protocol ----------------------------------------------------------------------------------


class RestJsonProtocol:
    """Routing, request parsing and response serialization for one botocore service model."""

    def __init__(self, service_model: Any) -> None:
        self.service_model = service_model
        routes = []
        for name in service_model.operation_names:
            http = service_model.operation_model(name).http
            routes.append(_parse_request_uri(name, http["method"], http["requestUri"]))
        self.routes: tuple[Route, ...] = tuple(sorted(routes, key=lambda r: r.specificity, reverse=True))

    def operation_model(self, operation_name: str) -> Any:
        """Return botocore's OperationModel of an operation."""
        return self.service_model.operation_model(operation_name)

    def match(self, method: str, raw_path: str, query_string: str) -> tuple[str, dict[str, str]]:
        """Return (operation name, label values) for a request, or raise UnknownOperationException."""
        segments = split_raw_path(raw_path)
        query = query_multimap(query_string)
        found = self._find(method.upper(), segments, query)
        if found is None and any(segments):
            # Hand-written clients often add or drop the final slash AWS's URIs are picky about.
            other = segments[:-1] if segments[-1] == "" else [*segments, ""]
            found = self._find(method.upper(), other, query)
        if found is None:
            raise UnknownOperationException(
                f"No AWS Backup operation matches {method.upper()} {unquote(raw_path)}; see the AWS Backup "
                "API reference for the paths and methods of its operations."
            )
        return found

    def _find(
        self, method: str, segments: Sequence[str], query: Mapping[str, list[str]]
    ) -> tuple[str, dict[str, str]] | None:
        for route in self.routes:
            if route.method != method:
                continue
            labels = route.match(segments, query)
            if labels is not None:
                return route.operation_name, labels
        return None

    # --- requests ----------------------------------------------------------------------------------

    def parse_request(
        self,
        operation_name: str,
        labels: Mapping[str, str],
        query_string: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> dict[str, Any]:
        """Return the operation's input as {member name: converted value}, checked against the model."""
        shape = self.operation_model(operation_name).input_shape
        if shape is None:
            return {}
        query = query_multimap(query_string)
        lowered_headers = {key.lower(): value for key, value in headers.items()}
        document = load_json_body(body)
        claimed_query = {
            member.serialization.get("name", name)
            for name, member in shape.members.items()
            if member.serialization.get("location") == "querystring" and member.type_name != "map"
        }
        result: dict[str, Any] = {}
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "uri":
                if wire in labels:
                    result[name] = from_text(member, labels[wire], name)
            elif location == "querystring":
                value = query_value(member, wire, query, claimed_query, name)
                if value is not None:
                    result[name] = value
            elif location == "header":
                if wire.lower() in lowered_headers:
                    result[name] = from_text(member, lowered_headers[wire.lower()], name)
            elif location == "headers":
                prefix = wire.lower()
                found = {k[len(prefix) :]: v for k, v in lowered_headers.items() if k.startswith(prefix)}
                if found:
                    result[name] = found
            elif location is None and document.get(wire) is not None:
                result[name] = from_json(member, document[wire], name)
        check_required(shape, result, "")
        return result

    # --- responses ---------------------------------------------------------------------------------

    def serialize_response(
        self, operation_name: str, result: Mapping[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        """Return (status, headers, body) for an operation's successful result."""
        operation = self.operation_model(operation_name)
        status = int(operation.http.get("responseCode", 200))
        headers: dict[str, str] = {}
        body: dict[str, Any] = {}
        shape = operation.output_shape
        if shape is not None:
            for name, member in shape.members.items():
                value = result.get(name)
                if value is None:
                    continue
                location = member.serialization.get("location")
                wire = member.serialization.get("name", name)
                if location == "statusCode":
                    status = int(value)
                elif location == "header":
                    headers[wire] = header_text(member, value)
                elif location == "headers":
                    for key, item in value.items():
                        headers[f"{wire}{key}"] = str(item)
                else:
                    body[wire] = to_json(member, value)
        if status == 204:
            return status, headers, b""
        headers["Content-Type"] = JSON_CONTENT_TYPE
        return status, headers, json.dumps(body, separators=(",", ":")).encode("utf-8")


def serialize_error(error: BackupServiceError) -> tuple[int, dict[str, str], bytes]:
    """Return (status, headers, body) of an AWS rest-json error answer."""
    headers = {"x-amzn-ErrorType": error.code, "Content-Type": JSON_CONTENT_TYPE}
    body = json.dumps(error.to_response_body(), default=json_default, separators=(",", ":"))
    return error.http_status, headers, body.encode("utf-8")


def internal_failure(request_id: str) -> InternalFailure:
    """Return the error answered for an unexpected exception: a request id and nothing else."""
    return InternalFailure(
        f"The server could not complete the request because of an internal error (request id {request_id}); "
        "the server log has the details."
    )


def redacted_traceback(error: BaseException) -> str:
    """Return the error's traceback with passwords in URLs (``scheme://user:password@``) masked."""
    text = "".join(traceback.format_exception(error))
    return _URL_PASSWORD.sub(r"\1***@", text)


@lru_cache(maxsize=1)
def backup_protocol() -> RestJsonProtocol:
    """Return the protocol for AWS Backup (built once: the model takes a moment to load)."""
    model = botocore.session.get_session().get_service_model(SERVICE_NAME)
    return RestJsonProtocol(model)
