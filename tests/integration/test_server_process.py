"""`backvault server` as a real process: it comes up, its scheduler and workers act, SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml
from sqlalchemy import select

from backvault.control.backup_jobs import start_backup_job
from backvault.control.catalog import Job, Lease, ProtectedResource, RecoveryPoint, open_catalog
from backvault.control.context import ServiceContext
from backvault.control.scheduler import LEASE_NAME
from backvault.control.secrets import load_master_secret

BACKVAULT = [sys.executable, "-m", "backvault.cli.main"]
ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"
RESOURCE = "arn:aws:backvault:local:000000000000:filesystem:files/photos"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for(what: str, check: Callable[[], Any], process: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(
                f"the process exited ({process.returncode}) before {what}:\n{log.read_text()}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")


def _log_records(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_server_comes_up_runs_scheduler_workers_and_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    photos = tmp_path / "sources" / "photos"
    photos.mkdir(parents=True)
    (photos / ".backvault-tags").write_text("backup = daily\n")
    (photos / "cat.jpg").write_bytes(os.urandom(50_000))
    config = tmp_path / "backvault.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "vaults": [{"name": "main"}],
                "endpoints": [
                    {"name": "files", "type": "Filesystem", "connection": {"root": str(photos.parent)}}
                ],
                "plans": [
                    {
                        "name": "daily",
                        "rules": [{"name": "nightly", "vault": "main"}],
                        "selections": [{"name": "tagged", "tags": {"backup": "daily"}}],
                    }
                ],
            }
        )
    )
    environment = {**os.environ, "BACKVAULT_TEST_FAST_KDF": "1"}
    environment.pop("BACKVAULT_DATABASE_URL", None)
    environment.pop("BACKVAULT_MASTER_SECRET", None)
    applied = subprocess.run(
        [*BACKVAULT, "apply", "-f", str(config), "--data-dir", str(data_dir), "--json"],
        env=environment,
        capture_output=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr.decode()
    assert json.loads(applied.stdout)["Counts"] == {"create": 4}

    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                *BACKVAULT,
                "server",
                "--data-dir",
                str(data_dir),
                "--workers",
                "2",
                "--listen",
                f"127.0.0.1:{port}",
                "--tick-seconds",
                "0.5",
                "--lease-seconds",
                "5",
            ],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # signals from the test runner's terminal stay with the test
        )
    catalog = open_catalog(None, data_dir)
    extra_worker: subprocess.Popen[bytes] | None = None
    try:
        context = ServiceContext(catalog=catalog, master_secret=load_master_secret(data_dir))
        started = _wait_for(
            "the server to start",
            lambda: [r for r in _log_records(log) if r["message"] == "backvault server started"],
            process,
            log,
        )[0]
        # The scheduler leads and discovered the endpoint the apply file declared.
        with catalog.transaction() as session:
            lease = session.get(Lease, LEASE_NAME)
            assert lease is not None and lease.owner == started["scheduler_id"]

        def discovered() -> bool:
            with catalog.transaction() as session:
                return session.get(ProtectedResource, RESOURCE) is not None

        _wait_for("discovery of the tagged directory", discovered, process, log)
        # The API answers (unsigned requests are refused the AWS way).
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/backup-vaults/", timeout=5)
            raise AssertionError("an unsigned request was accepted")
        except urllib.error.HTTPError as refused:
            assert refused.code == 403
            assert json.loads(refused.read())["__type"] == "MissingAuthenticationTokenException"
        # Workers (the server's and an extra `backvault worker`) run a job to a recovery point.
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "wb") as output:
            extra_worker = subprocess.Popen(
                [*BACKVAULT, "worker", "--data-dir", str(data_dir), "--count", "2"],
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=output,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_for(
            "the extra workers to start",
            lambda: worker_log.read_text().count("/1 started"),
            extra_worker,
            worker_log,
        )
        job_id = start_backup_job(context, "main", RESOURCE, ROLE)["BackupJobId"]

        def finished() -> str | None:
            with catalog.transaction() as session:
                job = session.get(Job, job_id)
                assert job is not None
                return job.state if job.state in ("COMPLETED", "FAILED", "ABORTED", "EXPIRED") else None

        assert _wait_for("the backup job", finished, process, log) == "COMPLETED", log.read_text()
        with catalog.transaction() as session:
            assert session.scalars(select(RecoveryPoint).where(RecoveryPoint.resource_arn == RESOURCE)).one()

        workers = [
            child
            for child in psutil.Process(process.pid).children(recursive=True)
            if "resource_tracker" not in " ".join(child.cmdline())
        ]
        assert len(workers) == 2
        assert extra_worker.poll() is None, worker_log.read_text()
        extra_worker.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
        assert extra_worker.wait(timeout=30) == 0, worker_log.read_text()
        assert "backvault server stopped" in log.read_text()
        assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
        with catalog.transaction() as session:
            lease = session.get(Lease, LEASE_NAME)
            assert lease is not None and lease.expires_at <= datetime.now(UTC)  # released for the next server
    finally:
        for child in (process, extra_worker):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        catalog.dispose()
