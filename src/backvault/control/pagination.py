"""NextToken/MaxResults pagination over catalog queries, keyset-based so pages stay stable under inserts.

A token is opaque to clients: urlsafe base64 of JSON naming the operation and the sort key of the
last item returned. Naming the operation makes a token from one listing fail clearly in another.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from backvault.domain.errors import InvalidParameterValueException, expect_int

T = TypeVar("T")

MIN_RESULTS = 1
MAX_RESULTS = 1000  # AWS Backup's MaxResults range is 1-1000
# Clients that do not paginate still see everything in all but huge catalogs.
DEFAULT_MAX_RESULTS = 1000


def page_size(max_results: int | None) -> int:
    """Return the page size for a MaxResults parameter, checking AWS's range."""
    if max_results is None:
        return DEFAULT_MAX_RESULTS
    value = expect_int(max_results, "MaxResults")
    if not MIN_RESULTS <= value <= MAX_RESULTS:
        raise InvalidParameterValueException(
            f"MaxResults ({value}) must be between {MIN_RESULTS} and {MAX_RESULTS}."
        )
    return value


def encode_token(operation: str, position: Sequence[str | int]) -> str:
    """Return a NextToken resuming ``operation`` after ``position``."""
    document = json.dumps({"op": operation, "after": list(position)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode("utf-8")).decode("ascii")


def decode_token(token: str | None, operation: str, width: int) -> list[str | int] | None:
    """Return the position a NextToken resumes after, or None for the first page."""
    if token is None or token == "":
        return None
    try:
        document = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        document = None
    position = document.get("after") if isinstance(document, dict) else None
    valid = (
        isinstance(document, dict)
        and document.get("op") == operation
        and isinstance(position, list)
        and len(position) == width
        and all(isinstance(item, str | int) and not isinstance(item, bool) for item in position)
    )
    if not valid or not isinstance(position, list):
        raise InvalidParameterValueException(
            f"NextToken is not a token returned by {operation}; start again without NextToken."
        )
    return [item for item in position if isinstance(item, str | int)]


def paginate(
    session: Session,
    statement: Select[T],
    keys: Sequence[InstrumentedAttribute[Any]],
    *,
    operation: str,
    next_token: str | None,
    max_results: int | None,
    descending: bool = False,
) -> tuple[list[T], str | None]:
    """Run ``statement`` ordered by ``keys`` (unique together) and return one page and the next token."""
    size = page_size(max_results)
    after = decode_token(next_token, operation, len(keys))
    if after is not None:
        columns, values = tuple_(*keys), tuple_(*after)
        statement = statement.where(columns < values if descending else columns > values)
    order = [key.desc() if descending else key.asc() for key in keys]
    rows = list(session.scalars(statement.order_by(*order).limit(size + 1)))
    if len(rows) <= size:
        return rows, None
    page = rows[:size]
    return page, encode_token(operation, [getattr(page[-1], key.key) for key in keys])
