"""Worker processes on one PostgreSQL catalog: no job runs twice at once, and a SIGKILLed job is taken over.

Each worker is a real subprocess (``workers_support.worker_main``) running the overlap-detecting handler
of ``workers_support.handlers``; the test process creates the jobs and reads the outcome.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from workers_support.handlers import MARKERS_VARIABLE, VIOLATIONS_FILE

from backvault.control.catalog import Catalog, open_catalog
from backvault.control.catalog.activity import Event, Job, JobType
from backvault.control.context import ServiceContext
from backvault.control.job_engine import create_job
from backvault.control.secrets import load_master_secret

POSTGRES_ADMIN_URL = os.environ.get(
    "BACKVAULT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)
HERE = Path(__file__).resolve().parent
RESOURCE = "arn:aws:backvault:local:000000000000:filesystem:files/"

StartWorkers = Callable[[int, float, int], list[subprocess.Popen[bytes]]]


@pytest.fixture
def database_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for the test, dropped afterwards."""
    admin = create_engine(make_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"backvault_workers_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {error.orig}", pytrace=False)
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The marker directory the handlers write into."""
    path = tmp_path / "markers"
    path.mkdir()
    monkeypatch.setenv(MARKERS_VARIABLE, str(path))
    return path


@pytest.fixture
def context(database_url: str, tmp_path: Path) -> Iterator[ServiceContext]:
    """The test's own view of the catalog (migrated before any worker starts)."""
    data_dir = tmp_path / "data"
    catalog: Catalog = open_catalog(database_url, data_dir)
    try:
        yield ServiceContext(catalog=catalog, master_secret=load_master_secret(data_dir))
    finally:
        catalog.dispose()


@pytest.fixture
def start_workers(database_url: str, tmp_path: Path, markers: Path) -> Iterator[StartWorkers]:
    """Start worker processes (count, lease seconds, threads each); all are stopped at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))

    def start(count: int, lease_seconds: float, threads: int) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            log = open(tmp_path / f"worker-{len(processes)}.log", "wb")  # noqa: SIM115 - closed below
            arguments = [str(tmp_path / "data"), database_url, str(lease_seconds), str(threads)]
            process = subprocess.Popen(
                [sys.executable, "-m", "workers_support.worker_main", *arguments],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
            )
            log.close()
            processes.append(process)
            started.append(process)
        return started

    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def add_backups(context: ServiceContext, resources: int, per_resource: int, sleep: float) -> list[str]:
    """Create per_resource backup jobs for each of ``resources`` resources; return their ids."""
    with context.catalog.transaction() as session:
        return [
            create_job(
                session,
                context,
                JobType.BACKUP,
                resource_arn=f"{RESOURCE}{number}",
                parameters={"SleepSeconds": sleep},
            ).id
            for _ in range(per_resource)
            for number in range(resources)
        ]


def jobs(context: ServiceContext) -> dict[str, Job]:
    """Every job by id."""
    with context.catalog.transaction() as session:
        return {job.id: job for job in session.scalars(select(Job))}


def wait_until(condition: Callable[[], bool], seconds: float, what: str, logs: Path) -> None:
    """Poll ``condition`` until it holds; fail with the worker logs if it does not in time."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            shown = "\n".join(
                f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(logs.glob("worker-*.log"))
            )
            pytest.fail(f"timed out waiting for {what}\n{shown}")
        time.sleep(0.1)


def test_four_worker_processes_run_every_job_once_and_never_concurrently(
    context: ServiceContext, start_workers: StartWorkers, markers: Path, tmp_path: Path
) -> None:
    job_ids = add_backups(context, resources=10, per_resource=4, sleep=0.15)
    processes = start_workers(4, 5.0, 2)

    def all_ended() -> bool:
        return all(job.state == "COMPLETED" for job in jobs(context).values())

    wait_until(all_ended, 60, "40 jobs to complete", tmp_path)
    assert all(process.poll() is None for process in processes), "no worker died"
    assert not (markers / VIOLATIONS_FILE).exists(), (markers / VIOLATIONS_FILE).read_text()
    assert sorted(path.name for path in markers.glob("done-*")) == sorted(
        f"done-{job_id}" for job_id in job_ids
    )
    finished = jobs(context)
    assert {job.attempts for job in finished.values()} == {1}, "nothing was retried or taken over"
    with context.catalog.transaction() as session:
        completions = list(
            session.scalars(select(Event.job_id).where(Event.event_type == "BACKUP_JOB_COMPLETED"))
        )
    assert sorted(completions) == sorted(job_ids), "exactly one completion per job"
    workers = {path.read_text().split()[1] for path in markers.glob("started-*")}
    assert len({worker.split("/")[0] for worker in workers}) >= 2, f"the work was shared: {workers}"


def test_a_job_whose_worker_is_killed_is_taken_over_and_completed(
    context: ServiceContext, start_workers: StartWorkers, markers: Path, tmp_path: Path
) -> None:
    (job_id,) = add_backups(context, resources=1, per_resource=1, sleep=1.0)
    processes = start_workers(2, 2.0, 1)
    first_run = markers / f"started-{job_id}-1"
    wait_until(first_run.exists, 30, "the first attempt to start", tmp_path)
    victim_pid, victim_worker, _ = first_run.read_text().split()
    (victim,) = [process for process in processes if process.pid == int(victim_pid)]
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    victim.wait()

    wait_until(lambda: jobs(context)[job_id].state == "COMPLETED", 30, "the takeover to complete", tmp_path)
    job = jobs(context)[job_id]
    assert job.attempts == 2 and job.lease_owner is None
    assert [step["Status"] for step in job.steps] == ["FAILED", "SUCCEEDED"]
    assert victim_worker in job.steps[0]["Error"]
    second_pid, second_worker, second_start = (markers / f"started-{job_id}-2").read_text().split()
    assert int(second_pid) != victim.pid and second_worker != victim_worker
    # Not before the victim's lease (2 s, renewed up to the kill) could have expired.
    assert float(second_start) > killed_at + 0.5
    with context.catalog.transaction() as session:
        started = list(
            session.scalars(
                select(Event)
                .where(Event.job_id == job_id, Event.event_type == "BACKUP_JOB_STARTED")
                .order_by(Event.id)
            )
        )
    assert [event.detail.get("TakenOverFrom") for event in started] == [None, victim_worker]
    assert (markers / f"done-{job_id}").exists()
    assert not (markers / VIOLATIONS_FILE).exists(), (markers / VIOLATIONS_FILE).read_text()
