"""S3Store specifics: multipart uploads, retries through a fault-injecting proxy, errors."""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from backvault.storage.base import ObjectExistsError, ObjectNotFoundError, StorageError
from backvault.storage.s3 import S3Store
from backvault.storage.url import open_store

MIB = 1024 * 1024
CREDENTIALS: dict[str, Any] = {
    "region": "us-east-1",
    "access_key_id": "testing",
    "secret_access_key": "testing",
}
_ERROR_CODES = {
    "409": "ConditionalRequestConflict",
    "500": "InternalError",
    "501": "NotImplemented",
    "503": "SlowDown",
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}


def payload(size: int, seed: int = 0) -> bytes:
    """Return size reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def raw_client(endpoint: str) -> Any:
    """A plain boto3 client on the moto endpoint, to look behind the store's back."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def raw(s3_bucket: tuple[str, str]) -> Iterator[Any]:
    """Yield a raw boto3 client on the test bucket's endpoint."""
    client = raw_client(s3_bucket[0])
    try:
        yield client
    finally:
        client.close()


def _error_xml(code: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>injected</Message></Error>".encode()


class FaultProxy:
    """An HTTP server on 127.0.0.1 that spoils matching requests, then forwards the rest to moto.

    fault is one of: "409", "500", "501", "503" (error responses), "drop" (close without answering),
    "stall" (answer nothing for stall_seconds), "truncate" (send half the upstream body).
    """

    def __init__(
        self,
        upstream: str,
        fault: str,
        failures: int,
        matches: Callable[[BaseHTTPRequestHandler], bool] = lambda request: True,
        stall_seconds: float = 1.5,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.fault = fault
        self.failures_left = failures
        self.matches = matches
        self.stall_seconds = stall_seconds
        self.requests: list[str] = []
        self.faults_injected = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # Keep-alive and "Expect: 100-continue", as botocore uses them.

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # Clients hanging up on a stalled answer is expected here.

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        """Answer one request: inject the fault if it is due, else forward it."""
        assert "chunked" not in request.headers.get("Transfer-Encoding", ""), (
            "proxy cannot relay chunked bodies"
        )
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        with self.lock:
            self.requests.append(request.command)
            inject = self.failures_left > 0 and self.matches(request)
            if inject:
                self.failures_left -= 1
                self.faults_injected += 1
        if not inject:
            self.forward(request, body)
        elif self.fault in _ERROR_CODES:
            code = _ERROR_CODES[self.fault]
            error = _error_xml(code)
            request.send_response(int(self.fault))
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(error)))
            request.end_headers()
            request.wfile.write(error)
        elif self.fault == "drop":
            request.close_connection = True
        elif self.fault == "stall":
            time.sleep(self.stall_seconds)
            request.close_connection = True
        elif self.fault == "truncate":
            self.forward(request, body, truncate=True)
        else:
            raise AssertionError(f"unknown fault {self.fault}")

    def forward(self, request: BaseHTTPRequestHandler, body: bytes, truncate: bool = False) -> None:
        """Relay the request to moto and its answer back (the signature covers the Host we keep)."""
        connection = http.client.HTTPConnection(self.upstream.netloc, timeout=30)
        try:
            headers = {
                name: value for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP
            }
            connection.request(request.command, request.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            request.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    request.send_header(name, value)
            length = response.getheader("Content-Length") if request.command == "HEAD" else str(len(answer))
            if length is not None:
                request.send_header("Content-Length", length)
            request.end_headers()
            if truncate:
                request.wfile.write(answer[: len(answer) // 2])
                request.close_connection = True
            elif request.command != "HEAD":
                request.wfile.write(answer)
        finally:
            connection.close()


@pytest.fixture
def fault_proxy(s3_bucket: tuple[str, str]) -> Iterator[Callable[..., FaultProxy]]:
    """Yield a factory of fault proxies in front of the test bucket's moto server."""
    proxies: list[FaultProxy] = []

    def make(fault: str, failures: int, **options: Any) -> FaultProxy:
        proxy = FaultProxy(s3_bucket[0], fault, failures, **options)
        proxy.thread.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.server.shutdown()
        proxy.server.server_close()
        proxy.thread.join()


@pytest.fixture
def open_s3(s3_bucket: tuple[str, str]) -> Iterator[Callable[..., S3Store]]:
    """Yield a factory of S3Stores on the test bucket (default endpoint: moto), closed afterwards."""
    stores: list[S3Store] = []

    def make(endpoint: str | None = None, prefix: str = "repo", **options: Any) -> S3Store:
        store = S3Store(
            s3_bucket[1], prefix, endpoint_url=endpoint or s3_bucket[0], **{**CREDENTIALS, **options}
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


# -- layout and multipart -------------------------------------------------------------------


def test_objects_live_under_the_store_prefix(
    open_s3: Callable[..., S3Store], raw: Any, s3_bucket: tuple[str, str]
) -> None:
    store = open_s3(prefix="tenant/repo")
    store.put("data/ab/ab01", b"chunk")
    raw.put_object(Bucket=s3_bucket[1], Key="tenant/other", Body=b"not ours")
    raw.put_object(Bucket=s3_bucket[1], Key="tenant/repo/folder/", Body=b"")  # A console "folder".
    keys = [item["Key"] for item in raw.list_objects_v2(Bucket=s3_bucket[1])["Contents"]]
    assert "tenant/repo/data/ab/ab01" in keys
    assert [info.key for info in store.list()] == ["data/ab/ab01"]
    assert store.location == f"s3://{s3_bucket[1]}/tenant/repo"


def test_large_objects_use_a_multipart_upload(
    open_s3: Callable[..., S3Store], raw: Any, s3_bucket: tuple[str, str]
) -> None:
    store = open_s3(multipart_threshold=5 * MIB, multipart_chunk_size=5 * MIB)
    data = payload(12 * MIB, seed=7)
    store.put("packs/big", memoryview(data))
    assert store.get("packs/big") == data
    assert store.get_range("packs/big", 5 * MIB - 3, 6) == data[5 * MIB - 3 : 5 * MIB + 3]
    etag = raw.head_object(Bucket=s3_bucket[1], Key="repo/packs/big")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # Three parts: 5 + 5 + 2 MiB.
    store.put("packs/small", data[: 5 * MIB - 1])
    assert "-" not in raw.head_object(Bucket=s3_bucket[1], Key="repo/packs/small")["ETag"]


def test_multipart_put_new_refuses_an_existing_key_and_cleans_up(
    open_s3: Callable[..., S3Store], raw: Any, s3_bucket: tuple[str, str]
) -> None:
    store = open_s3(multipart_threshold=5 * MIB, multipart_chunk_size=5 * MIB)
    first, second = payload(11 * MIB, seed=8), payload(11 * MIB, seed=9)
    store.put_new("packs/once", first)
    with pytest.raises(ObjectExistsError):
        store.put_new("packs/once", second)
    assert store.get("packs/once") == first
    assert raw.list_multipart_uploads(Bucket=s3_bucket[1]).get("Uploads", []) == []


def test_storage_class_is_applied_to_single_and_multipart_puts(
    open_s3: Callable[..., S3Store], raw: Any, s3_bucket: tuple[str, str]
) -> None:
    store = open_s3(storage_class="STANDARD_IA", multipart_threshold=5 * MIB, multipart_chunk_size=5 * MIB)
    store.put("small", b"cold")
    store.put("large", payload(6 * MIB))
    for key in ("repo/small", "repo/large"):
        assert raw.head_object(Bucket=s3_bucket[1], Key=key)["StorageClass"] == "STANDARD_IA"


def test_put_new_without_conditional_writes_still_refuses_existing_keys(
    open_s3: Callable[..., S3Store],
) -> None:
    store = open_s3(conditional_writes=False)
    store.put_new("locks/a", b"first")
    with pytest.raises(ObjectExistsError):
        store.put_new("locks/a", b"second")
    assert store.get("locks/a") == b"first"


def test_put_new_falls_back_when_the_endpoint_lacks_conditional_writes(
    open_s3: Callable[..., S3Store], fault_proxy: Callable[..., FaultProxy]
) -> None:
    conditional = lambda request: "If-None-Match" in request.headers  # noqa: E731
    proxy = fault_proxy("501", failures=100, matches=conditional)
    store = open_s3(endpoint=proxy.url)
    store.put_new("locks/a", b"first")
    with pytest.raises(ObjectExistsError):
        store.put_new("locks/a", b"second")
    assert store.get("locks/a") == b"first"
    assert proxy.faults_injected == 1  # The store remembered and stopped sending If-None-Match.


def test_put_new_retries_a_conflict_with_a_concurrent_conditional_write(
    open_s3: Callable[..., S3Store], fault_proxy: Callable[..., FaultProxy]
) -> None:
    conditional = lambda request: "If-None-Match" in request.headers  # noqa: E731
    proxy = fault_proxy("409", failures=2, matches=conditional)
    store = open_s3(endpoint=proxy.url)
    store.put_new("locks/contended", b"mine")
    assert proxy.faults_injected == 2
    assert store.get("locks/contended") == b"mine"


# -- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "503", "drop", "stall"])
def test_writes_succeed_after_transient_failures(
    open_s3: Callable[..., S3Store], fault_proxy: Callable[..., FaultProxy], fault: str
) -> None:
    proxy = fault_proxy(fault, failures=2)
    store = open_s3(endpoint=proxy.url, max_attempts=4, read_timeout=0.5)
    data = payload(100_000, seed=10)
    store.put("packs/retried", memoryview(data))
    assert proxy.requests == ["PUT", "PUT", "PUT"]
    assert open_s3().get("packs/retried") == data


@pytest.mark.parametrize("fault", ["500", "drop", "stall", "truncate"])
def test_reads_succeed_after_transient_failures(
    open_s3: Callable[..., S3Store], fault_proxy: Callable[..., FaultProxy], fault: str
) -> None:
    data = payload(200_000, seed=11)
    open_s3().put("packs/read", data)
    proxy = fault_proxy(fault, failures=2)
    store = open_s3(endpoint=proxy.url, max_attempts=4, read_timeout=0.5)
    assert store.get("packs/read") == data
    assert proxy.requests == ["GET", "GET", "GET"]
    assert proxy.faults_injected == 2


def test_a_permanently_failing_endpoint_raises_after_max_attempts(
    open_s3: Callable[..., S3Store], fault_proxy: Callable[..., FaultProxy], s3_bucket: tuple[str, str]
) -> None:
    proxy = fault_proxy("500", failures=1000)
    store = open_s3(endpoint=proxy.url, max_attempts=3)
    with pytest.raises(StorageError) as caught:
        store.put("packs/doomed", b"data")
    assert len(proxy.requests) == 3
    message = str(caught.value)
    assert (
        "put" in message
        and f"s3://{s3_bucket[1]}/repo/packs/doomed" in message
        and "InternalError" in message
    )
    assert not isinstance(caught.value, ObjectNotFoundError)


def test_a_permanently_truncating_endpoint_raises_after_max_attempts(
    open_s3: Callable[..., S3Store], fault_proxy: Callable[..., FaultProxy]
) -> None:
    open_s3().put("packs/read", payload(50_000))
    proxy = fault_proxy("truncate", failures=1000)
    store = open_s3(endpoint=proxy.url, max_attempts=3)
    with pytest.raises(StorageError, match=r"get of .*packs/read"):
        store.get("packs/read")
    assert len(proxy.requests) == 3


# -- errors ---------------------------------------------------------------------------------


def test_a_missing_bucket_is_reported_clearly(moto_endpoint: str) -> None:
    store = S3Store("no-such-bucket-for-backvault", endpoint_url=moto_endpoint, **CREDENTIALS)
    try:
        operations: list[Callable[[], object]] = [
            lambda: store.put("k", b"x"),
            lambda: store.put_new("k", b"x"),
            lambda: store.get("k"),
            lambda: store.get_range("k", 0, 1),
            lambda: store.stat("k"),
            lambda: store.exists("k"),
            lambda: store.delete("k"),
            lambda: list(store.list()),
        ]
        for operation in operations:
            with pytest.raises(
                StorageError, match="bucket 'no-such-bucket-for-backvault' does not exist"
            ) as caught:
                operation()
            assert not isinstance(caught.value, ObjectNotFoundError)
    finally:
        store.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("where", ["unreachable", "missing-bucket"])
def test_secrets_never_appear_in_errors_or_repr(moto_endpoint: str, where: str) -> None:
    secret, token = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET", "FwoGZXIvYXdzEXAMPLE-SESSION-TOKEN"
    endpoint = f"http://127.0.0.1:{_closed_port()}" if where == "unreachable" else moto_endpoint
    store = S3Store(
        "no-such-bucket-for-backvault",
        "p",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="AKIAEXAMPLEKEYID",
        secret_access_key=secret,
        session_token=token,
        max_attempts=2,
        connect_timeout=1,
    )
    try:
        with pytest.raises(StorageError) as caught:
            store.put("k", b"x")
        texts = [
            str(caught.value),
            repr(caught.value),
            "".join(traceback.format_exception(caught.value)),
            repr(store),
        ]
        for text in texts:
            assert secret not in text and token not in text
        assert "k" in str(caught.value) and "no-such-bucket-for-backvault" in str(caught.value)
    finally:
        store.close()


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="multipart_chunk_size"):
        S3Store("bucket", multipart_chunk_size=1024)
    with pytest.raises(ValueError, match="bucket"):
        S3Store("")
    with pytest.raises(ValueError, match="max_attempts"):
        S3Store("bucket", max_attempts=0)


def test_adaptive_retry_mode_works(open_s3: Callable[..., S3Store]) -> None:
    store = open_s3(retry_mode="adaptive")
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_open_store_uses_the_endpoint_variable_and_aws_credential_variables(
    s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("BACKVAULT_S3_ENDPOINT", endpoint)
    store = open_store(f"s3://{bucket}/via-url", region="us-east-1")
    assert isinstance(store, S3Store)
    try:
        store.put("k", b"through open_store")
        assert store.get("k") == b"through open_store"
        with pytest.raises(ObjectNotFoundError):
            store.get("missing")
    finally:
        store.close()
    client = raw_client(endpoint)
    try:
        response = client.get_object(Bucket=bucket, Key="via-url/k")
        with response["Body"] as body:
            assert body.read() == b"through open_store"
    finally:
        client.close()
