"""Back up one table with a parallel scan: segments scanned by threads, pages stored as they arrive.

Snapshot layout::

    table.json                                 the schema (see schema.py)
    manifest.json                              item count, key names, a sample of items' digests
    items/segment-SSSS/page-PPPPPP.jsonl       one file per Scan page, lines {"Item": {...}}

Each segment's pages form its framed stream. One file per page lets the threads scan in parallel
while the main thread stores pages in arrival order, and keeps unchanged pages deduplicated across
runs. Nothing is written to local disk; at most a few pages per thread wait in memory.

Backup options::

    ScanSegments     parallel scan segments = threads (default 4)
    ConsistentRead   "true" (default) or "false" (half the read capacity, may miss recent writes)
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from dataclasses import dataclass
from typing import Any

from backvault.repo.snapshot import Snapshot
from backvault.sources.base import BackupRequest, ConnectorError
from backvault.sources.dynamodb.items import BottomSample, item_digest, item_line, key_of
from backvault.sources.dynamodb.schema import capture_schema, key_names
from backvault.sources.s3.aws import AWS_ERRORS, error_code, explain
from backvault.sources.streams import StreamSnapshot

FORMAT = 1
TABLE_PATH = "table.json"
MANIFEST_PATH = "manifest.json"
SAMPLE_SIZE = 200
_POLL_SECONDS = 1.0


@dataclass
class _Page:
    """One Scan page of one segment, encoded."""

    segment: int
    number: int
    data: bytes
    items: int


class _Finished:
    """A segment's end marker (error set when its scan failed)."""

    def __init__(self, segment: int, error: BaseException | None = None) -> None:
        self.segment = segment
        self.error = error


def describe(client: Any, request_table: str, endpoint: Any) -> dict[str, Any]:
    """DescribeTable's 'Table', with a clear error for a missing table."""
    try:
        table: dict[str, Any] = client.describe_table(TableName=request_table)["Table"]
    except AWS_ERRORS as error:
        if error_code(error) == "ResourceNotFoundException":
            raise ConnectorError(
                f"Table {request_table!r} does not exist on endpoint {endpoint.name!r}; run discovery again."
            ) from None
        raise explain(error, endpoint, f"describing table {request_table!r}") from None
    return table


class TableBackup:
    """One table backup run; ``run`` returns the committed snapshot."""

    def __init__(self, client: Any, request: BackupRequest) -> None:
        self.client = client
        self.request = request
        self.table = request.resource_name
        options = request.options
        try:
            self.segments = max(1, min(64, int(options.get("ScanSegments", "4"))))
        except ValueError:
            raise ConnectorError('BackupOptions ScanSegments must be a whole number, e.g. "4".') from None
        consistent = options.get("ConsistentRead", "true").lower()
        if consistent not in ("true", "false"):
            raise ConnectorError('BackupOptions ConsistentRead must be "true" or "false".')
        self.consistent = consistent == "true"
        self._stop = threading.Event()
        self._pages: queue.Queue[_Page | _Finished] = queue.Queue(maxsize=self.segments * 2)
        self._samples = [BottomSample(SAMPLE_SIZE) for _ in range(self.segments)]

    def run(self) -> Snapshot:
        """Capture the schema, scan every segment in parallel, store pages, then commit."""
        endpoint = self.request.endpoint
        table = describe(self.client, self.table, endpoint)
        try:
            schema = capture_schema(self.client, table)
        except AWS_ERRORS as error:
            raise explain(error, endpoint, f"reading the settings of table {self.table!r}") from None
        keys = key_names(schema)
        threads = [
            threading.Thread(target=self._scan, args=(segment, keys), name=f"scan-{segment}", daemon=True)
            for segment in range(self.segments)
        ]
        items = pages = 0
        with StreamSnapshot(self.request.repository, heartbeat=self.request.heartbeat) as builder:
            for thread in threads:
                thread.start()
            try:
                running = self.segments
                while running:
                    try:
                        message = self._pages.get(timeout=_POLL_SECONDS)
                    except queue.Empty:
                        builder.heartbeat(builder.bytes_read)  # a slow scan still renews the lease
                        continue
                    if isinstance(message, _Finished):
                        running -= 1
                        if message.error is not None:
                            raise message.error
                        continue
                    path = f"items/segment-{message.segment:04d}/page-{message.number:06d}.jsonl"
                    builder.add_bytes(path, message.data)
                    items += message.items
                    pages += 1
            finally:
                self._stop.set()
                self._drain(threads)
            sample = self._samples[0]
            for other in self._samples[1:]:
                sample.merge(other)
            document = {
                "format": FORMAT,
                "table": self.table,
                "item_count": items,
                "pages": pages,
                "segments": self.segments,
                "key_names": keys,
                "sample": sample.entries(),
            }
            builder.add_bytes(TABLE_PATH, json.dumps(schema, sort_keys=True, default=str).encode())
            builder.add_bytes(MANIFEST_PATH, json.dumps(document, sort_keys=True).encode())
            source = {
                "type": "DynamoDB",
                "format": FORMAT,
                "endpoint": endpoint.name,
                "table": self.table,
                "items": items,
                "segments": self.segments,
            }
            return builder.commit(paths=[self.table], source=source, tags=self.request.tags)

    def _scan(self, segment: int, keys: list[str]) -> None:
        """Scan one segment page by page (runs in its own thread)."""
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "Segment": segment,
            "TotalSegments": self.segments,
            "ConsistentRead": self.consistent,
        }
        number = 0
        try:
            while not self._stop.is_set():
                page = self.client.scan(**arguments)
                found = page.get("Items", [])
                if found:
                    lines = []
                    for item in found:
                        lines.append(item_line(item))
                        self._samples[segment].offer(key_of(item, keys), item_digest(item))
                    self._put(_Page(segment, number, b"".join(lines), len(found)))
                    number += 1
                if "LastEvaluatedKey" not in page:
                    break
                arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except AWS_ERRORS as error:
            self._put(_Finished(segment, explain(error, self.request.endpoint, f"scanning {self.table!r}")))
            return
        except Exception as error:  # handed to the main thread, which raises it
            self._put(_Finished(segment, error))
            return
        self._put(_Finished(segment))

    def _put(self, message: _Page | _Finished) -> None:
        while not self._stop.is_set():
            try:
                self._pages.put(message, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _drain(self, threads: list[threading.Thread]) -> None:
        """Let stopped scan threads finish (they may be blocked on a full queue)."""
        for thread in threads:
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._pages.get(timeout=0.1)
                thread.join(timeout=0.1)
