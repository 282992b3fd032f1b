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

import base64
import binascii
import json
import math
import re
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote

import botocore.session

from backvault.domain.errors import (
    BackupServiceError,
    InternalFailure,
    InvalidParameterValueException,
    MissingParameterValueException,
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


class SerializationException(BackupServiceError):
    """The request body is not the JSON the operation expects."""

    code: ClassVar[str] = "SerializationException"
    http_status: ClassVar[int] = 400
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
        document = _load_json_body(body)
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
                    result[name] = _from_text(member, labels[wire], name)
            elif location == "querystring":
                value = _query_value(member, wire, query, claimed_query, name)
                if value is not None:
                    result[name] = value
            elif location == "header":
                if wire.lower() in lowered_headers:
                    result[name] = _from_text(member, lowered_headers[wire.lower()], name)
            elif location == "headers":
                prefix = wire.lower()
                found = {k[len(prefix) :]: v for k, v in lowered_headers.items() if k.startswith(prefix)}
                if found:
                    result[name] = found
            elif location is None and document.get(wire) is not None:
                result[name] = _from_json(member, document[wire], name)
        _check_required(shape, result, "")
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
                    headers[wire] = _header_text(member, value)
                elif location == "headers":
                    for key, item in value.items():
                        headers[f"{wire}{key}"] = str(item)
                else:
                    body[wire] = _to_json(member, value)
        if status == 204:
            return status, headers, b""
        headers["Content-Type"] = JSON_CONTENT_TYPE
        return status, headers, json.dumps(body, separators=(",", ":")).encode("utf-8")


def serialize_error(error: BackupServiceError) -> tuple[int, dict[str, str], bytes]:
    """Return (status, headers, body) of an AWS rest-json error answer."""
    headers = {"x-amzn-ErrorType": error.code, "Content-Type": JSON_CONTENT_TYPE}
    body = json.dumps(error.to_response_body(), default=_json_default, separators=(",", ":"))
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


# --- conversions -------------------------------------------------------------------------------------


def _load_json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise SerializationException(f"The request body is not valid JSON: {error}.") from None
    if not isinstance(document, dict):
        raise SerializationException(
            f"The request body must be a JSON object, got {type(document).__name__}."
        )
    return document


def _query_value(
    member: Any, wire: str, query: Mapping[str, list[str]], claimed: set[str], where: str
) -> Any:
    if member.type_name == "map":
        # A map in the query string takes every parameter no other member claims.
        found = {key: values[0] for key, values in query.items() if key not in claimed}
        return found or None
    values = query.get(wire)
    if not values:
        return None
    if member.type_name == "list":
        return [_from_text(member.member, value, f"{where}[{index}]") for index, value in enumerate(values)]
    return _from_text(member, values[0], where)


def _from_text(shape: Any, text: str, where: str) -> Any:
    """Convert a URI, query or header value to the shape's type."""
    kind = shape.type_name
    if kind in ("integer", "long"):
        try:
            return int(text)
        except ValueError:
            raise InvalidParameterValueException(f"{where} must be an integer, got {text!r}.") from None
    if kind in ("double", "float"):
        try:
            return float(text)
        except ValueError:
            raise InvalidParameterValueException(f"{where} must be a number, got {text!r}.") from None
    if kind == "boolean":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise InvalidParameterValueException(f"{where} must be true or false, got {text!r}.")
    if kind == "timestamp":
        return parse_timestamp(text, where)
    return text


def parse_timestamp(value: Any, where: str) -> datetime:
    """Parse a timestamp given as epoch seconds (number or digits) or ISO 8601, as an aware UTC datetime."""
    if isinstance(value, bool):
        raise InvalidParameterValueException(f"{where} must be a timestamp, got a boolean.")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise InvalidParameterValueException(
                    f"{where} must be a timestamp (epoch seconds or ISO 8601), got {value!r}."
                ) from None
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    else:
        raise InvalidParameterValueException(
            f"{where} must be a timestamp (epoch seconds or ISO 8601), got {type(value).__name__}."
        )
    if not math.isfinite(seconds):
        raise InvalidParameterValueException(f"{where} must be a finite timestamp, got {value!r}.")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidParameterValueException(f"{where} is out of range: {value!r}.") from None


def _from_json(shape: Any, value: Any, where: str) -> Any:
    """Check a JSON body value against the shape and convert timestamps and blobs."""
    kind = shape.type_name
    if kind == "structure":
        if getattr(shape, "is_document_type", False):
            return value
        if not isinstance(value, dict):
            raise SerializationException(f"{where} must be a JSON object, got {_json_type(value)}.")
        converted: dict[str, Any] = {}
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name)
            if wire in value and value[wire] is not None:
                converted[name] = _from_json(member, value[wire], f"{where}.{name}")
        # Members the model does not know are dropped, as AWS ignores them.
        return converted
    if kind == "list":
        if not isinstance(value, list):
            raise SerializationException(f"{where} must be a JSON array, got {_json_type(value)}.")
        return [_from_json(shape.member, item, f"{where}[{index}]") for index, item in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise SerializationException(f"{where} must be a JSON object, got {_json_type(value)}.")
        return {key: _from_json(shape.value, item, f"{where}.{key}") for key, item in value.items()}
    if kind == "string":
        if not isinstance(value, str):
            raise SerializationException(f"{where} must be a string, got {_json_type(value)}.")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SerializationException(f"{where} must be an integer, got {_json_type(value)}.")
        return value
    if kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SerializationException(f"{where} must be a number, got {_json_type(value)}.")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise SerializationException(f"{where} must be true or false, got {_json_type(value)}.")
        return value
    if kind == "timestamp":
        return parse_timestamp(value, where)
    if kind == "blob":
        if not isinstance(value, str):
            raise SerializationException(f"{where} must be base64 text, got {_json_type(value)}.")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise SerializationException(f"{where} is not valid base64.") from None
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_required(shape: Any, value: Mapping[str, Any], where: str) -> None:
    """Raise MissingParameterValueException naming the first missing required member (nested too)."""
    for name in shape.required_members:
        if value.get(name) is None:
            raise MissingParameterValueException(
                f"Missing required parameter {where}{name}; add it to the request."
            )
    for name, member in shape.members.items():
        item = value.get(name)
        if item is not None:
            _check_nested(member, item, f"{where}{name}")


def _check_nested(shape: Any, value: Any, where: str) -> None:
    if shape.type_name == "structure" and isinstance(value, Mapping):
        if not getattr(shape, "is_document_type", False):
            _check_required(shape, value, f"{where}.")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            _check_nested(shape.member, item, f"{where}[{index}]")
    elif shape.type_name == "map" and isinstance(value, Mapping):
        for key, item in value.items():
            _check_nested(shape.value, item, f"{where}.{key}")


def _to_json(shape: Any, value: Any) -> Any:
    """Serialize a result value as the shape says: wire names, epoch timestamps, base64 blobs, no nulls."""
    kind = shape.type_name
    if kind == "structure" and not getattr(shape, "is_document_type", False) and isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            item = value.get(name)
            if item is not None:
                out[member.serialization.get("name", name)] = _to_json(member, item)
        return out
    if kind == "list" and isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return [_to_json(shape.member, item) for item in value]
    if kind == "map" and isinstance(value, Mapping):
        return {str(key): _to_json(shape.value, item) for key, item in value.items() if item is not None}
    if kind == "timestamp" and isinstance(value, datetime):
        return _epoch(value)
    if kind == "blob" and isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return _json_default(value) if isinstance(value, datetime) else value


def _epoch(moment: datetime) -> float:
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return round(aware.timestamp(), 6)


def _header_text(shape: Any, value: Any) -> str:
    if shape.type_name == "timestamp" and isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return format_datetime(aware, usegmt=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _epoch(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot serialize {type(value).__name__}")
