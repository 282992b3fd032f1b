"""A test handler that notices any overlap: per-job and per-resource flock()s taken without waiting.

flock() locks belong to an open file and vanish when its process dies, so a SIGKILLed worker leaves no
stale lock behind, while two live runs of one job (or two backups of one resource) at the same time
always collide. Collisions, double completions and every run's start are written as marker files in
the directory named by $BACKVAULT_TEST_MARKERS, where the test reads them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backvault.control.catalog.activity import JobType
from backvault.control.job_engine import JobHandler, JobResult, JobRun

MARKERS_VARIABLE = "BACKVAULT_TEST_MARKERS"
VIOLATIONS_FILE = "violations.log"


def markers_directory() -> Path:
    """The directory shared by the test and its worker processes."""
    return Path(os.environ[MARKERS_VARIABLE])


def record_violation(text: str) -> None:
    """Append one line to the violations file (O_APPEND: whole lines, whatever process writes)."""
    descriptor = os.open(markers_directory() / VIOLATIONS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, f"{text}\n".encode())
    finally:
        os.close(descriptor)


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an flock on ``path`` for the block; a lock someone else holds is a recorded violation."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record_violation(f"overlap: {what} was already running (pid {os.getpid()})")
            raise
        yield
    finally:
        os.close(descriptor)


def exclusive_backup(run: JobRun) -> JobResult:
    """Run for the job's SleepSeconds, heartbeating, holding the job's and the resource's locks."""
    job = run.job()
    markers = markers_directory()
    resource_key = hashlib.sha256((job.resource_arn or "").encode()).hexdigest()[:16]
    with (
        exclusive(markers / f"job-{run.job_id}.lock", f"job {run.job_id}"),
        exclusive(markers / f"resource-{resource_key}.lock", f"a backup of {job.resource_arn}"),
        run.step("backup"),
    ):
        started = markers / f"started-{run.job_id}-{run.attempt}"
        started.write_text(f"{os.getpid()} {run.worker_id} {time.time()}")
        deadline = time.monotonic() + float(job.parameters.get("SleepSeconds", 0.1))
        while time.monotonic() < deadline:
            run.heartbeat()
            time.sleep(0.02)
        try:
            os.close(os.open(markers / f"done-{run.job_id}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            record_violation(f"job {run.job_id} completed twice")
    return JobResult()


HANDLERS: dict[JobType, JobHandler] = {JobType.BACKUP: exclusive_backup}
