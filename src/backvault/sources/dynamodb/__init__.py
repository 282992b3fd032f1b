"""DynamoDB table connector: parallel-scan backups with the schema, restore to a new table, validate."""

from backvault.sources.dynamodb.connector import DynamodbConnector

__all__ = ["DynamodbConnector"]
