"""Helpers of the end-to-end tests: a real API server (uvicorn in a thread) and clients for it."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from backvault.api.app import create_app
from backvault.control.catalog import open_catalog
from backvault.control.context import ServiceContext
from backvault.control.identity import bootstrap_admin
from backvault.control.locations import ensure_default_location
from backvault.control.secrets import load_master_secret

REGION = "local"
POSTGRES_ADMIN_URL = os.environ.get(
    "BACKVAULT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)


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
    config = uvicorn.Config(
        create_app(context, region=REGION, **app_options),
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="backvault-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


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
