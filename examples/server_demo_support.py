"""Helpers of examples/server_demo.py: the sample data, the checks of restored copies, processes and files.

Nothing here talks to backvault; the demo itself (server_demo.py) shows how backvault is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import sqlite3
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class DemoError(Exception):
    """A step of the demo failed; the message says which one and why."""


class Paths:
    """Where the demo keeps everything, below one work directory (.demo by default)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.sample = work / "sample"
        self.files_root = self.sample / "files"  # root of the Filesystem endpoint
        self.documents = self.files_root / "documents"  # its one resource
        self.databases_root = self.sample / "databases"  # root of the SQLite endpoint
        self.database = self.databases_root / "shop.db"  # its one resource
        self.server_data = work / "server"
        self.server_log = work / "server.log"
        self.pidfile = work / "server.pid"
        self.credentials = work / "credentials.json"
        self.credentials_env = work / "credentials.env"
        self.config = work / "demo.yaml"
        self.client_config = work / "client-config"  # keeps the operator's own CLI profiles out of it
        self.restores = work / "restores"


def shown(path: Path) -> str:
    """A path as the reader would type it: relative to the current directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def human_size(count: float) -> str:
    """Bytes as B, KiB or MiB."""
    if count < 1024:
        return f"{count:.0f} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600 from the start, also when it existed)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(text)


# --- sample data ---------------------------------------------------------------------------------


def next_run_number(paths: Paths) -> int:
    """One more than the highest restores/run-N so far."""
    numbers = [
        int(entry.name.removeprefix("run-"))
        for entry in paths.restores.glob("run-*")
        if entry.name.removeprefix("run-").isdigit()
    ]
    return max(numbers, default=0) + 1


def _write_if_missing(path: Path, content: bytes) -> None:
    # Written once: unchanged files keep their bytes and times from run to run.
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def prepare_sample(paths: Paths, run: int) -> None:
    """Create the sample tree and database on the first run; change a little of both on every run."""
    first = not paths.documents.exists()
    documents = paths.documents
    _write_if_missing(documents / "README.txt", b"Sample files of the backvault demo.\n" * 40)
    _write_if_missing(documents / ".backvault-tags", b"# tags of this resource\nowner = demo-team\n")
    for quarter in (1, 2, 3):
        rows = "".join(f"2024-Q{quarter},item-{item},{item * 7 % 100}\n" for item in range(500))
        _write_if_missing(
            documents / "reports" / "2024" / f"q{quarter}.csv", b"quarter,item,count\n" + rows.encode()
        )
    # A MiB that does not compress, the same bytes on every machine: later runs store it no more.
    _write_if_missing(documents / "images" / "noise.bin", random.Random(20240501).randbytes(1 << 20))
    _write_if_missing(documents / "notes" / "drafts" / "empty.txt", b"")
    # What changes on every run: a line appended to one file, and one new file.
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    with open(documents / "changes.log", "a", encoding="utf-8") as log:
        log.write(f"run {run} at {stamp}\n")
    (documents / "runs").mkdir(exist_ok=True)
    (documents / "runs" / f"run-{run}.txt").write_text(f"written by demo run {run} at {stamp}\n")

    paths.databases_root.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(paths.database)) as database, database:
        database.executescript(
            """
            CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
            CREATE TABLE IF NOT EXISTS orders (
                id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                total_cents INTEGER NOT NULL, placed_at TEXT NOT NULL);
            -- The SQLite connector reads a database's own tags from this table.
            CREATE TABLE IF NOT EXISTS backvault_tags (key TEXT PRIMARY KEY, value TEXT);
            INSERT OR IGNORE INTO backvault_tags VALUES ('owner', 'demo-team');
            """
        )
        if not database.execute("SELECT count(*) FROM customers").fetchone()[0]:
            database.executemany(
                "INSERT INTO customers (name, email) VALUES (?, ?)",
                [("Ada", "ada@example.org"), ("Grace", "grace@example.org"), ("Linus", "linus@example.org")],
            )
            database.executemany(
                "INSERT INTO orders (customer_id, total_cents, placed_at) VALUES (?, ?, ?)",
                [(number % 3 + 1, 100 + number * 37 % 9000, "2024-05-01") for number in range(200)],
            )
        database.execute(
            "INSERT INTO orders (customer_id, total_cents, placed_at) VALUES (1, ?, ?)", (run * 100, stamp)
        )
        orders = database.execute("SELECT count(*) FROM orders").fetchone()[0]
    # The SQLite connector restores below its endpoint's root. This link puts those copies in
    # restores/ with the directory ones; discovery does not follow links, so they are not resources.
    link = paths.databases_root / "restores"
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(paths.restores, paths.databases_root), target_is_directory=True)

    if first:
        print(f"created {shown(documents)} (text, CSV, 1 MiB of binary, nested directories)")
        print(f"created {shown(paths.database)} (tables customers and orders, {orders} orders)")
    else:
        print(f"changed {shown(documents)}: appended to changes.log, added runs/run-{run}.txt")
        print(f"changed {shown(paths.database)}: one more order ({orders} orders)")


def source_bytes(paths: Paths) -> int:
    """Bytes of sample data the demo backs up."""
    files = (Path(directory, name) for directory, _, names in os.walk(paths.documents) for name in names)
    return sum(path.stat().st_size for path in files) + paths.database.stat().st_size


def storage_bytes(paths: Paths, vault: str) -> int:
    """Bytes a vault occupies in the server's local storage location (DATA_DIR/vaults)."""
    total = 0
    for directory, _, names in os.walk(paths.server_data / "vaults" / vault):
        for name in names:
            with contextlib.suppress(OSError):  # a temporary file may vanish while we count
                total += Path(directory, name).stat().st_size
    return total


# --- checks of restored copies -------------------------------------------------------------------


def tree_digests(root: Path) -> dict[str, str]:
    """Every entry below root: relative path -> SHA-256 of a file's bytes, or "dir" for a directory."""
    entries: dict[str, str] = {}
    for directory, subdirectories, names in os.walk(root):
        base = Path(directory)
        for name in subdirectories:
            entries[str((base / name).relative_to(root))] = "dir"
        for name in names:
            digest = hashlib.sha256((base / name).read_bytes()).hexdigest()
            entries[str((base / name).relative_to(root))] = digest
    return entries


def compare_trees(source: Path, restored: Path) -> list[str]:
    """What differs between two trees (names, kinds, bytes); empty when they are identical."""
    if not restored.is_dir():
        return [f"{restored} is not a directory"]
    expected, found = tree_digests(source), tree_digests(restored)
    problems = [f"missing {name}" for name in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected {name}" for name in sorted(found.keys() - expected.keys())]
    differ = [name for name in sorted(expected) if name in found and expected[name] != found[name]]
    return problems + [f"different bytes in {name}" for name in differ]


def database_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of a SQLite database with all its rows in rowid order (after an integrity check)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as database:
        check = database.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise DemoError(f"{path} fails SQLite's integrity check: {check}")
        query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        tables = [row[0] for row in database.execute(query)]
        return {
            table: database.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall() for table in tables
        }


def compare_databases(source: Path, restored: Path) -> list[str]:
    """What differs between two SQLite databases (tables, rows); empty when they hold the same data."""
    if not restored.is_file():
        return [f"{restored} does not exist"]
    expected, found = database_rows(source), database_rows(restored)
    if expected.keys() != found.keys():
        return [f"tables {sorted(found)} instead of {sorted(expected)}"]
    return [f"table {table}: rows differ" for table in expected if expected[table] != found[table]]


# --- processes and ports -------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rpartition(")")[2].split()[0] != "Z"


def recorded_server(paths: Paths) -> int | None:
    """The pid in the pidfile if that process still runs and is a server of this data directory."""
    try:
        pid = int(paths.pidfile.read_text().split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    # The pid may belong to an unrelated process by now: only a server of this data directory counts.
    if b"server" not in command or str(paths.server_data).encode() not in command:
        return None
    return pid if process_alive(pid) else None


def port_in_use(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def api_answers(port: int) -> bool:
    """True once an HTTP server answers on the port (refusing an unsigned request is an answer too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log file, indented for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n  ".join(text.splitlines()[-lines:]) or "(empty log)"
