"""The S3 connector: one resource per bucket behind an S3-compatible endpoint.

Discovery lists every bucket with its bucket tags (merged over the endpoint's default tags), so
bucket tags drive selection. The ARN is ``arn:aws:s3:::BUCKET``. See ``backup.py`` for the backup
options, ``restore.py`` for the restore metadata, and ``manifest.py`` for the snapshot layout.
"""

from __future__ import annotations

import re
from typing import Any

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
from backvault.sources.s3 import manifest
from backvault.sources.s3.aws import (
    AWS_ERRORS,
    AwsConnectorBase,
    error_code,
    explain,
)
from backvault.sources.s3.backup import BucketBackup, bucket_tags
from backvault.sources.s3.restore import BucketRestore, split_target, validate_bucket

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3Connector(AwsConnectorBase):
    """Buckets of an S3-compatible endpoint (AWS, MinIO, moto...)."""

    service = "s3"
    resource_type = ResourceType.S3

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """List buckets once: proves the endpoint answers and accepts the credentials."""
        client = self._client(endpoint, max_attempts=2)
        try:
            client.list_buckets()
        except AWS_ERRORS as error:
            raise explain(error, endpoint, "listing buckets") from None
        finally:
            client.close()

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """Every bucket with its tags over the endpoint's default tags."""
        client = self._client(endpoint, max_attempts=2)
        try:
            buckets = client.list_buckets().get("Buckets", [])
            found = []
            for bucket in buckets:
                name = bucket["Name"]
                try:
                    tags = bucket_tags(client, name)
                except AWS_ERRORS as error:
                    if error_code(error) in ("NoSuchBucket", "404"):
                        continue  # deleted since the listing
                    raise
                found.append(DiscoveredResource(name=name, tags={**endpoint.default_tags, **tags}))
            return found
        except AWS_ERRORS as error:
            raise explain(error, endpoint, "discovering buckets") from None
        finally:
            client.close()

    def backup(self, request: BackupRequest) -> Snapshot:
        """Save the bucket's objects (latest versions), metadata and tags as one snapshot."""
        if not _BUCKET_NAME.match(request.resource_name):
            raise ConnectorError(f"{request.resource_name!r} is not a bucket name.")
        threads = _threads(request.options.get("Threads", "8"))
        client = self._client(request.endpoint, pool_size=threads * 4 + 4)
        try:
            return BucketBackup(client, request).run()
        finally:
            client.close()

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """Defaults for a restore into a new bucket named after the original and the snapshot."""
        stem = resource_name[: 63 - len("-restore-") - 8].rstrip(".-")
        return {
            "TargetBucket": f"{stem}-restore-{snapshot.short_id}",
            "TargetPrefix": "",
            "NewBucket": "true",
            "Overwrite": "false",
        }

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Write every object of the snapshot into the target bucket and prefix."""
        client = self._client(request.endpoint, pool_size=16)
        try:
            return BucketRestore(client, request).run()
        finally:
            client.close()

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """Compare the restored ``BUCKET[/PREFIX]`` with the snapshot's manifest."""
        records = list(manifest.iter_records(request.repository, request.snapshot))
        client = self._client(request.endpoint)
        try:
            return validate_bucket(
                client,
                request.endpoint,
                request.repository,
                records,
                request.resource_name,
                request.heartbeat,
            )
        finally:
            client.close()

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Delete a restored copy: the objects under its prefix, and the bucket when there is no prefix."""
        bucket, prefix = split_target(resource_name)
        client = self._client(endpoint)
        try:
            _delete_objects(client, bucket, prefix)
            if not prefix:
                client.delete_bucket(Bucket=bucket)
        except AWS_ERRORS as error:
            if error_code(error) in ("NoSuchBucket", "404"):
                return
            raise explain(error, endpoint, f"deleting the restored copy {resource_name!r}") from None
        finally:
            client.close()


def _delete_objects(client: Any, bucket: str, prefix: str) -> None:
    """Delete every object version (or object) under the prefix, 1000 per request."""
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        batch = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if batch:
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def _threads(value: str) -> int:
    try:
        return max(1, min(64, int(value)))
    except ValueError:
        raise ConnectorError('BackupOptions Threads must be a whole number, e.g. "8".') from None
