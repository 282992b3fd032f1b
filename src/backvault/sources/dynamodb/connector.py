"""The DynamoDB connector: one resource per table behind an endpoint (AWS, moto, DynamoDB Local).

Discovery lists every table with its tags (ListTagsOfResource) merged over the endpoint's default
tags. The ARN is ``arn:aws:dynamodb:REGION:ACCOUNT:table/NAME``. Connection settings and
credentials are those of the S3 connector (``sources/s3/aws.py``). See ``backup.py`` for the options
and snapshot layout, ``restore.py`` for the restore metadata and validation.
"""

from __future__ import annotations

from backvault.domain.arn import ResourceType
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    DiscoveredResource,
    EndpointSpec,
    RestoreOutcome,
    RestoreRequest,
    ValidationOutcome,
    ValidationRequest,
)
from backvault.sources.dynamodb.backup import TableBackup
from backvault.sources.dynamodb.restore import TableRestore, validate_table
from backvault.sources.dynamodb.schema import table_tags
from backvault.sources.s3.aws import (
    AWS_ERRORS,
    AwsConnectorBase,
    error_code,
    explain,
)

_MAX_TABLE_NAME = 255


class DynamodbConnector(AwsConnectorBase):
    """Tables of a DynamoDB endpoint."""

    service = "dynamodb"
    resource_type = ResourceType.DYNAMODB

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """List tables once: proves the endpoint answers and accepts the credentials."""
        client = self._client(endpoint, max_attempts=2)
        try:
            client.list_tables(Limit=1)
        except AWS_ERRORS as error:
            raise explain(error, endpoint, "listing tables") from None
        finally:
            client.close()

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """Every table with its tags over the endpoint's default tags, and its size."""
        client = self._client(endpoint, max_attempts=2)
        found: list[DiscoveredResource] = []
        try:
            for page in client.get_paginator("list_tables").paginate():
                for name in page.get("TableNames", []):
                    try:
                        table = client.describe_table(TableName=name)["Table"]
                        tags = table_tags(client, table["TableArn"])
                    except AWS_ERRORS as error:
                        if error_code(error) == "ResourceNotFoundException":
                            continue  # deleted since the listing
                        raise
                    found.append(
                        DiscoveredResource(
                            name=name,
                            tags={**endpoint.default_tags, **tags},
                            size_bytes=table.get("TableSizeBytes"),
                        )
                    )
        except AWS_ERRORS as error:
            raise explain(error, endpoint, "discovering tables") from None
        finally:
            client.close()
        return found

    def backup(self, request: BackupRequest) -> Snapshot:
        """Save the table's schema and items (parallel scan) as one snapshot."""
        client = self._client(request.endpoint, pool_size=70)
        try:
            return TableBackup(client, request).run()
        finally:
            client.close()

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """Defaults for a restore into a new table named after the original and the snapshot."""
        suffix = f"-restored-{snapshot.short_id}"
        return {
            "TargetTableName": resource_name[: _MAX_TABLE_NAME - len(suffix)] + suffix,
            "RestoreTags": "true",
        }

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Create the new table from the captured schema and write the items back."""
        client = self._client(request.endpoint, pool_size=16)
        try:
            return TableRestore(client, request).run()
        finally:
            client.close()

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """Compare the restored table with the snapshot's manifest."""
        client = self._client(request.endpoint)
        try:
            return validate_table(
                client,
                request.endpoint,
                request.repository,
                request.snapshot,
                request.resource_name,
                request.heartbeat,
            )
        finally:
            client.close()

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Delete a table a restore test created."""
        if not resource_name:
            raise ConnectorError("delete_restored needs a table name.")
        client = self._client(endpoint)
        try:
            client.delete_table(TableName=resource_name)
        except AWS_ERRORS as error:
            if error_code(error) != "ResourceNotFoundException":
                raise explain(error, endpoint, f"deleting table {resource_name!r}") from None
        finally:
            client.close()
