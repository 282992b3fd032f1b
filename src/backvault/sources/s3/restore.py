"""Restore a bucket snapshot into a bucket and prefix, and validate a restored copy.

Restore metadata::

    TargetBucket   the bucket to write into (alias: DestinationBucketName); default: the original
    TargetPrefix   prepended to every key (default "")
    NewBucket      "true" (default): create the bucket when it does not exist
    Overwrite      "true": write even when objects already exist under the target prefix
                   (objects with the same key are replaced; others are left alone)

Small objects are restored in batches: their chunks are read pack by pack in one pass, then the
bodies are uploaded by a pool of threads. Large objects are streamed with a multipart upload.
Each body's sha256 is checked against the manifest before it is written; content type, user
metadata, the other headers and the object tags are recreated.

The restored resource is named ``BUCKET`` or ``BUCKET/PREFIX`` (validation and delete_restored take
the same form).
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.tree import Node
from backvault.sources.base import (
    ConnectorError,
    EndpointSpec,
    Heartbeat,
    RestoreOutcome,
    RestoreRequest,
    ValidationOutcome,
)
from backvault.sources.s3 import manifest
from backvault.sources.s3.aws import AWS_ERRORS, error_code, explain
from backvault.sources.s3.manifest import ObjectRecord
from backvault.sources.s3.streaming import ProgressReader
from backvault.sources.streams import open_content

_BATCH_BYTES = 32 * 1024 * 1024
_BATCH_OBJECTS = 256
LARGE_OBJECT = 16 * 1024 * 1024
_IN_FLIGHT_BYTES = 64 * 1024 * 1024
_SHOWN_PROBLEMS = 20
# How many object bodies validation downloads and hashes (all of them in a smaller bucket).
VALIDATION_SAMPLE = 100


def split_target(resource_name: str) -> tuple[str, str]:
    """``BUCKET[/PREFIX]`` -> (bucket, prefix)."""
    bucket, _, prefix = resource_name.partition("/")
    return bucket, prefix


def _flag(metadata: dict[str, str], name: str, default: bool) -> bool:
    value = metadata.get(name, "true" if default else "false").strip().lower()
    if value not in ("true", "false"):
        raise ConnectorError(f'Restore metadata {name}={value!r} is not valid: use "true" or "false".')
    return value == "true"


@dataclass
class _Pending:
    """Objects gathered for one batch upload."""

    items: list[tuple[ObjectRecord, Node]] = field(default_factory=list)
    size: int = 0


class BucketRestore:
    """One restore run; ``run`` returns the outcome."""

    def __init__(self, client: Any, request: RestoreRequest) -> None:
        self.client = client
        self.request = request
        self.repository = request.repository
        self.endpoint = request.endpoint
        metadata = dict(request.metadata)
        self.bucket = (
            metadata.get("TargetBucket") or metadata.get("DestinationBucketName") or request.resource_name
        )
        self.prefix = metadata.get("TargetPrefix", "")
        self.new_bucket = _flag(metadata, "NewBucket", True)
        self.overwrite = _flag(metadata, "Overwrite", False)
        self.problems: list[str] = []
        self.bytes_restored = 0
        self.threads = 8
        self._in_flight: deque[tuple[Future[None], int]] = deque()
        self._in_flight_bytes = 0
        self._counter_lock = threading.Lock()

    def run(self) -> RestoreOutcome:
        """Check the target, then upload every object in the manifest."""
        records = list(manifest.iter_records(self.repository, self.request.snapshot))
        nodes = manifest.content_nodes(self.repository, self.request.snapshot)
        self._prepare_target()
        pending = _Pending()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="s3-put") as pool:
            try:
                for record in records:
                    node = nodes.get(record.path)
                    if node is None:
                        self.problems.append(f"{record.key}: the snapshot has no body at {record.path}")
                        continue
                    if record.size > LARGE_OBJECT:
                        self._upload_large(record, node)
                        continue
                    pending.items.append((record, node))
                    pending.size += record.size
                    if pending.size >= _BATCH_BYTES or len(pending.items) >= _BATCH_OBJECTS:
                        self._flush(pool, pending)
                        pending = _Pending()
                self._flush(pool, pending)
                while self._in_flight:
                    self._in_flight.popleft()[0].result()
            except BaseException:
                for upload, _ in self._in_flight:
                    upload.cancel()
                raise
        name = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return RestoreOutcome(resource_name=name, bytes_restored=self.bytes_restored, problems=self.problems)

    def _prepare_target(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            exists = True
        except AWS_ERRORS as error:
            if error_code(error) not in ("404", "NoSuchBucket", "NotFound"):
                raise explain(error, self.endpoint, f"opening bucket {self.bucket!r}") from None
            exists = False
        if not exists:
            if not self.new_bucket:
                raise ConnectorError(
                    f'Bucket {self.bucket!r} does not exist: create it, or set NewBucket to "true".'
                )
            self._create_bucket()
            return
        if self.overwrite:
            return
        try:
            listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"listing bucket {self.bucket!r}") from None
        if listing.get("KeyCount", 0):
            where = f"bucket {self.bucket!r}" + (f" under prefix {self.prefix!r}" if self.prefix else "")
            raise ConnectorError(
                f"Refusing to restore into {where}: it already holds objects. Choose another "
                'TargetBucket or TargetPrefix, or set Overwrite to "true".'
            )

    def _create_bucket(self) -> None:
        region = self.client.meta.region_name
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**arguments)
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"creating bucket {self.bucket!r}") from None

    # --- uploads ---------------------------------------------------------------------------

    def _flush(self, pool: ThreadPoolExecutor, pending: _Pending) -> None:
        """Read a batch's chunks in one pass (pack order), then hand each body to the pool."""
        if not pending.items:
            return
        wanted = [chunk for _, node in pending.items for chunk in node.content]
        chunks: dict[str, bytes] = {}
        damaged: dict[str, str] = {}
        for chunk_id, data in self.repository.iter_chunks(wanted):
            if isinstance(data, DamagedDataError):
                damaged[chunk_id] = str(data)
            else:
                chunks[chunk_id] = data
        for record, node in pending.items:
            broken = [damaged[chunk] for chunk in node.content if chunk in damaged]
            if broken:
                self.problems.append(
                    f"{record.key}: not restored, damaged data in the repository ({broken[0]})"
                )
                continue
            body = b"".join(chunks[chunk] for chunk in node.content)
            if record.sha256 and hashlib.sha256(body).hexdigest() != record.sha256:
                self.problems.append(f"{record.key}: not restored, its content does not match the manifest")
                continue
            self._in_flight.append((pool.submit(self._put, record, body), len(body)))
            self._in_flight_bytes += len(body)
            # Bodies waiting for the pool are held in memory: bound them.
            while self._in_flight_bytes > _IN_FLIGHT_BYTES:
                upload, size = self._in_flight.popleft()
                upload.result()
                self._in_flight_bytes -= size
        self.request.heartbeat(self.bytes_restored)

    def _put(self, record: ObjectRecord, body: bytes) -> None:
        arguments = self._object_arguments(record)
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + record.key, Body=body, **arguments)
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"writing {self.prefix + record.key!r}") from None
        with self._counter_lock:
            self.bytes_restored += len(body)

    def _upload_large(self, record: ObjectRecord, node: Node) -> None:
        reader = ProgressReader(
            open_content(self.repository, node), self.request.heartbeat, base=self.bytes_restored
        )
        arguments = self._object_arguments(record)
        try:
            self.client.upload_fileobj(reader, self.bucket, self.prefix + record.key, ExtraArgs=arguments)
        except DamagedDataError as error:
            self.problems.append(
                f"{record.key}: not fully restored, damaged data in the repository ({error})"
            )
            return
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"writing {self.prefix + record.key!r}") from None
        if record.sha256 and reader.sha256.hexdigest() != record.sha256:
            self.problems.append(f"{record.key}: the restored content does not match the manifest")
        with self._counter_lock:
            self.bytes_restored += reader.bytes_read

    @staticmethod
    def _object_arguments(record: ObjectRecord) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if record.content_type:
            arguments["ContentType"] = record.content_type
        if record.metadata:
            arguments["Metadata"] = dict(record.metadata)
        for name, value in record.headers.items():
            if name == "Expires":
                try:
                    arguments["Expires"] = parsedate_to_datetime(value)
                except (TypeError, ValueError):
                    continue  # an unparsable Expires header is dropped rather than failing the restore
            else:
                arguments[name] = value
        if record.tags:
            arguments["Tagging"] = urlencode(sorted(record.tags.items()))
        return arguments


# --- validation -------------------------------------------------------------------------------


def validate_bucket(
    client: Any,
    endpoint: EndpointSpec,
    repository: Repository,
    records: list[ObjectRecord],
    resource_name: str,
    heartbeat: Heartbeat,
) -> ValidationOutcome:
    """Compare a restored bucket/prefix with the manifest: count, sizes, ETags, sampled sha256 and tags."""
    bucket, prefix = split_target(resource_name)
    try:
        found = dict(_list(client, bucket, prefix))
    except AWS_ERRORS as error:
        raise explain(error, endpoint, f"listing bucket {bucket!r}") from None
    problems: list[str] = []
    for record in records:
        listed = found.get(prefix + record.key)
        if listed is None:
            problems.append(f"{record.key}: missing")
        elif listed["Size"] != record.size:
            problems.append(f"{record.key}: size {listed['Size']}, expected {record.size}")
        elif _single_part(record.etag) and _single_part(listed["ETag"]) and listed["ETag"] != record.etag:
            problems.append(f"{record.key}: ETag {listed['ETag']}, expected {record.etag}")
    expected_keys = {prefix + record.key for record in records}
    extra = sorted(set(found) - expected_keys)
    problems.extend(f"{key[len(prefix) :]}: not in the backup" for key in extra[:_SHOWN_PROBLEMS])
    sampled = manifest.sample_keys((record.key for record in records), VALIDATION_SAMPLE)
    hashed = 0
    for record in records:
        if record.key not in sampled or (prefix + record.key) not in found:
            continue
        problems.extend(_check_body(client, endpoint, bucket, prefix, record))
        hashed += 1
        heartbeat(hashed)
    details = {
        "Bucket": bucket,
        "Prefix": prefix,
        "ExpectedObjects": len(records),
        "FoundObjects": len(found),
        "ObjectsHashed": hashed,
        "Problems": problems[:_SHOWN_PROBLEMS],
    }
    if problems:
        return ValidationOutcome(False, f"{len(problems)} problem(s): {problems[0]}", details)
    return ValidationOutcome(
        True, f"{len(records)} objects match the manifest ({hashed} bodies hashed)", details
    )


def _check_body(
    client: Any, endpoint: EndpointSpec, bucket: str, prefix: str, record: ObjectRecord
) -> list[str]:
    key = prefix + record.key
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        digest = hashlib.sha256()
        for piece in response["Body"].iter_chunks(1 << 20):
            digest.update(piece)
        tag_set = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
    except AWS_ERRORS as error:
        raise explain(error, endpoint, f"reading {key!r}") from None
    problems = []
    if record.sha256 and digest.hexdigest() != record.sha256:
        problems.append(f"{record.key}: content differs from the backup (sha256)")
    if dict(response.get("Metadata") or {}) != record.metadata:
        problems.append(f"{record.key}: user metadata differs from the backup")
    if {tag["Key"]: tag["Value"] for tag in tag_set} != record.tags:
        problems.append(f"{record.key}: tags differ from the backup")
    return problems


def _list(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], item


def _single_part(etag: str) -> bool:
    return "-" not in etag
