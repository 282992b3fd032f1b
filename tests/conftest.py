"""Shared fixtures: a moto S3 server on 127.0.0.1 and fresh buckets on it, and the catalog backends.

Catalog tests run on SQLite and on PostgreSQL (``database_url``). PostgreSQL is a throwaway database
``backvault_test_<random>`` created for the session on ``$BACKVAULT_TEST_POSTGRES_URL`` (default: the
local server, user postgres, trust auth) and dropped at the end; each test gets its own schema in it.
An unreachable server fails the tests instead of skipping them: half the contract would otherwise go
untested without anyone noticing.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import OperationalError

TEST_REGION = "us-east-1"
TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"


def _free_port() -> int:
    """Ask the OS for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    """Tell whether an HTTP server answers on 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run moto's S3-compatible server for the session and yield its endpoint URL."""
    port = _free_port()
    log_path: Path = tmp_path_factory.mktemp("moto") / "server.log"
    # A log file instead of a pipe: nobody drains a pipe, and a full one would block moto.
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not answer within 30 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """Create a fresh bucket on the moto server and yield (endpoint, bucket name).

    The AWS credential variables point at the dummy test credentials for the test, so
    code that relies on boto3's default chain also reaches moto, and never real AWS keys.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    for variable in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    bucket = f"bv-test-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=TEST_REGION,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
    )
    try:
        client.create_bucket(Bucket=bucket)
        yield moto_endpoint, bucket
        # Empty and drop the bucket so large test objects do not pile up in moto's memory.
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


POSTGRES_ADMIN_URL = os.environ.get(
    "BACKVAULT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[tuple[URL, Engine]]:
    """Create the session's throwaway PostgreSQL database; yield its URL and an engine on it."""
    admin_url = make_url(POSTGRES_ADMIN_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {admin_url.render_as_string()}: {error.orig}\n"
            "The catalog tests run on SQLite AND PostgreSQL. Start a local PostgreSQL with trust auth for "
            "user postgres on 127.0.0.1:5432 (`make test` does), or point BACKVAULT_TEST_POSTGRES_URL at "
            "one.",
            pytrace=False,
        )
    name = f"backvault_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        yield url, engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Yield the catalog URL of one backend: None (the SQLite default in the data dir) or a PG schema."""
    if request.param == "sqlite":
        yield None
        return
    url, engine = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with engine.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
