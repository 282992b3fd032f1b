"""Shared CLI plumbing: passphrases, opening repositories, output and error handling."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from getpass import getpass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from backvault.repo.errors import RepositoryError
from backvault.storage.base import ObjectStore, StorageError

PASSWORD_ENV = "BACKVAULT_PASSWORD"
EXIT_ERROR = 1
EXIT_PARTIAL = 3  # like restic: the snapshot was written but some files could not be read

# soft_wrap: long paths stay on one line, so output can be grepped and copied
err_console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print an error on stderr and exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn expected failures into one clear line and a non-zero exit, without a traceback."""
    try:
        yield
    except (RepositoryError, StorageError, ValueError, OSError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", 130)


def read_password(password_file: Path | None, *, env: str = PASSWORD_ENV, purpose: str = "passphrase") -> str:
    """Passphrase from a file or the environment, or a prompt on a terminal; never from argv."""
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except OSError as error:
            fail(f"cannot read the {purpose} file {password_file}: {error.strerror}")
        return text.rstrip("\r\n")
    value = os.environ.get(env)
    if value:
        return value
    if sys.stdin.isatty():
        return getpass(f"enter {purpose}: ")
    fail(f"no {purpose}: set {env} or pass a file with --password-file")


def open_store(repo: str, endpoint: str | None) -> ObjectStore:
    """Open the object store behind --repo (a path or s3://bucket/prefix)."""
    from backvault.storage.url import open_store as open_location

    if not repo:
        fail("no repository: pass --repo PATH|s3://bucket/prefix or set BACKVAULT_REPOSITORY")
    return open_location(repo, endpoint_url=endpoint)


def print_json(document: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def progress_enabled(quiet: bool) -> bool:
    """Progress bars only on a terminal, never in scripts or with --json/--quiet."""
    return not quiet and sys.stderr.isatty()


def noop(*_: Any) -> None:
    """A progress callback that does nothing."""


ProgressCallback = Callable[..., None]


# The data directory and catalog options shared by server, worker, admin and audit commands, so all
# of them open the same catalog by default.
DEFAULT_DATA_DIR = Path("~/.local/share/backvault")
DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="BACKVAULT_DATA_DIR",
        help="The server's data directory (catalog and master key).",
        file_okay=False,
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Catalog database (postgresql+psycopg://...); default $BACKVAULT_DATABASE_URL, else SQLite.",
        show_default=False,
    ),
]
