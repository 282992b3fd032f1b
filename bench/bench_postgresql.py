"""PostgreSQL benchmark: backvault's connector against pg_dump -Fc alone and pgBackRest, on pgbench data.

Steps on a throwaway database filled by ``pgbench -i -s SCALE`` (scale 50 is about 750 MB):

1. backvault backup (pg_dump -Fc -Z0 streamed into a fresh repository, real KDF), then restore into
   a new database and validate it (row counts and checksums);
2. ``pg_dump -Fc`` alone into a file, and ``pg_restore`` of that file into a new database;
3. pgBackRest full backup and restore into an empty directory, when ``pgbackrest`` is installed
   and this runs as root (it reads the cluster's data directory as the postgres user);
4. 1% of ``pgbench_accounts`` changed as one contiguous range, then a second backvault backup
   (and a pgBackRest incremental one): the bytes each actually stored;
5. 1% changed again, scattered (every 100th row), and a third backvault backup.

Usage:
  .venv/bin/python bench/bench_postgresql.py [--scale 50] [--workdir bench/work/postgresql]
      [--host 127.0.0.1] [--port 5432] [--user postgres] [--no-pgbackrest] [--json out.json]

The password comes from PGPASSWORD (default "postgres"). pgBackRest's files go to a temporary
directory under /tmp, owned by postgres, removed at the end. pgBackRest notes: it backs up the whole
cluster (every database on the server, not only the benchmark's), and it runs with
``archive-check=n`` because turning WAL archiving on would need a restart of a shared server; its
backups are then not restorable to a consistent state without WAL, so its times are those of the
file copy only. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from backvault.domain.arn import ResourceType  # noqa: E402
from backvault.repo.repository import Repository  # noqa: E402
from backvault.sources.base import BackupRequest, EndpointSpec, RestoreRequest, ValidationRequest  # noqa: E402
from backvault.sources.postgresql import PostgresqlConnector  # noqa: E402
from backvault.storage.local import LocalStore  # noqa: E402

PASSWORD = "bench-passphrase"
MB = 1_000_000
T = TypeVar("T")


@dataclass
class Row:
    """One line of the results table."""

    tool: str
    step: str
    seconds: float
    bytes_read: int | None = None
    bytes_stored: int | None = None
    note: str = ""


def timed(action: Callable[[], T]) -> tuple[T, float]:
    """Run ``action`` and return its result and wall time in seconds."""
    start = time.monotonic()
    result = action()
    return result, time.monotonic() - start


def directory_bytes(path: Path) -> int:
    """Allocated bytes of every file below ``path``."""
    return sum(entry.stat().st_blocks * 512 for entry in path.rglob("*") if entry.is_file())


class Server:
    """The PostgreSQL server under test: connection settings and small admin helpers."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.host, self.port, self.user, self.password = host, port, user, password

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """An autocommit connection."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=True,
        )

    def execute(self, statement: Any, database: str = "postgres") -> Any:
        """Run one statement; return the first row (or None)."""
        with self.connect(database) as connection:
            cursor = connection.execute(statement)
            return cursor.fetchone() if cursor.description else None

    def create(self, name: str) -> None:
        """Create an empty database."""
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop(self, name: str) -> None:
        """Drop a database if it exists."""
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def size(self, name: str) -> int:
        """pg_database_size in bytes."""
        return int(self.execute(sql.SQL("SELECT pg_database_size({})").format(sql.Literal(name)))[0])

    def environment(self) -> dict[str, str]:
        """Environment for client tools."""
        return {**os.environ, "PGPASSWORD": self.password, "PGHOST": self.host, "PGPORT": str(self.port)}

    def run(self, argv: list[str], **options: Any) -> None:
        """Run a client tool as the benchmark user; raise on failure."""
        subprocess.run([*argv, "-U", self.user], check=True, env=self.environment(), **options)

    def endpoint(self) -> EndpointSpec:
        """The backvault endpoint for this server."""
        return EndpointSpec(
            "bench",
            ResourceType.POSTGRESQL,
            {"host": self.host, "port": self.port, "user": self.user},
            credentials={"password": self.password},
        )


def bench_backvault(server: Server, database: str, workdir: Path, rows: list[Row]) -> Repository:
    """First backup, restore and validation with backvault."""
    store = LocalStore(workdir / "backvault-repo")
    repository = Repository.init(store, PASSWORD)
    connector = PostgresqlConnector()
    endpoint = server.endpoint()
    snapshot, seconds = timed(lambda: connector.backup(BackupRequest(endpoint, database, repository)))
    rows.append(
        Row("backvault", "full backup", seconds, snapshot.summary["bytes_read"], directory_bytes(store.root))
    )
    target = f"{database}_bv_restore"
    metadata = {"DatabaseName": target}
    outcome, seconds = timed(
        lambda: connector.restore(RestoreRequest(endpoint, database, repository, snapshot, metadata))
    )
    rows.append(Row("backvault", "restore", seconds, outcome.bytes_restored))
    result, seconds = timed(
        lambda: connector.validate(ValidationRequest(endpoint, target, repository, snapshot))
    )
    rows.append(Row("backvault", "validate restore", seconds, note=result.message))
    if not result.valid:
        raise SystemExit(f"validation failed: {result.message}")
    server.drop(target)
    return repository


def bench_pg_dump(server: Server, database: str, workdir: Path, rows: list[Row]) -> None:
    """pg_dump -Fc into a file and pg_restore from it."""
    dump = workdir / "pg_dump.custom"
    _, seconds = timed(lambda: server.run(["pg_dump", "-Fc", "-f", str(dump), "-d", database]))
    rows.append(Row("pg_dump -Fc", "full backup", seconds, None, dump.stat().st_size, "compressed (zlib)"))
    target = f"{database}_pg_restore"

    def create_and_restore() -> None:
        # CREATE DATABASE is inside the timing, as it is inside backvault's restore
        server.create(target)
        server.run(["pg_restore", "--single-transaction", "-d", target, str(dump)])

    _, seconds = timed(create_and_restore)
    rows.append(Row("pg_restore", "restore (CREATE DATABASE + pg_restore)", seconds))
    server.drop(target)


class PgBackRest:
    """A private pgBackRest configuration for the server's cluster (run as the postgres user)."""

    def __init__(self, server: Server) -> None:
        # under /tmp, which the postgres user can reach without loosening the work tree's permissions
        self.directory = Path(tempfile.mkdtemp(prefix="bvbench-pgbackrest-"))
        data_directory = server.execute("SHOW data_directory")[0]
        socket_directory = str(server.execute("SHOW unix_socket_directories")[0]).split(",")[0].strip()
        self.config = self.directory / "pgbackrest.conf"
        self.config.write_text(
            "[global]\n"
            f"repo1-path={self.directory / 'repo'}\nlog-path={self.directory / 'log'}\n"
            f"lock-path={self.directory / 'lock'}\nlog-level-console=error\nstart-fast=y\n"
            "archive-check=n\ncompress-type=zst\nprocess-max=2\nrepo1-retention-full=9\n\n"
            f"[bench]\npg1-path={data_directory}\npg1-port={server.port}\npg1-socket-path={socket_directory}\n"
        )
        for name in ("repo", "log", "lock"):
            (self.directory / name).mkdir(exist_ok=True)
        subprocess.run(["chown", "-R", "postgres:postgres", str(self.directory)], check=True)
        self.run("stanza-create")

    def remove(self) -> None:
        """Delete the configuration, repository and logs."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def run(self, *arguments: str) -> None:
        """Run one pgbackrest command as postgres."""
        argv = ["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={self.config}", "--stanza=bench"]
        subprocess.run([*argv, *arguments], check=True, cwd="/tmp")

    def repository_bytes(self) -> int:
        """Bytes on disk of the pgBackRest repository."""
        return directory_bytes(self.directory / "repo")


def pgbackrest_available(requested: bool) -> str | None:
    """None when pgBackRest can run here, else why not."""
    if not requested:
        return "skipped (--no-pgbackrest)"
    if shutil.which("pgbackrest") is None:
        return "not installed (apt-get install pgbackrest)"
    if os.geteuid() != 0:
        return "needs root (it runs as the postgres user to read the data directory)"
    return None


def bench_pgbackrest(server: Server, rows: list[Row]) -> PgBackRest:
    """Full backup of the cluster and a restore of it into an empty directory."""
    tool = PgBackRest(server)
    _, seconds = timed(lambda: tool.run("--type=full", "backup"))
    cluster = int(server.execute("SELECT sum(pg_database_size(oid)) FROM pg_database")[0])
    rows.append(
        Row("pgBackRest", "full backup", seconds, cluster, tool.repository_bytes(), "whole cluster, zstd")
    )
    target = tool.directory / "restore"
    target.mkdir()
    subprocess.run(["chown", "postgres:postgres", str(target)], check=True)
    _, seconds = timed(lambda: tool.run(f"--pg1-path={target}", "restore"))
    rows.append(Row("pgBackRest", "restore (files)", seconds, note="whole cluster, not started"))
    shutil.rmtree(target)
    return tool


def change_rows(server: Server, database: str, where: str) -> int:
    """UPDATE 1% of pgbench_accounts; returns the rows changed."""
    with server.connect(database) as connection:
        cursor = connection.execute(f"UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE {where}")
        return cursor.rowcount


def second_backup(server: Server, database: str, repository: Repository, label: str, rows: list[Row]) -> None:
    """Another backvault backup after a change: the bytes it actually added to the repository."""
    before = directory_bytes(repository.store.root)  # type: ignore[attr-defined]
    connector = PostgresqlConnector()
    snapshot, seconds = timed(
        lambda: connector.backup(BackupRequest(server.endpoint(), database, repository))
    )
    added = directory_bytes(repository.store.root) - before  # type: ignore[attr-defined]
    summary = snapshot.summary
    note = f"{summary['chunks_reused']} chunks reused, {summary['chunks_new']} new"
    rows.append(Row("backvault", label, seconds, summary["bytes_read"], added, note))


def print_table(rows: list[Row], header: str) -> None:
    """The results as a fixed-width table."""
    print(header)
    print(f"{'tool':<12} {'step':<48} {'seconds':>8} {'read MB':>9} {'stored MB':>10}  note")
    for row in rows:
        read = f"{row.bytes_read / MB:9.1f}" if row.bytes_read is not None else f"{'':9}"
        stored = f"{row.bytes_stored / MB:10.2f}" if row.bytes_stored is not None else f"{'':10}"
        print(f"{row.tool:<12} {row.step:<48} {row.seconds:8.2f} {read} {stored}  {row.note}")


def main() -> None:
    """Parse options, run every step, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale factor (50 = about 750 MB)")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench" / "work" / "postgresql")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--no-pgbackrest", action="store_true", help="leave pgBackRest out")
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args()
    os.environ.pop("BACKVAULT_TEST_FAST_KDF", None)  # measure with the real key derivation
    server = Server(options.host, options.port, options.user, os.environ.get("PGPASSWORD", "postgres"))
    workdir: Path = options.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    database = f"bvbench_{uuid.uuid4().hex[:8]}"
    rows: list[Row] = []
    tool: PgBackRest | None = None
    server.create(database)
    try:
        _, seconds = timed(lambda: server.run(["pgbench", "-i", "-q", "-s", str(options.scale), database]))
        accounts = options.scale * 100_000
        size = server.size(database)
        header = (
            f"pgbench scale {options.scale}: {accounts} accounts, "
            f"database {size / MB:.0f} MB (load {seconds:.1f} s)"
        )
        print(header, flush=True)
        repository = bench_backvault(server, database, workdir, rows)
        bench_pg_dump(server, database, workdir, rows)
        pgbackrest_problem = pgbackrest_available(not options.no_pgbackrest)
        tool = None if pgbackrest_problem else bench_pgbackrest(server, rows)
        changed = change_rows(server, database, f"aid <= {accounts // 100}")
        second_backup(server, database, repository, f"backup after 1% changed ({changed} rows, range)", rows)
        if tool is not None:
            before = tool.repository_bytes()
            _, seconds = timed(lambda: tool.run("--type=incr", "backup"))
            rows.append(
                Row(
                    "pgBackRest",
                    "incr backup after 1% (range)",
                    seconds,
                    None,
                    tool.repository_bytes() - before,
                )
            )
        changed = change_rows(server, database, "aid % 100 = 0")
        second_backup(
            server, database, repository, f"backup after 1% changed ({changed} rows, scattered)", rows
        )
        print_table(rows, header)
        if pgbackrest_problem:
            print(f"pgBackRest: {pgbackrest_problem}")
        if options.json:
            options.json.write_text(
                json.dumps({"header": header, "rows": [asdict(row) for row in rows]}, indent=1)
            )
    finally:
        if tool is not None:
            tool.remove()
        server.drop(database)
        for suffix in ("_bv_restore", "_pg_restore"):
            server.drop(database + suffix)


if __name__ == "__main__":
    main()
