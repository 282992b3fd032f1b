"""Values on the wire of AWS's rest-json protocol: JSON bodies, query strings, headers, timestamps.

``protocol`` uses these to turn a request's members into Python values by the botocore shape of
each member (checking types and required members), and Python values back into JSON and headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, ClassVar

from backvault.domain.errors import (
    BackupServiceError,
    InvalidParameterValueException,
    MissingParameterValueException,
)


class SerializationException(BackupServiceError):
    """The request body is not the JSON the operation expects."""

    code: ClassVar[str] = "SerializationException"
    http_status: ClassVar[int] = 400
    fault: ClassVar[str] = "Sender"


def load_json_body(body: bytes) -> dict[str, Any]:
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


def query_value(member: Any, wire: str, query: Mapping[str, list[str]], claimed: set[str], where: str) -> Any:
    if member.type_name == "map":
        # A map in the query string takes every parameter no other member claims.
        found = {key: values[0] for key, values in query.items() if key not in claimed}
        return found or None
    values = query.get(wire)
    if not values:
        return None
    if member.type_name == "list":
        return [from_text(member.member, value, f"{where}[{index}]") for index, value in enumerate(values)]
    return from_text(member, values[0], where)


def from_text(shape: Any, text: str, where: str) -> Any:
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


def from_json(shape: Any, value: Any, where: str) -> Any:
    """Check a JSON body value against the shape and convert timestamps and blobs."""
    kind = shape.type_name
    if kind == "structure":
        if getattr(shape, "is_document_type", False):
            return value
        if not isinstance(value, dict):
            raise SerializationException(f"{where} must be a JSON object, got {json_type(value)}.")
        converted: dict[str, Any] = {}
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name)
            if wire in value and value[wire] is not None:
                converted[name] = from_json(member, value[wire], f"{where}.{name}")
        # Members the model does not know are dropped, as AWS ignores them.
        return converted
    if kind == "list":
        if not isinstance(value, list):
            raise SerializationException(f"{where} must be a JSON array, got {json_type(value)}.")
        return [from_json(shape.member, item, f"{where}[{index}]") for index, item in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise SerializationException(f"{where} must be a JSON object, got {json_type(value)}.")
        return {key: from_json(shape.value, item, f"{where}.{key}") for key, item in value.items()}
    if kind == "string":
        if not isinstance(value, str):
            raise SerializationException(f"{where} must be a string, got {json_type(value)}.")
        return value
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SerializationException(f"{where} must be an integer, got {json_type(value)}.")
        return value
    if kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SerializationException(f"{where} must be a number, got {json_type(value)}.")
        return float(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise SerializationException(f"{where} must be true or false, got {json_type(value)}.")
        return value
    if kind == "timestamp":
        return parse_timestamp(value, where)
    if kind == "blob":
        if not isinstance(value, str):
            raise SerializationException(f"{where} must be base64 text, got {json_type(value)}.")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise SerializationException(f"{where} is not valid base64.") from None
    return value


def json_type(value: Any) -> str:
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


def check_required(shape: Any, value: Mapping[str, Any], where: str) -> None:
    """Raise MissingParameterValueException naming the first missing required member (nested too)."""
    for name in shape.required_members:
        if value.get(name) is None:
            raise MissingParameterValueException(
                f"Missing required parameter {where}{name}; add it to the request."
            )
    for name, member in shape.members.items():
        item = value.get(name)
        if item is not None:
            check_nested(member, item, f"{where}{name}")


def check_nested(shape: Any, value: Any, where: str) -> None:
    if shape.type_name == "structure" and isinstance(value, Mapping):
        if not getattr(shape, "is_document_type", False):
            check_required(shape, value, f"{where}.")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            check_nested(shape.member, item, f"{where}[{index}]")
    elif shape.type_name == "map" and isinstance(value, Mapping):
        for key, item in value.items():
            check_nested(shape.value, item, f"{where}.{key}")


def to_json(shape: Any, value: Any) -> Any:
    """Serialize a result value as the shape says: wire names, epoch timestamps, base64 blobs, no nulls."""
    kind = shape.type_name
    if kind == "structure" and not getattr(shape, "is_document_type", False) and isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            item = value.get(name)
            if item is not None:
                out[member.serialization.get("name", name)] = to_json(member, item)
        return out
    if kind == "list" and isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return [to_json(shape.member, item) for item in value]
    if kind == "map" and isinstance(value, Mapping):
        return {str(key): to_json(shape.value, item) for key, item in value.items() if item is not None}
    if kind == "timestamp" and isinstance(value, datetime):
        return epoch(value)
    if kind == "blob" and isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return json_default(value) if isinstance(value, datetime) else value


def epoch(moment: datetime) -> float:
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return round(aware.timestamp(), 6)


def header_text(shape: Any, value: Any) -> str:
    if shape.type_name == "timestamp" and isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return format_datetime(aware, usegmt=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return epoch(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot serialize {type(value).__name__}")
