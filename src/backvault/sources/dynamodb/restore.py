"""Restore a table snapshot into a NEW table, and validate a restored table against the manifest.

Restore metadata::

    TargetTableName   the new table (alias: targetTableName, as AWS Backup names it); it must not exist
    RestoreTags       "true" (default): put the captured tags on the new table

Steps: CreateTable with the captured schema, wait until ACTIVE, BatchWriteItem (25 items per call,
several threads, unprocessed items retried with backoff), then TTL and tags.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import (
    ConnectorError,
    EndpointSpec,
    Heartbeat,
    RestoreOutcome,
    RestoreRequest,
    ValidationOutcome,
)
from backvault.sources.dynamodb.backup import MANIFEST_PATH, TABLE_PATH
from backvault.sources.dynamodb.items import (
    Item,
    decode_item,
    encode_item,
    item_digest,
    item_line,
    parse_lines,
)
from backvault.sources.dynamodb.schema import Schema, create_table_arguments
from backvault.sources.s3.aws import AWS_ERRORS, error_code, explain
from backvault.sources.streams import find_file, iter_files, open_content

_BATCH = 25
_WRITE_THREADS = 4
_MAX_ATTEMPTS = 10
_ACTIVE_TIMEOUT = 600.0
_SHOWN_PROBLEMS = 20


def read_document(repository: Repository, snapshot: Snapshot, path: str) -> Any:
    """A JSON document stored in a table snapshot."""
    try:
        node = find_file(repository, snapshot, path)
    except KeyError:
        raise ConnectorError(
            f"Snapshot {snapshot.short_id} has no {path}: it is not a DynamoDB table backup."
        ) from None
    with open_content(repository, node) as stream:
        return json.loads(stream.read())


def iter_pages(repository: Repository, snapshot: Snapshot) -> Iterator[list[Item]]:
    """The items of every stored Scan page."""
    for path, node in iter_files(repository, snapshot):
        if path.startswith("items/"):
            with open_content(repository, node) as stream:
                yield parse_lines(stream.read())


class TableRestore:
    """One restore run; ``run`` returns the outcome."""

    def __init__(self, client: Any, request: RestoreRequest) -> None:
        self.client = client
        self.request = request
        self.endpoint = request.endpoint
        metadata = request.metadata
        self.target = metadata.get("TargetTableName") or metadata.get("targetTableName") or ""
        if not self.target:
            raise ConnectorError("Restore metadata must name the new table in TargetTableName.")
        restore_tags = metadata.get("RestoreTags", "true").lower()
        if restore_tags not in ("true", "false"):
            raise ConnectorError('Restore metadata RestoreTags must be "true" or "false".')
        self.restore_tags = restore_tags == "true"
        self.written = 0

    def run(self) -> RestoreOutcome:
        """Create the table, write every item, then set TTL and tags."""
        repository, snapshot = self.request.repository, self.request.snapshot
        schema: Schema = read_document(repository, snapshot, TABLE_PATH)
        self._create(schema)
        with ThreadPoolExecutor(_WRITE_THREADS, thread_name_prefix="ddb-write") as pool:
            pending: list[Future[int]] = []
            try:
                for page in iter_pages(repository, snapshot):
                    for start in range(0, len(page), _BATCH):
                        pending.append(pool.submit(self._write, page[start : start + _BATCH]))
                    while len(pending) > _WRITE_THREADS * 4:
                        self.written += pending.pop(0).result()
                    self.request.heartbeat(self.written)
                for future in pending:
                    self.written += future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        self._finish(schema)
        return RestoreOutcome(resource_name=self.target, bytes_restored=self.written)

    def _create(self, schema: Schema) -> None:
        try:
            self.client.create_table(**create_table_arguments(schema, self.target))
        except AWS_ERRORS as error:
            if error_code(error) in ("ResourceInUseException", "TableAlreadyExistsException"):
                raise ConnectorError(
                    f"Table {self.target!r} already exists: a DynamoDB restore goes to a new table; "
                    "choose another TargetTableName."
                ) from None
            raise explain(error, self.endpoint, f"creating table {self.target!r}") from None
        deadline = time.monotonic() + _ACTIVE_TIMEOUT
        delay = 0.2
        while True:
            try:
                status = self.client.describe_table(TableName=self.target)["Table"]["TableStatus"]
            except AWS_ERRORS as error:
                raise explain(error, self.endpoint, f"waiting for table {self.target!r}") from None
            if status == "ACTIVE":
                return
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"Table {self.target!r} did not become ACTIVE within {_ACTIVE_TIMEOUT:.0f} s."
                )
            self.request.heartbeat(0)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _write(self, items: list[Item]) -> int:
        """BatchWriteItem with retries of unprocessed items; returns the approximate bytes written."""
        requests: list[dict[str, Any]] = [{"PutRequest": {"Item": item}} for item in items]
        for attempt in range(_MAX_ATTEMPTS):
            try:
                response = self.client.batch_write_item(RequestItems={self.target: requests})
            except AWS_ERRORS as error:
                if error_code(error) not in ("ProvisionedThroughputExceededException", "ThrottlingException"):
                    raise explain(error, self.endpoint, f"writing items into {self.target!r}") from None
                response = {"UnprocessedItems": {self.target: requests}}
            requests = response.get("UnprocessedItems", {}).get(self.target, [])
            if not requests:
                return sum(len(item_line(item)) for item in items)
            time.sleep(min(0.05 * 2**attempt, 5.0))
        raise ConnectorError(
            f"DynamoDB kept {len(requests)} items unprocessed after {_MAX_ATTEMPTS} attempts while writing "
            f"into {self.target!r}; raise the table's write capacity and restore again."
        )

    def _finish(self, schema: Schema) -> None:
        try:
            ttl = schema.get("TimeToLive")
            if ttl:
                self.client.update_time_to_live(
                    TableName=self.target,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
                )
            if self.restore_tags and schema.get("Tags"):
                arn = self.client.describe_table(TableName=self.target)["Table"]["TableArn"]
                tags = [{"Key": key, "Value": value} for key, value in sorted(schema["Tags"].items())]
                self.client.tag_resource(ResourceArn=arn, Tags=tags)
        except AWS_ERRORS as error:
            raise explain(error, self.endpoint, f"setting TTL and tags on {self.target!r}") from None


# --- validation -------------------------------------------------------------------------------


def validate_table(
    client: Any,
    endpoint: EndpointSpec,
    repository: Repository,
    snapshot: Snapshot,
    table: str,
    heartbeat: Heartbeat,
) -> ValidationOutcome:
    """Compare a restored table with the manifest: key schema, indexes, item count, sampled items."""
    schema: Schema = read_document(repository, snapshot, TABLE_PATH)
    document = read_document(repository, snapshot, MANIFEST_PATH)
    problems: list[str] = []
    try:
        described = client.describe_table(TableName=table)["Table"]
    except AWS_ERRORS as error:
        if error_code(error) == "ResourceNotFoundException":
            return ValidationOutcome(False, f"table {table!r} does not exist", {"Table": table})
        raise explain(error, endpoint, f"describing table {table!r}") from None
    if _key_schema(described["KeySchema"]) != _key_schema(schema["KeySchema"]):
        problems.append("key schema differs from the backup")
    for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        expected = sorted(index["IndexName"] for index in schema.get(kind, []))
        if sorted(index["IndexName"] for index in described.get(kind, [])) != expected:
            problems.append(f"{kind} differ from the backup (expected {expected})")
    try:
        count = _count(client, table, heartbeat)
        mismatched = _check_sample(client, table, document["sample"])
    except AWS_ERRORS as error:
        raise explain(error, endpoint, f"reading table {table!r}") from None
    if count != document["item_count"]:
        problems.append(f"{count} items, expected {document['item_count']}")
    problems.extend(mismatched)
    details = {
        "Table": table,
        "ExpectedItems": document["item_count"],
        "FoundItems": count,
        "SampledItems": len(document["sample"]),
        "Problems": problems[:_SHOWN_PROBLEMS],
    }
    if problems:
        return ValidationOutcome(False, f"{len(problems)} problem(s): {problems[0]}", details)
    return ValidationOutcome(
        True, f"{count} items and {len(document['sample'])} sampled items match the manifest", details
    )


def _key_schema(elements: list[dict[str, str]]) -> list[tuple[str, str]]:
    return sorted((element["AttributeName"], element["KeyType"]) for element in elements)


def _count(client: Any, table: str, heartbeat: Heartbeat) -> int:
    arguments: dict[str, Any] = {"TableName": table, "Select": "COUNT", "ConsistentRead": True}
    total = 0
    while True:
        page = client.scan(**arguments)
        total += int(page["Count"])
        heartbeat(total)
        if "LastEvaluatedKey" not in page:
            return total
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _check_sample(client: Any, table: str, sample: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    if not sample:
        return problems
    expected = {json.dumps(entry["Key"], sort_keys=True): entry["Digest"] for entry in sample}
    keys = [decode_item(entry["Key"]) for entry in sample]
    found: dict[str, str] = {}
    for start in range(0, len(keys), 100):
        request: dict[str, Any] = {table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
        for attempt in range(_MAX_ATTEMPTS):
            response = client.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(table, []):
                key = {name: item[name] for name in sample[0]["Key"]}
                found[_key_json(key)] = item_digest(item)
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(min(0.05 * 2**attempt, 5.0))
    for key_json, digest in expected.items():
        if key_json not in found:
            problems.append(f"item {key_json} is missing")
        elif found[key_json] != digest:
            problems.append(f"item {key_json} differs from the backup")
    return problems


def _key_json(key: Item) -> str:
    return json.dumps(encode_item(key), sort_keys=True)
