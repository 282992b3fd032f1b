"""``backvault server``, ``backvault worker`` and ``backvault apply``: the long-running processes and config.

``server`` runs the scheduler (in a thread; one leader among all servers sharing a catalog), N worker
processes (spawned, each running the job engine's workers), and the HTTP API when ``--listen`` is
given. SIGTERM or SIGINT stops it cleanly: the scheduler gives its lease up, workers finish or hand
back their jobs (a job they cannot finish in time is taken over by another worker once its lease
expires), the API stops accepting requests. ``--metrics-listen`` adds a plain HTTP listener serving
only ``GET /metrics`` for Prometheus (bearer token from ``--metrics-token-file``; loopback only
without one). ``worker`` runs more workers against the same catalog, on this machine or another.
``apply`` makes the catalog match a declarative YAML file.

The catalog is SQLite in the data directory unless ``--database-url`` or $BACKVAULT_DATABASE_URL
names PostgreSQL; the master secret is $BACKVAULT_MASTER_SECRET or DATA_DIR/master.key.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

from backvault.cli.common import DEFAULT_DATA_DIR, err_console, fail, out_console, print_json

if TYPE_CHECKING:
    from backvault.control.context import ServiceContext

logger = logging.getLogger("backvault.server")

DATA_DIR_VARIABLE = "BACKVAULT_DATA_DIR"
# A worker process that keeps dying is restarted at most this often.
RESTART_INTERVAL_SECONDS = 10.0

DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar=DATA_DIR_VARIABLE,
        help="Where the catalog (SQLite), master key and default vault location live.",
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Catalog database (postgresql+psycopg://...); default $BACKVAULT_DATABASE_URL, else SQLite.",
        show_default=False,
    ),
]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]
LogFormatOption = Annotated[str, typer.Option("--log-format", help="json (one object per line) or text.")]


def register(app: typer.Typer) -> None:
    """Add the server, worker and apply commands to the ``backvault`` app."""
    app.command("server")(server)
    app.command("worker")(worker)
    app.command("apply")(apply)


def open_context(data_dir: Path, database_url: str | None) -> ServiceContext:
    """Open the catalog and master secret of a data directory; return a ServiceContext."""
    from backvault.control.catalog import CatalogUnavailableError, open_catalog
    from backvault.control.context import ServiceContext
    from backvault.control.locations import ensure_default_location
    from backvault.control.secrets import SecretError, load_master_secret

    data_dir = data_dir.expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        secret = load_master_secret(data_dir)
        catalog = open_catalog(database_url, data_dir)
    except (CatalogUnavailableError, SecretError, ValueError, OSError) as error:
        fail(str(error))
    context = ServiceContext(catalog=catalog, master_secret=secret)
    ensure_default_location(context, data_dir / "vaults")
    return context


def _configure_logging(level: str, log_format: str) -> None:
    from backvault.control.logs import configure_logging

    if log_format not in ("json", "text"):
        fail(f"--log-format must be json or text, not {log_format!r}")
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
    configure_logging(level=level, json_lines=log_format == "json")


def _stop_on_signals(stop: threading.Event) -> None:
    def request_stop(number: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            logger.info("received %s; stopping", signal.Signals(number).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


# --- server --------------------------------------------------------------------------------------


def server(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Worker processes to run.")] = 2,
    listen: Annotated[
        str | None, typer.Option("--listen", help="Serve the HTTP API on HOST:PORT.", show_default=False)
    ] = None,
    database_url: DatabaseUrlOption = None,
    tick_seconds: Annotated[float, typer.Option("--tick-seconds", min=0.1, help="Scheduler tick.")] = 5.0,
    lease_seconds: Annotated[
        float, typer.Option("--lease-seconds", min=1.0, help="Scheduler leadership lease.")
    ] = 30.0,
    discovery_minutes: Annotated[
        float, typer.Option("--discovery-minutes", min=0.0, help="Rediscover endpoints this often.")
    ] = 15.0,
    shutdown_seconds: Annotated[
        float, typer.Option("--shutdown-seconds", min=0.0, help="How long to wait for workers on stop.")
    ] = 30.0,
    log_level: LogLevelOption = "INFO",
    log_format: LogFormatOption = "json",
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            help="Also serve GET /metrics (Prometheus text, no SigV4) on HOST:PORT; off by default.",
            show_default=False,
        ),
    ] = None,
    metrics_token_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-token-file",
            help="File holding the bearer token every /metrics scrape must send (required off loopback).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the scheduler, N worker processes and (with --listen) the HTTP API until SIGTERM/SIGINT."""
    from datetime import timedelta

    from backvault.control.restore_testing_runs import run_restore_tests_forever
    from backvault.control.scheduler import Scheduler

    _configure_logging(log_level, log_format)
    address = _parse_listen(listen) if listen else None
    metrics_address, metrics_token = _metrics_settings(metrics_listen, metrics_token_file)
    if tick_seconds * 2 > lease_seconds:
        fail(f"--tick-seconds ({tick_seconds}) must be at most half of --lease-seconds ({lease_seconds})")
    data_dir = data_dir.expanduser().absolute()
    context = open_context(data_dir, database_url)
    stop = threading.Event()
    _stop_on_signals(stop)
    scheduler = Scheduler(
        context, lease_seconds=lease_seconds, discovery_interval=timedelta(minutes=discovery_minutes)
    )
    threads = [
        threading.Thread(
            target=scheduler.run_forever, args=(stop, tick_seconds), name="scheduler", daemon=True
        )
    ]
    api = _start_api(context, address) if address else None
    if api is not None:
        threads.append(api[1])
    metrics = _start_metrics(context, metrics_address, metrics_token) if metrics_address else None
    if metrics is not None:
        threads.append(metrics[1])
    threads[0].start()
    # Restore tests validate and run hooks for minutes: their own thread keeps scheduler ticks short.
    restore_tests = threading.Thread(
        target=run_restore_tests_forever, args=(context, stop), name="restore-tests", daemon=True
    )
    restore_tests.start()
    pool = _WorkerPool(data_dir, database_url, workers, log_level, log_format)
    exit_code = 0
    try:
        pool.start()
        logger.info(
            "backvault server started",
            extra={
                "data_dir": str(data_dir),
                "workers": workers,
                "scheduler_id": scheduler.scheduler_id,
                "api": f"http://{address[0]}:{address[1]}" if address else None,
                "metrics": _metrics_url(metrics_address),
            },
        )
        while not stop.wait(1.0):
            pool.supervise()
            if api is not None and not api[1].is_alive():
                logger.error("the HTTP API stopped unexpectedly; stopping the server")
                exit_code = 1
                stop.set()
            if metrics is not None and not metrics[1].is_alive():
                logger.error("the metrics listener stopped unexpectedly; stopping the server")
                exit_code = 1
                stop.set()
    finally:
        stop.set()
        logger.info("backvault server stopping")
        if api is not None:
            api[0].should_exit = True
        if metrics is not None:
            metrics[0].should_exit = True
        pool.stop(shutdown_seconds)
        for thread in threads:
            thread.join(timeout=shutdown_seconds)
        context.catalog.dispose()
        logger.info("backvault server stopped")
    if exit_code:
        raise typer.Exit(exit_code)


def _parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"{option} {text!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    return host.strip("[]"), int(port)


def _metrics_settings(
    listen: str | None, token_file: Path | None
) -> tuple[tuple[str, int] | None, str | None]:
    """Check --metrics-listen and --metrics-token-file before anything starts; return (address, token)."""
    from backvault.api.metrics_listener import MetricsListenerError, check_listen_address, read_token_file

    if listen is None:
        if token_file is not None:
            fail("--metrics-token-file needs --metrics-listen HOST:PORT")
        return None, None
    address = _parse_listen(listen, "--metrics-listen")
    try:
        token = read_token_file(token_file) if token_file is not None else None
        check_listen_address(*address, has_token=token is not None)
    except MetricsListenerError as error:
        fail(str(error))
    return address, token


def _metrics_url(address: tuple[str, int] | None) -> str | None:
    return f"http://{address[0]}:{address[1]}/metrics" if address else None


def _start_metrics(context: Any, address: tuple[str, int], token: str | None) -> tuple[Any, threading.Thread]:
    """Serve GET /metrics for Prometheus on its own listener (plain HTTP, optional bearer token)."""
    from backvault.api.metrics_listener import MetricsListenerError, start_metrics_listener

    try:
        return start_metrics_listener(context, address[0], address[1], token)
    except MetricsListenerError as error:
        fail(str(error))


def _start_api(context: Any, address: tuple[str, int]) -> tuple[Any, threading.Thread]:
    """Serve backvault.api.app.create_app(context) with uvicorn in a thread."""
    from backvault.api.app import create_app
    from backvault.api.serving import ListenError, serve_in_thread

    try:
        return serve_in_thread(create_app(context), address[0], address[1], name="api")
    except ListenError as error:
        fail(str(error))


class _WorkerPool:
    """Worker processes (spawned, so each has its own catalog connections), restarted if they die."""

    def __init__(self, data_dir: Path, database_url: str | None, count: int, level: str, log_format: str):
        self.arguments = (str(data_dir), database_url, level, log_format)
        self.count = count
        self.processes: list[BaseProcess | None] = [None] * count
        self.started_at = [0.0] * count
        self.spawn = multiprocessing.get_context("spawn")
        self.stopping = False

    def start(self) -> None:
        """Start every worker process."""
        for number in range(self.count):
            self._start(number)

    def _start(self, number: int) -> None:
        process = self.spawn.Process(
            target=worker_process_main,
            args=(*self.arguments, 1, f"{os.uname().nodename}:{os.getpid()}/w{number}"),
            name=f"backvault-worker-{number}",
        )
        process.start()
        self.processes[number] = process
        self.started_at[number] = time.monotonic()

    def supervise(self) -> None:
        """Restart worker processes that died (at most once every RESTART_INTERVAL_SECONDS each)."""
        for number, process in enumerate(self.processes):
            if process is None or process.is_alive() or self.stopping:
                continue
            if time.monotonic() - self.started_at[number] < RESTART_INTERVAL_SECONDS:
                continue
            logger.error("worker process %s exited with %s; restarting it", process.name, process.exitcode)
            self._start(number)

    def stop(self, timeout: float) -> None:
        """Ask every worker to stop (SIGTERM), wait up to ``timeout`` seconds, then kill what is left."""
        self.stopping = True
        alive = [process for process in self.processes if process is not None and process.is_alive()]
        for process in alive:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in alive:
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                logger.warning("worker process %s did not stop in time; killing it", process.name)
                process.kill()
                process.join()


def worker_process_main(
    data_dir: str, database_url: str | None, level: str, log_format: str, count: int, prefix: str
) -> None:
    """Entry point of a spawned worker process: logging, then the job engine's worker loop."""
    from backvault.control.logs import configure_logging
    from backvault.control.worker import run_worker_process

    configure_logging(level=level, json_lines=log_format == "json")
    run_worker_process(Path(data_dir), database_url, worker_count=count, worker_id_prefix=prefix)


# --- worker --------------------------------------------------------------------------------------


def worker(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    count: Annotated[int, typer.Option("--count", min=1, help="Worker threads in this process.")] = 1,
    database_url: DatabaseUrlOption = None,
    log_level: LogLevelOption = "INFO",
    log_format: LogFormatOption = "json",
) -> None:
    """Run extra workers against the catalog until SIGTERM/SIGINT (on this or another machine)."""
    from backvault.control.worker import run_worker_process

    _configure_logging(log_level, log_format)
    data_dir = data_dir.expanduser().absolute()
    context = open_context(data_dir, database_url)  # migrates and checks access before the loop starts
    context.catalog.dispose()
    logger.info("backvault worker started", extra={"data_dir": str(data_dir), "workers": count})
    run_worker_process(data_dir, database_url, worker_count=count)
    logger.info("backvault worker stopped")


# --- apply ---------------------------------------------------------------------------------------


def apply(
    file: Annotated[Path, typer.Option("--file", "-f", help="The YAML (or JSON) file to apply.")],
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    prune: Annotated[bool, typer.Option("--prune", help="Delete items the file does not declare.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Make locations, vaults, endpoints, notification sinks, plans and selections match FILE (idempotent)."""
    from backvault.control.apply import apply_config
    from backvault.domain.errors import BackupServiceError

    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as error:
        fail(f"cannot read {file}: {error.strerror}")
    except yaml.YAMLError as error:
        fail(f"{file} is not valid YAML: {error}")
    context = open_context(data_dir, database_url)
    try:
        report = apply_config(context, document, prune=prune, dry_run=dry_run)
    except BackupServiceError as error:
        fail(f"{file}: {error.message}")
    finally:
        context.catalog.dispose()
    if as_json:
        print_json(report.to_dict())
        return
    prefix = "would " if dry_run else ""
    for change in report.changes:
        detail = f" ({change.detail})" if change.detail else ""
        action = change.action
        if action in ("create", "update", "delete"):
            action = prefix + action
        out_console.print(f"{action:>16}  {change.kind:<9} {change.name}{detail}", highlight=False)
    done = {"create": "created", "update": "updated", "delete": "deleted"}
    counts = ", ".join(
        f"{count} {('to ' + action) if dry_run and action in done else done.get(action, action)}"
        for action, count in sorted(report.counts().items())
    )
    err_console.print(f"{'dry run: ' if dry_run else ''}{counts or 'nothing declared'}", highlight=False)
