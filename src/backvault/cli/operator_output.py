"""Shared plumbing of the operator commands: common options, connecting, errors, tables and JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from backvault.cli.api_client import ApiClient, ApiError
from backvault.cli.client_config import ConfigError, resolve_profile
from backvault.cli.common import fail, human_bytes, out_console

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Client profile from ~/.config/backvault/config.toml (default $BACKVAULT_PROFILE or 'default').",
        show_default=False,
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        help="The backvault API URL (default $BACKVAULT_ENDPOINT_URL or the profile's).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

TERMINAL_BACKUP_STATES = frozenset({"COMPLETED", "FAILED", "ABORTED", "EXPIRED", "PARTIAL"})
TERMINAL_RESTORE_STATES = frozenset({"COMPLETED", "FAILED", "ABORTED"})


def connect(profile: str | None, endpoint_url: str | None) -> ApiClient:
    """Return a client for the resolved profile, or exit with what to configure."""
    try:
        return ApiClient(resolve_profile(profile, endpoint_url))
    except ConfigError as error:
        fail(str(error))


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn API and configuration errors into one line naming the AWS error code, and exit 1."""
    try:
        yield
    except ApiError as error:
        status = f" (HTTP {error.status})" if error.status else ""
        fail(f"{error.code}{status}: {error.message}")
    except ConfigError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def call_api(profile: str | None, endpoint_url: str | None, operation: str, **parameters: Any) -> Any:
    """Make one API call for a command; errors end the command with the AWS error code."""
    client = connect(profile, endpoint_url)
    with api_errors():
        return client.call(operation, **parameters)


def call_extension(
    profile: str | None, endpoint_url: str | None, method: str, path: str, body: Any = None
) -> Any:
    """Make one call to a /backvault/ extension route for a command; errors end the command."""
    client = connect(profile, endpoint_url)
    with api_errors():
        return (
            client.extension(method, path, body=body) if body is not None else client.extension(method, path)
        )


def report(answer: Any, as_json: bool, *, message: str | None = None, title: str | None = None) -> None:
    """Print a command's answer: JSON for scripts, else one line (message) or a field table (title)."""
    if as_json:
        emit_json(answer)
    elif message is not None:
        say(message)
    else:
        print_fields(answer, title=title)


def emit_json(document: Any) -> None:
    """Print a document as JSON on stdout, datetimes in ISO 8601."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def when(value: Any) -> str:
    """Return a timestamp for a table ('-' when absent)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "-" if value is None else str(value)


def size(value: Any) -> str:
    """Return a byte count for a table ('-' when absent)."""
    return human_bytes(value) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def text(value: Any) -> str:
    """Return any member as table text ('-' when absent)."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(text(item) for item in value)
    return str(value)


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    no_wrap: Sequence[str] = (),
    empty: str = "nothing to show",
) -> None:
    """Print rows as a table; ``no_wrap`` columns (ids, ARNs) are never broken across lines."""
    materialised = [[text(cell) for cell in row] for row in rows]
    if not materialised:
        out_console.print(f"{title}: {empty}" if title else empty, highlight=False)
        return
    table = Table(*columns, title=title, title_justify="left")
    for column in table.columns:
        if str(column.header) in no_wrap:
            column.no_wrap = True
            column.overflow = "fold"
    for row in materialised:
        table.add_row(*row)
    show(table)


def print_fields(document: Mapping[str, Any], *, title: str | None = None) -> None:
    """Print one object as a two-column table of its members."""
    table = Table("Field", "Value", title=title, title_justify="left", show_header=False)
    table.columns[0].no_wrap = True
    for key, value in document.items():
        if isinstance(value, list) and value and isinstance(value[0], Mapping):
            rendered = "\n".join(json.dumps(item, default=_json_default, sort_keys=True) for item in value)
        elif isinstance(value, Mapping) and any(isinstance(item, Mapping | list) for item in value.values()):
            rendered = json.dumps(value, default=_json_default, sort_keys=True)
        else:
            rendered = text(value)
        table.add_row(key, rendered)
    show(table)


def show(renderable: Any) -> None:
    """Print a table: as wide as the terminal, or as wide as it needs when piped (nothing cut off)."""
    if out_console.is_terminal:
        out_console.print(renderable)
        return
    natural = out_console.measure(renderable, options=out_console.options.update(width=10_000)).maximum
    wide = Console(file=sys.stdout, width=max(natural, out_console.width), soft_wrap=True, color_system=None)
    wide.print(renderable)


def say(message: str) -> None:
    """Print one plain line for people (not parsed for markup)."""
    out_console.print(message, highlight=False, markup=False)


def parse_pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """Return KEY=VALUE option values as a dict; a value without '=' is refused by name."""
    pairs: dict[str, str] = {}
    for item in values or []:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            fail(f"{option} {item!r} is not KEY=VALUE")
        pairs[key.strip()] = value
    return pairs


def read_json_document(path: Path, what: str) -> Any:
    """Read a JSON document from a file (or standard input for '-'), refusing bad JSON clearly."""
    try:
        content = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as error:
        fail(f"cannot read the {what} file {path}: {error.strerror}")
    try:
        return json.loads(content)
    except ValueError as error:
        fail(f"the {what} file {path} is not valid JSON: {error}")


def unwrap(document: Any, member: str, what: str, path: Path) -> dict[str, Any]:
    """Return ``document[member]`` when the file is a request document, else the document itself."""
    if not isinstance(document, dict):
        fail(f"the {what} file {path} must hold a JSON object")
    inner = document.get(member, document)
    if not isinstance(inner, dict):
        fail(f"the {what} file {path}: {member} must be a JSON object")
    return inner


def default_role_arn(any_arn: str) -> str:
    """Return AWS Backup's default service role in the partition and account of ``any_arn``."""
    parts = any_arn.split(":")
    partition = parts[1] if len(parts) > 4 and parts[1] else "aws"
    account = parts[4] if len(parts) > 4 and parts[4] else "000000000000"
    return f"arn:{partition}:iam::{account}:role/service-role/AWSBackupDefaultServiceRole"


def find_point_vault(client: ApiClient, recovery_point_arn: str) -> str:
    """Return the name of the vault holding a recovery point, searching every vault (or exit)."""
    for vault in client.collect("list_backup_vaults", "BackupVaultList"):
        name = str(vault["BackupVaultName"])
        points = client.collect(
            "list_recovery_points_by_backup_vault", "RecoveryPoints", BackupVaultName=name
        )
        if any(point.get("RecoveryPointArn") == recovery_point_arn for point in points):
            return name
    fail(
        f"no vault holds recovery point {recovery_point_arn}; check the ARN with "
        "'backvault recovery-points list --vault NAME'"
    )
