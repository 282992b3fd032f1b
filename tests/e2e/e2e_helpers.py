"""Helpers of the end-to-end tests: a real API server (uvicorn in a thread or a ``backvault server``
process) and clients for it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from backvault.api.app import create_app
from backvault.api.serving import serving as serving_app
from backvault.control.catalog import open_catalog
from backvault.control.context import ServiceContext
from backvault.control.identity import bootstrap_admin
from backvault.control.locations import ensure_default_location
from backvault.control.secrets import load_master_secret

REGION = "local"


@dataclass
class ApiServer:
    """A running server: its URL, its services' context and the admin's key."""

    endpoint_url: str
    context: ServiceContext
    data_dir: Path
    access_key_id: str
    secret_access_key: str

    def client(self, access_key_id: str | None = None, secret_access_key: str | None = None) -> Any:
        """Return a boto3 backup client signed with the given key (the admin's by default)."""
        return boto3.session.Session().client(
            "backup",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=60
            ),
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        signed: bool = True,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> httpx.Response:
        """Send a raw HTTP request, SigV4-signed as botocore signs (unless signed=False)."""
        url = self.endpoint_url + path
        data = json.dumps(json_body).encode("utf-8") if json_body is not None else (content or b"")
        headers = {"Content-Type": "application/json"} if data else {}
        if signed:
            credentials = Credentials(
                access_key_id or self.access_key_id, secret_access_key or self.secret_access_key
            )
            prepared = AWSRequest(method=method, url=url, data=data, headers=headers)
            SigV4Auth(credentials, "backup", REGION).add_auth(prepared)
            headers = dict(prepared.headers.items())
        return httpx.request(method, url, content=data, headers=headers, timeout=30)


def free_port() -> int:
    """Ask the OS for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(context: ServiceContext, **app_options: Any) -> Iterator[str]:
    """Serve the API for ``context`` on a free port in a thread; yield its URL."""
    with serving_app(create_app(context, region=REGION, **app_options)) as url:
        yield url


@contextmanager
def running_server(database_url: str | None, data_dir: Path, **app_options: Any) -> Iterator[ApiServer]:
    """Open a catalog, bootstrap the admin and serve the API over it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    catalog = open_catalog(database_url, data_dir)
    try:
        context = ServiceContext(catalog=catalog, master_secret=load_master_secret(data_dir))
        ensure_default_location(context, data_dir / "vaults")
        created, key = bootstrap_admin(context)
        assert created and key is not None
        with serving(context, **app_options) as url:
            yield ApiServer(url, context, data_dir, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        catalog.dispose()


BACKVAULT = [sys.executable, "-m", "backvault.cli.main"]
SERVER_STARTED = "backvault server started"


def wait_for(what: str, check: Callable[[], Any], process: subprocess.Popen[bytes], log: Path) -> Any:
    """Poll check() until it returns something true; fail with the log if the process exits or 30 s pass."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(
                f"the server exited ({process.returncode}) before {what}:\n{log.read_text()}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")


@contextmanager
def server_process(
    data_dir: Path, log: Path, environment: dict[str, str], *options: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``backvault server`` (one worker, a fast scheduler, the API on a free port, plus options)
    until it says it started; yield the process and the API's URL; stop it with SIGTERM, which must
    end it cleanly."""
    port = free_port()
    command = [
        *BACKVAULT,
        "server",
        "--data-dir",
        str(data_dir),
        "--workers",
        "1",
        "--listen",
        f"127.0.0.1:{port}",
        "--tick-seconds",
        "0.5",
        "--lease-seconds",
        "5",
        *options,
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for("the server to start", lambda: SERVER_STARTED in log.read_text(), process, log)
        yield process, f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
