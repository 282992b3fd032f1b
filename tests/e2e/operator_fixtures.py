"""Helpers of the operator CLI tests: the operator commands in a Typer app, run in-process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from backvault.cli.operator_commands import register
from backvault.control.context import ServiceContext
from backvault.control.worker import Worker

CLIENT_VARIABLES = (
    "BACKVAULT_PROFILE",
    "BACKVAULT_ENDPOINT_URL",
    "BACKVAULT_REGION",
    "BACKVAULT_ACCESS_KEY_ID",
    "BACKVAULT_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def operator_app() -> typer.Typer:
    """Return a ``backvault`` app holding the operator commands (as main.py registers them)."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def root() -> None:
        """backvault (operator commands)."""

    register(app)
    return app


class OperatorCli:
    """Runs operator commands in-process with a private config directory."""

    def __init__(self, config_home: Path) -> None:
        self.config_home = config_home
        self.app = operator_app()
        self.runner = CliRunner()

    @property
    def config_file(self) -> Path:
        """The profile file the commands read."""
        return self.config_home / "backvault" / "config.toml"

    def run(self, *arguments: str, input: str | None = None, expect: int | None = 0) -> Result:
        """Run one command; check its exit code unless ``expect`` is None."""
        result = self.runner.invoke(self.app, list(arguments), input=input)
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"backvault {' '.join(arguments)} exited {result.exit_code} (expected {expect})\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nexception: {result.exception!r}"
            )
        return result

    def json(self, *arguments: str) -> Any:
        """Run a command with --json and return its parsed output."""
        return json.loads(self.run(*arguments, "--json").stdout)

    def configure(self, endpoint_url: str, access_key_id: str, secret: str, *extra: str) -> Result:
        """Write a profile; the secret goes through standard input, as an operator would pipe it."""
        return self.run(
            "configure",
            "--endpoint-url",
            endpoint_url,
            "--access-key-id",
            access_key_id,
            *extra,
            input=secret + "\n",
        )


@pytest.fixture
def operator_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OperatorCli:
    """The operator commands with XDG_CONFIG_HOME in a temporary directory and no client variables set."""
    for variable in CLIENT_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    config_home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    return OperatorCli(config_home)


@contextmanager
def worker_thread(context: ServiceContext) -> Iterator[None]:
    """Run a worker on ``context`` in a thread until the block ends."""
    stop = threading.Event()
    worker = Worker(context, lease_seconds=60, poll_seconds=0.1)
    thread = threading.Thread(
        target=worker.run_forever, args=(stop,), name="backvault-test-worker", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop"
