"""Back up one bucket: every object's latest version with its metadata and tags, incrementally.

Objects are listed with ListObjectsV2. An object whose ETag, size and LastModified equal its record
in the previous snapshot of the same bucket (same endpoint) is not downloaded again: its chunk list
is reused from that snapshot, as long as every chunk is still in the repository. Everything else is
fetched with GetObject: small bodies by a pool of threads (latency dominates small objects), large
ones streamed straight from the response into the repository, never to local disk.

Backup options (``BackupRequest.options``)::

    FullBackup   "true": download every object even when unchanged
    ObjectTags   "refresh" (default: GetObjectTagging for every object, as tags change without
                 changing LastModified), "reuse" (unchanged objects keep their recorded tags) or
                 "skip" (no tags at all)
    Threads      download threads (default 8)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node
from backvault.sources.base import BackupRequest, ConnectorError
from backvault.sources.s3 import manifest
from backvault.sources.s3.aws import AWS_ERRORS, error_code, explain
from backvault.sources.s3.manifest import ObjectRecord, PathAllocator
from backvault.sources.s3.streaming import HEARTBEAT_SECONDS, IteratorReader, ProgressReader, buffered
from backvault.sources.streams import StreamSnapshot

# Bodies up to this size are fetched whole by the pool; larger ones are streamed by the main thread.
SMALL_OBJECT = 8 * 1024 * 1024
_HEADER_FIELDS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")
_MISSING_CODES = {"NoSuchKey", "404"}
# Per-object refusals: recorded in the snapshot's errors (partial) instead of failing the backup.
_SKIPPED_CODES = {"AccessDenied", "403", "InvalidObjectState"}


@dataclass
class BackupCounts:
    """What one bucket backup did."""

    objects: int = 0
    downloaded: int = 0
    reused: int = 0
    vanished: int = 0
    bytes_downloaded: int = 0


@dataclass
class _Fetched:
    """A small object's body and headers, fetched by a pool thread."""

    data: bytes | None  # None: the object vanished since the listing, or could not be read
    response: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] | None = None
    error: str = ""  # why it could not be read (the snapshot is then partial)


@dataclass
class _Parent:
    """The previous snapshot of this bucket: records by key, body nodes by path."""

    snapshot: Snapshot
    records: dict[str, ObjectRecord]
    nodes: dict[str, Node]


def find_parent(repository: Repository, endpoint_name: str, bucket: str) -> _Parent | None:
    """The newest earlier snapshot of this bucket from this endpoint, with its records and nodes."""
    candidates = [
        snapshot
        for snapshot in repository.list_snapshots()
        if snapshot.source.get("type") == "S3"
        and snapshot.source.get("endpoint") == endpoint_name
        and snapshot.source.get("bucket") == bucket
    ]
    if not candidates:
        return None
    snapshot = candidates[-1]
    try:
        records = {record.key: record for record in manifest.iter_records(repository, snapshot)}
        nodes = manifest.content_nodes(repository, snapshot)
    except (DamagedDataError, ConnectorError, ValueError, KeyError, TypeError):
        return None  # an unreadable parent only costs a full download, never a failed backup
    return _Parent(snapshot, records, nodes)


def add_existing(builder: StreamSnapshot, path: str, node: Node, mtime: datetime) -> None:
    """Place a file whose chunks are already stored (an unchanged object) into the snapshot."""
    builder.add_existing(path, node.content, node.size, mtime=mtime)
    builder.bytes_read += node.size


class BucketBackup:
    """One bucket backup run; ``run`` returns the committed snapshot."""

    def __init__(self, client: Any, request: BackupRequest) -> None:
        self.client = client
        self.request = request
        self.bucket = request.resource_name
        self.endpoint = request.endpoint
        self.counts = BackupCounts()
        options = request.options
        self.full = options.get("FullBackup", "false").lower() == "true"
        self.tag_mode = options.get("ObjectTags", "refresh").lower()
        if self.tag_mode not in ("refresh", "reuse", "skip"):
            raise ConnectorError(
                f"BackupOptions ObjectTags={self.tag_mode!r} is not valid: use refresh, reuse or skip."
            )
        try:
            self.threads = max(1, int(options.get("Threads", "8")))
        except ValueError:
            raise ConnectorError('BackupOptions Threads must be a whole number, e.g. "8".') from None
        self.errors: list[tuple[str, str]] = []
        self._last_beat = time.monotonic()

    def run(self) -> Snapshot:
        """List, fetch or reuse every object, then write the manifest and commit."""
        bucket_document = self._describe_bucket()
        repository = self.request.repository
        parent = None if self.full else find_parent(repository, self.endpoint.name, self.bucket)
        records: list[ObjectRecord] = []
        paths = PathAllocator()
        with (
            StreamSnapshot(repository, heartbeat=self.request.heartbeat) as builder,
            ThreadPoolExecutor(self.threads, thread_name_prefix="s3-get") as pool,
        ):
            window: deque[tuple[dict[str, Any], str, Future[_Fetched] | None, ObjectRecord | None]]
            window = deque()
            try:
                for item in self._list_objects():
                    path = paths.allocate(item["Key"])
                    reusable = self._reusable(parent, item, repository)
                    future: Future[_Fetched] | None = None
                    if reusable is None and item["Size"] <= SMALL_OBJECT:
                        future = pool.submit(self._fetch_small, item["Key"])
                    elif reusable is not None and self.tag_mode == "refresh":
                        future = pool.submit(self._fetch_tags_only, item["Key"])
                    window.append((item, path, future, reusable))
                    while len(window) > self.threads * 4:
                        self._finish(builder, parent, records, *window.popleft())
                while window:
                    self._finish(builder, parent, records, *window.popleft())
            except BaseException:
                for _, _, pending, _ in window:
                    if pending is not None:
                        pending.cancel()
                raise
            for key, message in self.errors:
                builder.add_error(key, message)
            self.counts.objects = len(records)
            bucket_document["objects"] = len(records)
            bucket_document["bytes"] = sum(record.size for record in records)
            builder.add_stream(manifest.MANIFEST_PATH, buffered(IteratorReader(r.to_line() for r in records)))
            builder.add_bytes(manifest.BUCKET_PATH, json.dumps(bucket_document, sort_keys=True).encode())
            source = {
                "type": "S3",
                "format": manifest.FORMAT,
                "endpoint": self.endpoint.name,
                "bucket": self.bucket,
                "parent": parent.snapshot.id if parent else None,
                "objects": self.counts.objects,
                "objects_downloaded": self.counts.downloaded,
                "objects_reused": self.counts.reused,
                "objects_vanished": self.counts.vanished,
                "bytes_downloaded": self.counts.bytes_downloaded,
            }
            return builder.commit(paths=[self.bucket], source=source, tags=self.request.tags)

    # --- listing and deciding --------------------------------------------------------------

    def _describe_bucket(self) -> dict[str, Any]:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except AWS_ERRORS as error:
            if error_code(error) in ("404", "NoSuchBucket", "NotFound"):
                raise ConnectorError(
                    f"Bucket {self.bucket!r} does not exist on endpoint {self.endpoint.name!r}; "
                    "run discovery again to refresh the resource list."
                ) from None
            raise explain(error, self.endpoint, f"opening bucket {self.bucket!r}") from None
        document: dict[str, Any] = {"format": manifest.FORMAT, "bucket": self.bucket}
        try:
            document["tags"] = bucket_tags(self.client, self.bucket)
            location = self.client.get_bucket_location(Bucket=self.bucket).get("LocationConstraint")
            document["region"] = location or "us-east-1"
            document["versioning"] = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status", "")
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"reading bucket {self.bucket!r} settings") from None
        return document

    def _list_objects(self) -> Any:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket):
                yield from page.get("Contents", [])
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"listing bucket {self.bucket!r}") from None

    @staticmethod
    def _reusable(
        parent: _Parent | None, item: dict[str, Any], repository: Repository
    ) -> ObjectRecord | None:
        if parent is None:
            return None
        record = parent.records.get(item["Key"])
        if record is None or not record.unchanged(item["ETag"], item["Size"], _iso(item["LastModified"])):
            return None
        node = parent.nodes.get(record.path)
        if node is None or node.size != record.size:
            return None
        # Prune may have removed chunks since: only reuse what is certainly still stored.
        if not all(repository.has_chunk(chunk_id) for chunk_id in node.content):
            return None
        return record

    # --- fetching (pool threads) -----------------------------------------------------------

    def _fetch_small(self, key: str) -> _Fetched:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except AWS_ERRORS as error:
            if error_code(error) in _MISSING_CODES:
                return _Fetched(None)
            if error_code(error) in _SKIPPED_CODES:
                return _Fetched(None, error=str(explain(error, self.endpoint, f"downloading {key!r}")))
            raise explain(error, self.endpoint, f"downloading {key!r}") from None
        try:
            data = response["Body"].read()
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"downloading {key!r}") from None
        finally:
            response["Body"].close()
        return _Fetched(data, response, self._tags(key, response))

    def _fetch_tags_only(self, key: str) -> _Fetched:
        return _Fetched(b"", tags=self._tags(key))

    def _tags(self, key: str, response: dict[str, Any] | None = None) -> dict[str, str] | None:
        """The object's tags; None when it vanished. A GetObject without TagCount saves the call."""
        if self.tag_mode == "skip" or (response is not None and not response.get("TagCount")):
            return {}
        try:
            tag_set = self.client.get_object_tagging(Bucket=self.bucket, Key=key).get("TagSet", [])
        except AWS_ERRORS as error:
            if error_code(error) in _MISSING_CODES:
                return None
            raise explain(error, self.endpoint, f"reading the tags of {key!r}") from None
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    # --- storing (main thread) -------------------------------------------------------------

    def _finish(
        self,
        builder: StreamSnapshot,
        parent: _Parent | None,
        records: list[ObjectRecord],
        item: dict[str, Any],
        path: str,
        future: Future[_Fetched] | None,
        reusable: ObjectRecord | None,
    ) -> None:
        key = item["Key"]
        last_modified = _iso(item["LastModified"])
        if reusable is not None and parent is not None:
            tags = reusable.tags
            if future is not None:
                fetched_tags = future.result().tags
                if fetched_tags is None:  # deleted since the listing
                    self.counts.vanished += 1
                    return
                tags = fetched_tags
            add_existing(builder, path, parent.nodes[reusable.path], item["LastModified"])
            records.append(_record_with(reusable, path=path, tags=tags))
            self.counts.reused += 1
            now = time.monotonic()
            if now - self._last_beat >= HEARTBEAT_SECONDS:  # reusing reads no stream that would beat
                self._last_beat = now
                builder.heartbeat(builder.bytes_read)
            return
        if future is not None:
            fetched = future.result()
            if fetched.error:
                self.errors.append((key, fetched.error))
                return
            if fetched.data is None or fetched.tags is None:
                self.counts.vanished += 1
                return
            builder.add_bytes(path, fetched.data, mtime=item["LastModified"])
            record = _record_from(key, path, item, last_modified, fetched.response, fetched.tags)
            record.size = len(fetched.data)
            record.sha256 = _sha256(fetched.data)
        else:
            errors_before = len(self.errors)
            streamed = self._stream_large(builder, key, path, item, last_modified)
            if streamed is None:
                self.counts.vanished += 1 if len(self.errors) == errors_before else 0
                return
            record = streamed
        records.append(record)
        self.counts.downloaded += 1
        self.counts.bytes_downloaded += record.size

    def _stream_large(
        self, builder: StreamSnapshot, key: str, path: str, item: dict[str, Any], last_modified: str
    ) -> ObjectRecord | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except AWS_ERRORS as error:
            if error_code(error) in _MISSING_CODES:
                return None
            if error_code(error) in _SKIPPED_CODES:
                self.errors.append((key, str(explain(error, self.endpoint, f"downloading {key!r}"))))
                return None
            raise explain(error, self.endpoint, f"downloading {key!r}") from None
        body = response["Body"]
        reader = ProgressReader(body, builder.heartbeat, base=builder.bytes_read)
        try:
            size = builder.add_stream(path, buffered(reader), mtime=item["LastModified"])
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"downloading {key!r}") from None
        finally:
            body.close()
        expected = int(response.get("ContentLength", size))
        if size != expected:
            raise ConnectorError(
                f"Object {key!r} in bucket {self.bucket!r} ended after {size} of {expected} bytes; "
                "the connection was cut: run the backup again."
            )
        tags = self._tags(key, response)
        if tags is None:
            tags = {}
        record = _record_from(key, path, item, last_modified, response, tags)
        record.size = size
        record.sha256 = reader.sha256.hexdigest()
        return record


def bucket_tags(client: Any, bucket: str) -> dict[str, str]:
    """A bucket's tags ({} when it has none)."""
    try:
        tag_set = client.get_bucket_tagging(Bucket=bucket).get("TagSet", [])
    except AWS_ERRORS as error:
        if error_code(error) in ("NoSuchTagSet", "NoSuchTagSetError"):
            return {}
        raise
    return {tag["Key"]: tag["Value"] for tag in tag_set}


def _record_from(
    key: str,
    path: str,
    item: dict[str, Any],
    last_modified: str,
    response: dict[str, Any],
    tags: dict[str, str],
) -> ObjectRecord:
    etag = str(response.get("ETag", item["ETag"]))
    if etag != item["ETag"]:
        # Changed between the listing and the download: record the new version's time so the next
        # run compares against what was really saved (and downloads it again, which is safe).
        modified = response.get("LastModified")
        last_modified = _iso(modified) if isinstance(modified, datetime) else ""
    headers = {name: str(response[name]) for name in _HEADER_FIELDS if response.get(name)}
    expires = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("expires")
    if expires:
        headers["Expires"] = str(expires)
    if response.get("WebsiteRedirectLocation"):
        headers["WebsiteRedirectLocation"] = str(response["WebsiteRedirectLocation"])
    return ObjectRecord(
        key=key,
        path=path,
        etag=etag,
        size=int(response.get("ContentLength", item["Size"])),
        last_modified=last_modified,
        sha256="",
        content_type=str(response.get("ContentType") or ""),
        metadata=dict(response.get("Metadata") or {}),
        headers=headers,
        tags=tags,
        storage_class=str(item.get("StorageClass") or ""),
    )


def _record_with(record: ObjectRecord, *, path: str, tags: dict[str, str]) -> ObjectRecord:
    return ObjectRecord(**{**record.__dict__, "path": path, "tags": dict(tags)})


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
