"""`make demo` (examples/server_demo.py) run as a user runs it: twice over the same work directory.

The first run keeps its server running, the second stops that one, starts its own and stops it at
the end; both must back up, restore and verify the sample directory and database. The admin's secret
must appear in neither the output nor the server log.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import free_port

DEMO = Path(__file__).resolve().parents[2] / "examples" / "server_demo.py"


def run_demo(work: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the demo script in a child process, as `make demo` does (fast KDF for the test)."""
    return subprocess.run(
        [sys.executable, str(DEMO), "--work-dir", str(work), "--port", str(port), *extra],
        env={**os.environ, "BACKVAULT_TEST_FAST_KDF": "1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def points_by_resource(output: str) -> dict[str, list[str]]:
    """The recovery point table of a run: resource name -> its rows."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = re.match(r"^(documents|shop\.db)\s+\d{4}-\d\d-\d\d .*recovery-point:", line)
        if match:
            rows.setdefault(match.group(1), []).append(line)
    return rows


def storage_growth_bytes(output: str) -> float:
    """How much the vault's storage grew in a run, from the line the demo prints."""
    match = re.search(r"storage grew by ([\d.]+) (B|KiB|MiB)", output)
    assert match, output
    return float(match.group(1)) * {"B": 1, "KiB": 1024, "MiB": 1024 * 1024}[match.group(2)]


def check_run(result: subprocess.CompletedProcess[str], port: int, run: int) -> None:
    """What every successful run prints: PASS per resource, the URLs, the end."""
    output = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{output}\n{result.stderr}"
    files = 8 + run  # eight sample files, and one more per run (runs/run-N.txt)
    assert f"PASS documents: {files} files in " in output, output
    assert re.search(rf"PASS shop\.db: .*run-{run}/shop\.db is intact, all \d+ rows equal", output), output
    assert "FAIL" not in output
    assert f"API:         http://127.0.0.1:{port}" in output
    assert f"Dashboard:   http://127.0.0.1:{port}/backvault/dashboard/" in output
    assert f"aws backup list-backup-vaults --endpoint-url http://127.0.0.1:{port} --region local" in output
    assert output.rstrip().endswith("demo complete")


def test_the_demo_runs_twice_and_keeps_the_secret_out_of_output_and_log(tmp_path: Path) -> None:
    work, port = tmp_path / "demo", free_port()
    first = run_demo(work, port, "--keep-running")
    pid = int((work / "server.pid").read_text().split()[0]) if (work / "server.pid").exists() else None
    try:
        check_run(first, port, 1)
        assert "new admin key" in first.stdout
        assert pid is not None and process_alive(pid), "--keep-running left no server running"
        assert f"The server keeps running as pid {pid}" in first.stdout
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the kept server still listens after the demo exited
        assert storage_growth_bytes(first.stdout) > 900 * 1024  # the MiB of binary is new (printed rounded)

        second = run_demo(work, port)
        check_run(second, port, 2)
        assert f"stopping the demo server an earlier run left running (pid {pid})" in second.stdout
        assert "the admin exists already" in second.stdout
        # Only the changed file, the new file and the changed database pages are new.
        assert storage_growth_bytes(second.stdout) < 200 * 1024
    finally:
        subprocess.run(
            [sys.executable, str(DEMO), "--work-dir", str(work), "--stop"], timeout=120, check=False
        )
    assert pid is not None and not process_alive(pid)
    assert not (work / "server.pid").exists(), "the second run left its server running"

    points = points_by_resource(second.stdout)
    assert sorted(points) == ["documents", "shop.db"]
    for resource, rows in points.items():
        assert len(rows) == 2, f"{resource}: {rows}"
        assert [" * arn:" in row for row in rows] == [False, True], rows  # the newer one is this run's
    # Each run restored into its own place, from its own recovery point.
    for run in (1, 2):
        assert (work / "restores" / f"run-{run}" / "documents" / "runs" / f"run-{run}.txt").is_file()
        assert (work / "restores" / f"run-{run}" / "shop.db").is_file()
    assert not (work / "restores" / "run-1" / "documents" / "runs" / "run-2.txt").exists()

    credentials = work / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE((work / "credentials.env").stat().st_mode) == 0o600
    secret = json.loads(credentials.read_text())["SecretAccessKey"]
    assert len(secret) >= 20
    for text in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert secret not in text
    assert secret not in (work / "server.log").read_text()
    assert (work / "server.log").stat().st_size > 0


def test_the_demo_refuses_a_port_another_program_holds(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_demo(tmp_path / "demo", port)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use by another program" in result.stderr
    assert "--port N" in result.stderr
    assert not (tmp_path / "demo" / "server").exists()  # it stopped before doing any work


def test_the_demo_checks_notice_a_changed_byte_a_missing_file_and_a_changed_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(DEMO.parent))  # examples/ is no package
    support = importlib.import_module("server_demo_support")
    source, copy = tmp_path / "source", tmp_path / "copy"
    (source / "nested").mkdir(parents=True)
    (source / "nested" / "data.bin").write_bytes(b"\x00\x01\x02")
    (source / "notes.txt").write_text("hello\n")
    shutil.copytree(source, copy)
    assert support.compare_trees(source, copy) == []
    (copy / "nested" / "data.bin").write_bytes(b"\x00\x01\x03")
    (copy / "notes.txt").unlink()
    assert support.compare_trees(source, copy) == ["missing notes.txt", "different bytes in nested/data.bin"]

    database, restored = tmp_path / "shop.db", tmp_path / "restored.db"
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        connection.executemany("INSERT INTO orders (total) VALUES (?)", [(100,), (250,)])
    shutil.copyfile(database, restored)
    assert support.compare_databases(database, restored) == []
    with contextlib.closing(sqlite3.connect(restored)) as connection, connection:
        connection.execute("UPDATE orders SET total = 251 WHERE id = 2")
    assert support.compare_databases(database, restored) == ["table orders: rows differ"]
    assert support.compare_databases(database, tmp_path / "absent.db") == [
        f"{tmp_path / 'absent.db'} does not exist"
    ]
