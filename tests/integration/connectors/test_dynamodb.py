"""DynamoDB connector against moto's server: the connector contract, schema capture, parallel scans."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import boto3
import pytest
from contract import (
    REPOSITORY_PASSWORD,
    ConnectorContract,
    MakeResource,
    MetadataFor,
    Mutate,
    OccupiedMetadataFor,
    StateOf,
    closed_port,
    new_name,
)

from backvault.domain.arn import ResourceType
from backvault.repo.repository import Repository
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    EndpointSpec,
    RestoreRequest,
    ValidationRequest,
)
from backvault.sources.dynamodb import DynamodbConnector
from backvault.sources.dynamodb.items import item_digest

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "dynamo-secret-key"}
DEFAULT_TAGS = {"owner": "platform", "backvault-contract": "default"}
ITEMS = 180


def _client(endpoint_url: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _item(number: int) -> dict[str, Any]:
    """An item using every attribute type."""
    return {
        "pk": {"S": f"customer#{number % 7}"},
        "sk": {"N": str(number)},
        "name": {"S": f"name {number} ü"},
        "email": {"S": f"user{number}@example.com"},
        "score": {"N": str(Decimal(number) / 4)},
        "blob": {"B": bytes([number % 256]) * 20},
        "flags": {"SS": [f"f{number % 3}", "all"]},
        "numbers": {"NS": ["1", str(number + 2)]},
        "binaries": {"BS": [b"\x00\x01", bytes([number % 256, 7])]},
        "nested": {"M": {"list": {"L": [{"N": "1"}, {"BOOL": True}, {"NULL": True}]}, "b": {"B": b"\xff"}}},
        "expires": {"N": str(4_000_000_000 + number)},
    }


def _create_table(client: Any, name: str, tags: Mapping[str, str]) -> None:
    arguments: dict[str, Any] = {
        "TableName": name,
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
            {"AttributeName": "email", "AttributeType": "S"},
            {"AttributeName": "name", "AttributeType": "S"},
        ],
        "BillingMode": "PROVISIONED",
        "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 7},
        "GlobalSecondaryIndexes": [
            {
                "IndexName": "by-email",
                "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
                "ProvisionedThroughput": {"ReadCapacityUnits": 3, "WriteCapacityUnits": 2},
            }
        ],
        "LocalSecondaryIndexes": [
            {
                "IndexName": "by-name",
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "name", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    }
    if tags:
        arguments["Tags"] = [{"Key": key, "Value": value} for key, value in tags.items()]
    client.create_table(**arguments)
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"}
    )
    for start in range(0, ITEMS, 25):
        requests = [
            {"PutRequest": {"Item": _item(number)}} for number in range(start, min(start + 25, ITEMS))
        ]
        client.batch_write_item(RequestItems={name: requests})


def table_state(client: Any, table: str) -> dict[str, Any]:
    """Schema essentials, TTL, tags and every item's digest: equal exactly when the tables are."""
    described = client.describe_table(TableName=table)["Table"]
    items: list[str] = []
    arguments: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**arguments)
        items.extend(item_digest(item) for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            break
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    tags = client.list_tags_of_resource(ResourceArn=described["TableArn"]).get("Tags", [])
    return {
        "keys": described["KeySchema"],
        "attributes": sorted(item["AttributeName"] for item in described["AttributeDefinitions"]),
        "gsi": sorted(
            (index["IndexName"], str(index["KeySchema"]), str(index["Projection"]))
            for index in described.get("GlobalSecondaryIndexes", [])
        ),
        "lsi": sorted(index["IndexName"] for index in described.get("LocalSecondaryIndexes", [])),
        "throughput": (
            described["ProvisionedThroughput"]["ReadCapacityUnits"],
            described["ProvisionedThroughput"]["WriteCapacityUnits"],
        ),
        "ttl": client.describe_time_to_live(TableName=table)["TimeToLiveDescription"].get("AttributeName"),
        "tags": sorted((tag["Key"], tag["Value"]) for tag in tags),
        "items": sorted(items),
    }


@pytest.fixture
def dynamodb(moto_endpoint: str) -> Iterator[Any]:
    client = _client(moto_endpoint)
    yield client
    client.close()


@pytest.fixture
def endpoint(moto_endpoint: str) -> EndpointSpec:
    connection = {"endpoint_url": moto_endpoint, "region": "us-east-1"}
    return EndpointSpec("tables", ResourceType.DYNAMODB, connection, CREDENTIALS, DEFAULT_TAGS)


@pytest.fixture
def tables(dynamodb: Any) -> Iterator[list[str]]:
    """Names of tables to remove at teardown."""
    made: list[str] = []
    yield made
    for table in made:
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=table)


@pytest.fixture
def make_table(dynamodb: Any, tables: list[str]) -> MakeResource:
    def make(name: str, tags: Mapping[str, str]) -> str:
        tables.append(name)
        _create_table(dynamodb, name, tags)
        return name

    return make


class TestDynamodbContract(ConnectorContract):
    resource_type = ResourceType.DYNAMODB

    @pytest.fixture
    def endpoint(self, endpoint: EndpointSpec) -> EndpointSpec:
        return endpoint

    @pytest.fixture
    def unusable_endpoints(self, endpoint: EndpointSpec) -> dict[str, EndpointSpec]:
        unreachable = {"endpoint_url": f"http://127.0.0.1:{closed_port()}", "connect_timeout": 1}
        return {
            "unreachable server": EndpointSpec("down", ResourceType.DYNAMODB, unreachable, CREDENTIALS),
            "no credentials": EndpointSpec("nokeys", ResourceType.DYNAMODB, dict(endpoint.connection), {}),
        }

    @pytest.fixture
    def make_resource(self, make_table: MakeResource) -> MakeResource:
        return make_table

    @pytest.fixture
    def mutate(self, dynamodb: Any) -> Mutate:
        def change(table: str) -> None:
            dynamodb.put_item(TableName=table, Item={**_item(3), "name": {"S": "renamed"}})
            dynamodb.delete_item(TableName=table, Key={"pk": {"S": "customer#4"}, "sk": {"N": "4"}})
            dynamodb.put_item(TableName=table, Item=_item(10_000))

        return change

    @pytest.fixture
    def snapshot_state(self, dynamodb: Any) -> StateOf:
        return lambda table: table_state(dynamodb, table)

    @pytest.fixture
    def tamper(self, dynamodb: Any) -> Mutate:
        def damage(table: str) -> None:
            # Same count, one changed value: only the sampled items can tell (the sample covers all).
            dynamodb.update_item(
                TableName=table,
                Key={"pk": {"S": "customer#1"}, "sk": {"N": "8"}},
                UpdateExpression="SET score = :s",
                ExpressionAttributeValues={":s": {"N": "-1"}},
            )

        return damage

    @pytest.fixture
    def restore_metadata_for(self, tables: list[str]) -> MetadataFor:
        def aim(defaults: dict[str, str], name: str) -> dict[str, str]:
            tables.append(name)
            return {**defaults, "TargetTableName": name}

        return aim

    @pytest.fixture
    def occupied_metadata_for(self) -> OccupiedMetadataFor:
        return lambda defaults, existing: {**defaults, "TargetTableName": existing}


# --- beyond the contract --------------------------------------------------------------------------


def test_parallel_scan_stores_every_segment_and_validation_counts_items(
    endpoint: EndpointSpec, repository: Repository, make_table: MakeResource, dynamodb: Any, tables: list[str]
) -> None:
    connector = DynamodbConnector()
    table = make_table(new_name(), {"team": "data"})
    options = {"ScanSegments": "6", "ConsistentRead": "false"}
    snapshot = connector.backup(BackupRequest(endpoint, table, repository, options=options))
    assert snapshot.source["items"] == ITEMS and snapshot.source["segments"] == 6
    target = new_name()
    tables.append(target)
    metadata = {"TargetTableName": target, "RestoreTags": "false"}
    connector.restore(RestoreRequest(endpoint, table, repository, snapshot, metadata))
    state = table_state(dynamodb, target)
    original = table_state(dynamodb, table)
    assert state["tags"] == [] and original["tags"] == [("team", "data")]
    assert {**state, "tags": None} == {**original, "tags": None}
    tagged = new_name()
    tables.append(tagged)
    connector.restore(RestoreRequest(endpoint, table, repository, snapshot, {"TargetTableName": tagged}))
    assert table_state(dynamodb, tagged) == original

    dynamodb.delete_item(TableName=target, Key={"pk": {"S": "customer#0"}, "sk": {"N": "0"}})
    outcome = connector.validate(ValidationRequest(endpoint, target, repository, snapshot))
    assert not outcome.valid and outcome.details["FoundItems"] == ITEMS - 1
    missing = connector.validate(ValidationRequest(endpoint, new_name(), repository, snapshot))
    assert not missing.valid and "does not exist" in missing.message


def test_bad_options_and_metadata_are_refused(
    endpoint: EndpointSpec, repository: Repository, make_table: MakeResource
) -> None:
    connector = DynamodbConnector()
    table = make_table(new_name(), {})
    with pytest.raises(ConnectorError, match="ScanSegments"):
        connector.backup(BackupRequest(endpoint, table, repository, options={"ScanSegments": "many"}))
    snapshot = connector.backup(BackupRequest(endpoint, table, repository))
    with pytest.raises(ConnectorError, match="TargetTableName"):
        connector.restore(RestoreRequest(endpoint, table, repository, snapshot, {}))
    assert len(Repository.open(repository.store, REPOSITORY_PASSWORD).list_snapshots()) == 1
