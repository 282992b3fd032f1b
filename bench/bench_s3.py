"""Benchmark the S3 connector: a first backup of many small objects, then one after 1% changed.

Runs moto's S3 server on 127.0.0.1 (or uses --endpoint-url), fills a bucket with --objects small
objects (default 10,000; 1-16 KiB, half random, half text), backs it up into a fresh local
repository, rewrites --changed-percent of the objects, backs up again, and (with --restore)
restores the second point into a new bucket. Reports wall time, objects downloaded (GetObject calls
counted at the botocore layer), bytes read and bytes stored.

Usage:
  .venv/bin/python bench/bench_s3.py [--objects 10000] [--changed-percent 1] [--restore] [--json out.json]

Not part of `make test`. Repository setup (key derivation) is outside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from backvault.domain.arn import ResourceType
from backvault.repo.repository import Repository
from backvault.sources.base import BackupRequest, EndpointSpec, RestoreRequest
from backvault.sources.s3 import S3Connector
from backvault.storage.local import LocalStore

PASSWORD = "bench-passphrase"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}


class GetCounter:
    """A session factory counting GetObject calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Any:
        session = boto3.session.Session()
        session.events.register("before-call.s3.GetObject", self._count)
        return session

    def _count(self, **_kwargs: Any) -> None:
        self.calls += 1


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's server on a free port for the benchmark."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def object_body(number: int, generation: int) -> bytes:
    """1-16 KiB: even numbers random bytes, odd numbers compressible text."""
    rng = random.Random(number * 1000 + generation)
    size = rng.randint(1024, 16 * 1024)
    if number % 2 == 0:
        return rng.randbytes(size)
    line = f"object {number} generation {generation} ".encode()
    return (line * (size // len(line) + 1))[:size]


def upload(client: Any, bucket: str, numbers: list[int], generation: int, threads: int = 16) -> None:
    """Put the given objects (key = number) at this generation."""

    def put(number: int) -> None:
        client.put_object(
            Bucket=bucket,
            Key=f"data/{number // 1000:03d}/object-{number:06d}.bin",
            Body=object_body(number, generation),
            ContentType="application/octet-stream",
            Metadata={"generation": str(generation)},
        )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, numbers))


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """Run and time one step."""
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--changed-percent", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=8, help="download threads of the backup")
    parser.add_argument(
        "--object-tags", default="refresh", choices=["refresh", "reuse", "skip"], help="the ObjectTags option"
    )
    parser.add_argument("--endpoint-url", help="use this S3 endpoint instead of a private moto server")
    parser.add_argument("--restore", action="store_true", help="also time a restore of the second point")
    parser.add_argument("--json", type=Path, help="write the results here too")
    arguments = parser.parse_args()
    if arguments.endpoint_url:
        run(arguments, arguments.endpoint_url)
    else:
        with moto_server() as endpoint_url:
            run(arguments, endpoint_url)


def run(arguments: argparse.Namespace, endpoint_url: str) -> None:
    """The benchmark steps against one endpoint."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=CREDENTIALS["aws_secret_access_key"],
    )
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    numbers = list(range(arguments.objects))
    fill_seconds, _ = timed(lambda: upload(client, bucket, numbers, 0))
    print(f"filled {bucket} with {arguments.objects} objects in {fill_seconds:.1f} s", flush=True)

    endpoint = EndpointSpec(
        "bench", ResourceType.S3, {"endpoint_url": endpoint_url}, CREDENTIALS, {"purpose": "bench"}
    )
    counter = GetCounter()
    connector = S3Connector(session_factory=counter)
    options = {"Threads": str(arguments.threads), "ObjectTags": arguments.object_tags}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as workdir:
        store = LocalStore(Path(workdir) / "repository")
        Repository.init(store, PASSWORD)
        repository = Repository.open(store, PASSWORD)

        def backup(step: str) -> Any:
            counter.calls = 0
            seconds, snapshot = timed(
                lambda: connector.backup(BackupRequest(endpoint, bucket, repository, options=options))
            )
            results.append(
                {
                    "step": step,
                    "seconds": round(seconds, 2),
                    "objects": snapshot.source["objects"],
                    "downloaded": counter.calls,
                    "reused": snapshot.source["objects_reused"],
                    "bytes_downloaded": snapshot.source["bytes_downloaded"],
                    "bytes_stored": snapshot.summary["bytes_stored"],
                    "objects_per_second": round(snapshot.source["objects"] / seconds),
                }
            )
            return snapshot

        backup("first backup")
        changed = random.Random(7).sample(
            numbers, max(1, round(arguments.objects * arguments.changed_percent / 100))
        )
        upload(client, bucket, changed, 1)
        second = backup(f"after {len(changed)} objects changed")
        backup("no change")
        if arguments.restore:
            target = f"bench-restore-{uuid.uuid4().hex[:8]}"
            seconds, outcome = timed(
                lambda: connector.restore(
                    RestoreRequest(endpoint, bucket, repository, second, {"TargetBucket": target})
                )
            )
            results.append(
                {
                    "step": "restore second point",
                    "seconds": round(seconds, 2),
                    "objects": arguments.objects,
                    "bytes_downloaded": outcome.bytes_restored,
                    "objects_per_second": round(arguments.objects / seconds),
                }
            )
        repository_bytes = sum(
            path.stat().st_size for path in (Path(workdir) / "repository").rglob("*") if path.is_file()
        )

    print(
        f"\nS3 connector, {arguments.objects} objects, ObjectTags={arguments.object_tags}, "
        f"{arguments.threads} threads, {os.cpu_count()} CPUs, moto server on 127.0.0.1"
    )
    header = (
        f"{'step':<32} {'time s':>8} {'obj/s':>7} {'downloaded':>10} {'reused':>7} {'read MiB':>9} "
        f"{'stored MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['step']:<32} {row['seconds']:>8.2f} {row['objects_per_second']:>7} "
            f"{row.get('downloaded', '-'):>10} {row.get('reused', '-'):>7} "
            f"{row['bytes_downloaded'] / 2**20:>9.2f} {row.get('bytes_stored', 0) / 2**20:>10.2f}"
        )
    print(f"repository size: {repository_bytes / 2**20:.2f} MiB")
    if arguments.json:
        arguments.json.write_text(
            json.dumps({"results": results, "repository_bytes": repository_bytes}, indent=2)
        )


if __name__ == "__main__":
    main()
