"""A table's schema as captured at backup time, and the CreateTable call that recreates it.

Captured: key schema, attribute definitions, billing mode and provisioned throughput, global and
local secondary indexes (key schema, projection, throughput), stream settings, table class, TTL
and tags. Not recreated on restore: encryption settings (the target account's default applies),
deletion protection (a restored copy must stay deletable by restore tests), and streams' ARNs.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def capture_schema(client: Any, table: dict[str, Any]) -> Schema:
    """Everything needed to recreate the table described by ``table`` (a DescribeTable 'Table')."""
    name = table["TableName"]
    billing = table.get("BillingModeSummary", {}).get("BillingMode")
    throughput = table.get("ProvisionedThroughput", {})
    if billing is None:
        billing = "PROVISIONED" if throughput.get("ReadCapacityUnits") else "PAY_PER_REQUEST"
    schema: Schema = {
        "TableName": name,
        "TableArn": table.get("TableArn", ""),
        "KeySchema": table["KeySchema"],
        "AttributeDefinitions": table["AttributeDefinitions"],
        "BillingMode": billing,
        "ProvisionedThroughput": _throughput(throughput),
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index["IndexName"],
                "KeySchema": index["KeySchema"],
                "Projection": index["Projection"],
                "ProvisionedThroughput": _throughput(index.get("ProvisionedThroughput", {})),
            }
            for index in table.get("GlobalSecondaryIndexes", [])
        ],
        "LocalSecondaryIndexes": [
            {
                "IndexName": index["IndexName"],
                "KeySchema": index["KeySchema"],
                "Projection": index["Projection"],
            }
            for index in table.get("LocalSecondaryIndexes", [])
        ],
        "ItemCount": table.get("ItemCount", 0),
        "TableSizeBytes": table.get("TableSizeBytes", 0),
    }
    stream = table.get("StreamSpecification")
    if stream and stream.get("StreamEnabled"):
        schema["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    table_class = table.get("TableClassSummary", {}).get("TableClass")
    if table_class:
        schema["TableClass"] = table_class
    ttl = client.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
    if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and ttl.get("AttributeName"):
        schema["TimeToLive"] = {"AttributeName": ttl["AttributeName"], "Enabled": True}
    schema["Tags"] = table_tags(client, schema["TableArn"]) if schema["TableArn"] else {}
    return schema


def table_tags(client: Any, arn: str) -> dict[str, str]:
    """A table's tags, following NextToken."""
    tags: dict[str, str] = {}
    arguments: dict[str, Any] = {"ResourceArn": arn}
    while True:
        page = client.list_tags_of_resource(**arguments)
        tags.update({tag["Key"]: tag["Value"] for tag in page.get("Tags", [])})
        if not page.get("NextToken"):
            return tags
        arguments["NextToken"] = page["NextToken"]


def create_table_arguments(schema: Schema, target: str) -> dict[str, Any]:
    """CreateTable keyword arguments recreating ``schema`` under the name ``target``."""
    provisioned = schema["BillingMode"] == "PROVISIONED"
    arguments: dict[str, Any] = {
        "TableName": target,
        "KeySchema": schema["KeySchema"],
        "AttributeDefinitions": schema["AttributeDefinitions"],
        "BillingMode": schema["BillingMode"],
    }
    if provisioned:
        arguments["ProvisionedThroughput"] = schema["ProvisionedThroughput"]
    if schema["GlobalSecondaryIndexes"]:
        arguments["GlobalSecondaryIndexes"] = [
            {key: value for key, value in index.items() if key != "ProvisionedThroughput" or provisioned}
            for index in schema["GlobalSecondaryIndexes"]
        ]
    if schema["LocalSecondaryIndexes"]:
        arguments["LocalSecondaryIndexes"] = schema["LocalSecondaryIndexes"]
    if "StreamSpecification" in schema:
        arguments["StreamSpecification"] = schema["StreamSpecification"]
    if "TableClass" in schema:
        arguments["TableClass"] = schema["TableClass"]
    return arguments


def key_names(schema: Schema) -> list[str]:
    """The table's primary-key attribute names (hash first)."""
    ordered = sorted(schema["KeySchema"], key=lambda element: element["KeyType"] != "HASH")
    return [element["AttributeName"] for element in ordered]


def _throughput(value: dict[str, Any]) -> dict[str, int]:
    # A table switched to on-demand reports 0 units; CreateTable needs at least 1 when provisioned.
    return {
        "ReadCapacityUnits": max(1, int(value.get("ReadCapacityUnits") or 1)),
        "WriteCapacityUnits": max(1, int(value.get("WriteCapacityUnits") or 1)),
    }
