"""Workers: claim due jobs, run their handlers under a heartbeating lease, and record how they ended.

A ``Worker`` runs one job at a time. While a handler runs, a background thread renews the lease every
third of its length, so a handler stuck in one long read keeps its job; the handler's own
``run.heartbeat()`` calls report progress and are where it learns that it must stop.
``run_worker_process`` runs several workers as threads of one process (``backvault worker``/``server``).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import FrameType

from backvault.control.catalog.activity import JobType
from backvault.control.catalog.database import open_catalog
from backvault.control.context import ServiceContext
from backvault.control.job_engine import (
    DEFAULT_LEASE_SECONDS,
    JobHandler,
    JobRun,
    JobStopped,
    RetryPolicy,
    claim_job,
    expire_overdue_jobs,
    run_handler,
)
from backvault.control.secrets import load_master_secret
from backvault.domain.errors import BackupServiceError

logger = logging.getLogger(__name__)

# How often a job's progress heartbeats reach the catalog at most, whatever the handler's call rate.
MAX_HEARTBEAT_WRITES_PER_SECOND = 1.0


def job_handlers() -> dict[JobType, JobHandler]:
    """Return the service's handlers (imported late: handlers pull in sources and the repository)."""
    module = importlib.import_module("backvault.control.job_handlers")
    handlers: Mapping[JobType, JobHandler] = module.HANDLERS
    return dict(handlers)


def default_worker_id() -> str:
    """Return a worker id unique across hosts and restarts: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims due jobs one at a time and runs them to an end (or to a scheduled retry)."""

    def __init__(
        self,
        context: ServiceContext,
        *,
        worker_id: str | None = None,
        handlers: Mapping[JobType, JobHandler] | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = 1.0,
        job_types: Collection[JobType] | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("lease_seconds and poll_seconds must be positive")
        self.context = context
        self.worker_id = worker_id or default_worker_id()
        self._handlers = dict(handlers) if handlers is not None else None
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.job_types = frozenset(JobType(kind) for kind in job_types) if job_types is not None else None
        self.retry_policy = retry_policy or RetryPolicy()
        self._last_expiry_sweep = float("-inf")

    def __repr__(self) -> str:
        return f"Worker({self.worker_id!r})"

    @property
    def handlers(self) -> dict[JobType, JobHandler]:
        """The handlers by job type (the service's own unless given)."""
        if self._handlers is None:
            self._handlers = job_handlers()
        return self._handlers

    def claimable_types(self) -> list[JobType]:
        """The job types this worker claims: those it has a handler for, limited to job_types if given."""
        return sorted(kind for kind in self.handlers if self.job_types is None or kind in self.job_types)

    def run_once(self) -> bool:
        """Claim one due job and run it to an end state (or a scheduled retry); False if none was due."""
        self._sweep_overdue(force=True)
        run = claim_job(
            self.context,
            self.worker_id,
            job_types=self.claimable_types(),
            lease_seconds=self.lease_seconds,
            retry_policy=self.retry_policy,
        )
        if run is None:
            return False
        self._execute(run)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        """Poll for jobs until ``stop`` is set; a running job is finished first."""
        logger.info(
            "worker %s started (job types %s)", self.worker_id, [t.value for t in self.claimable_types()]
        )
        while not stop.is_set():
            try:
                self._sweep_overdue(force=False)
                run = claim_job(
                    self.context,
                    self.worker_id,
                    job_types=self.claimable_types(),
                    lease_seconds=self.lease_seconds,
                    retry_policy=self.retry_policy,
                )
            except Exception as error:
                # The catalog is down or busy: keep the worker alive and try again after a pause.
                logger.warning("worker %s cannot claim jobs: %s", self.worker_id, _brief(error))
                stop.wait(self.poll_seconds)
                continue
            if run is None:
                stop.wait(self.poll_seconds)
                continue
            try:
                self._execute(run)
            except Exception as error:
                # Recording the outcome failed: the lease lapses and another worker settles the job.
                logger.warning(
                    "worker %s lost track of job %s: %s", self.worker_id, run.job_id, _brief(error)
                )
        logger.info("worker %s stopped", self.worker_id)

    def _sweep_overdue(self, *, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._last_expiry_sweep >= self.poll_seconds:
            self._last_expiry_sweep = now
            expired = expire_overdue_jobs(self.context)
            if expired:
                logger.info("worker %s expired %d job(s) past their start window", self.worker_id, expired)

    def _execute(self, run: JobRun) -> None:
        handler = self.handlers[run.job_type]
        run.min_heartbeat_seconds = min(MAX_HEARTBEAT_WRITES_PER_SECOND, self.lease_seconds / 10)
        logger.info(
            "worker %s runs %s job %s (attempt %d)", self.worker_id, run.job_type, run.job_id, run.attempt
        )
        done = threading.Event()
        keeper = threading.Thread(
            target=self._keep_lease, args=(run, done), name=f"lease-{run.job_id}", daemon=True
        )
        keeper.start()
        try:
            state = run_handler(run, handler, self.retry_policy)
        finally:
            done.set()
            keeper.join()
        logger.info(
            "worker %s: job %s -> %s", self.worker_id, run.job_id, state.value if state else "not ended"
        )

    def _keep_lease(self, run: JobRun, done: threading.Event) -> None:
        """Renew the lease until the handler returns, or until it ignored a stop for a whole lease."""
        interval = self.lease_seconds / 3
        while not done.wait(interval):
            if (
                run.stop_noticed_at is not None
                and time.monotonic() - run.stop_noticed_at > self.lease_seconds
            ):
                # The handler is stuck and never heartbeats: let the lease lapse, so that another worker
                # ends the job ABORTED (it is never run again) while this one's late writes are fenced.
                logger.warning("job %s: the handler ignored its stop; letting the lease lapse", run.job_id)
                return
            try:
                run.renew()
            except JobStopped:
                return  # the lease is gone: the handler learns it at its next heartbeat
            except Exception as error:
                # A short catalog outage: the lease still has two thirds left; try again next round.
                logger.warning("job %s: lease renewal failed: %s", run.job_id, _brief(error))


def _brief(error: Exception) -> str:
    """A one-line description of an error for the log."""
    if isinstance(error, BackupServiceError):
        return error.message
    return f"{type(error).__name__}: {error}"


def run_worker_process(
    data_dir: Path,
    database_url: str | None,
    *,
    worker_count: int = 1,
    stop_event: threading.Event | None = None,
    handlers: Mapping[JobType, JobHandler] | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    poll_seconds: float = 1.0,
    job_types: Collection[JobType] | None = None,
    retry_policy: RetryPolicy | None = None,
    worker_id_prefix: str | None = None,
) -> None:
    """Run ``worker_count`` workers as threads until ``stop_event`` is set (or SIGTERM/SIGINT without one)."""
    if worker_count < 1:
        raise ValueError(f"worker_count must be at least 1, got {worker_count}")
    stop = stop_event or threading.Event()
    restore_signals = _stop_on_signals(stop) if stop_event is None else None
    catalog = open_catalog(database_url, data_dir)
    try:
        context = ServiceContext(catalog=catalog, master_secret=load_master_secret(data_dir))
        resolved = dict(handlers) if handlers is not None else job_handlers()
        prefix = worker_id_prefix or default_worker_id()
        workers = [
            Worker(
                context,
                worker_id=f"{prefix}/{number}",
                handlers=resolved,
                lease_seconds=lease_seconds,
                poll_seconds=poll_seconds,
                job_types=job_types,
                retry_policy=retry_policy,
            )
            for number in range(worker_count)
        ]
        threads = [
            threading.Thread(target=worker.run_forever, args=(stop,), name=f"worker-{number}")
            for number, worker in enumerate(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        catalog.dispose()
        if restore_signals is not None:
            restore_signals()


def _stop_on_signals(stop: threading.Event) -> Callable[[], None] | None:
    """Make SIGTERM and SIGINT set ``stop`` (main thread only); return a function undoing that."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}

    def _request_stop(_number: int, _frame: FrameType | None) -> None:
        stop.set()

    for number in previous:
        signal.signal(number, _request_stop)

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore
