"""What the database connectors share: the backup manifest, its comparison, and tags read from comments.

Every database snapshot holds ``manifest.json`` next to the dump::

    {"format": 1, "engine": "postgresql", "database": "shop", "taken_at": "2026-...",
     "tables": {"public.orders": {"rows": 1200, "checksum": "..."}, ...}, ...}

The row count and checksum of every table are taken in the same transaction (or the same copy) as the
dump, so a restore of that dump must reproduce them exactly; validation recomputes them on the
restored database and compares. Checksums are order-independent sums of per-row hashes, so neither
the dump's row order nor the restored table's physical order matters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import ConnectorError, ValidationOutcome
from backvault.sources.streams import find_file, open_content

MANIFEST_PATH = "manifest.json"
MANIFEST_FORMAT = 1
# Shown in a failed validation's message; the details keep the full list.
_PROBLEMS_SHOWN = 5


def manifest_bytes(
    engine: str,
    database: str,
    tables: Mapping[str, Mapping[str, Any]],
    taken_at: datetime,
    **extra: Any,
) -> bytes:
    """Serialise a manifest (keys sorted, so equal databases give equal bytes and dedup)."""
    document = {
        "format": MANIFEST_FORMAT,
        "engine": engine,
        "database": database,
        "taken_at": taken_at.isoformat(),
        "tables": {name: dict(values) for name, values in tables.items()},
        **extra,
    }
    return json.dumps(document, sort_keys=True, indent=1).encode()


def load_manifest(repository: Repository, snapshot: Snapshot, engine: str) -> dict[str, Any]:
    """Read the manifest a backup saved; ConnectorError when the snapshot is not such a backup."""
    try:
        node = find_file(repository, snapshot, MANIFEST_PATH)
    except KeyError:
        raise ConnectorError(
            f"recovery point {snapshot.short_id} holds no {MANIFEST_PATH}; it is not a {engine} backup"
        ) from None
    with open_content(repository, node) as stream:
        document: dict[str, Any] = json.loads(stream.read())
    if document.get("engine") != engine or document.get("format") != MANIFEST_FORMAT:
        raise ConnectorError(
            f"recovery point {snapshot.short_id} is a {document.get('engine')!r} backup, not {engine}"
        )
    return document


def compare_tables(
    expected: Mapping[str, Mapping[str, Any]], actual: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Problems found comparing per-table row counts and checksums (empty when they all match)."""
    problems: list[str] = []
    for name in sorted(set(expected) - set(actual)):
        problems.append(f"table {name} is missing")
    for name in sorted(set(actual) - set(expected)):
        problems.append(f"table {name} was not in the backup")
    for name in sorted(set(expected) & set(actual)):
        want, have = expected[name], actual[name]
        if want.get("rows") != have.get("rows"):
            problems.append(f"table {name} has {have.get('rows')} rows, the backup had {want.get('rows')}")
        elif want.get("checksum") != have.get("checksum"):
            problems.append(f"table {name} has the same row count but different content")
    return problems


def validation_outcome(
    database: str, expected: Mapping[str, Mapping[str, Any]], problems: list[str], **details: Any
) -> ValidationOutcome:
    """A ValidationOutcome summarising ``problems`` (valid when there are none)."""
    evidence = {"tables": len(expected), "rows": sum(int(t.get("rows", 0)) for t in expected.values())}
    evidence.update(details)
    if problems:
        shown = "; ".join(problems[:_PROBLEMS_SHOWN])
        more = f" (and {len(problems) - _PROBLEMS_SHOWN} more)" if len(problems) > _PROBLEMS_SHOWN else ""
        return ValidationOutcome(
            False, f"{database} does not match the backup: {shown}{more}", {**evidence, "problems": problems}
        )
    return ValidationOutcome(
        True,
        f"{database}: {evidence['tables']} tables and {evidence['rows']} rows match the backup",
        evidence,
    )


def tags_from_comment(comment: str | None) -> dict[str, str]:
    """Tags written in a database comment as JSON: ``{"backvault": {"tags": {...}}}`` or a plain object.

    A comment that is not JSON (an ordinary description) carries no tags; values become strings.
    """
    if not comment or not comment.strip().startswith("{"):
        return {}
    try:
        document = json.loads(comment)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    nested = document.get("backvault")
    if isinstance(nested, dict) and isinstance(nested.get("tags"), dict):
        document = nested["tags"]
    elif "backvault" in document:
        return {}
    return {str(key): _tag_value(value) for key, value in document.items()}


def merge_tags(defaults: Mapping[str, str], native: Mapping[str, str]) -> dict[str, str]:
    """Native tags over the endpoint's defaults."""
    return {**defaults, **native}


def _tag_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)
