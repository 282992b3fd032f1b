"""The contract every connector implements: discover resources, back one up, restore it, validate a restore.

A connector knows one resource type (``domain.arn.ResourceType``) and nothing of the catalog: the
control plane resolves the endpoint row and its credentials into an ``EndpointSpec``, opens the vault's
repository, and hands both over. Connectors name resources by the part of the ARN after the endpoint
(``""`` for the endpoint itself, a directory below a root, a database name, a bucket...), so the
control plane alone builds ARNs.

Connectors are looked up by resource type through ``get_connector``; their modules are imported
lazily so that a server without, say, a MySQL client library still backs up directories.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from backvault.domain.arn import ResourceType
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot


class ConnectorError(Exception):
    """A connector cannot do what was asked; the message names the problem and what to do about it."""


class ConnectorStopped(Exception):
    """Raised by a heartbeat callback: the job was stopped or lost its lease, so the work must end now."""


# Called with the bytes processed so far; it renews the job's lease and raises ConnectorStopped when
# the job must end. Connectors call it at least every few seconds of work.
Heartbeat = Callable[[int], None]


def no_heartbeat(_processed: int) -> None:
    """A heartbeat that never stops anything (command-line use and tests)."""


@dataclass(frozen=True)
class EndpointSpec:
    """A registered source endpoint as a connector sees it; ``credentials`` are secrets, never shown."""

    name: str
    endpoint_type: ResourceType
    connection: Mapping[str, Any]
    credentials: Mapping[str, str] = field(default_factory=dict)
    default_tags: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Never let a secret reach a log line or a traceback through repr().
        shown = {key: "***" for key in self.credentials}
        return (
            f"EndpointSpec(name={self.name!r}, endpoint_type={self.endpoint_type.value!r}, "
            f"connection={dict(self.connection)!r}, credentials={shown!r})"
        )


@dataclass(frozen=True)
class DiscoveredResource:
    """One resource behind an endpoint with its native tags (merged over the endpoint's defaults)."""

    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    size_bytes: int | None = None


@dataclass(frozen=True)
class BackupRequest:
    """Back up ``resource_name`` behind ``endpoint`` into ``repository`` as one snapshot."""

    endpoint: EndpointSpec
    resource_name: str
    repository: Repository
    tags: Sequence[str] = ()
    options: Mapping[str, str] = field(default_factory=dict)  # AWS BackupOptions, connector-specific
    heartbeat: Heartbeat = no_heartbeat


@dataclass(frozen=True)
class RestoreRequest:
    """Restore ``snapshot`` of ``resource_name``; ``metadata`` says where (AWS restore Metadata)."""

    endpoint: EndpointSpec
    resource_name: str
    repository: Repository
    snapshot: Snapshot
    metadata: Mapping[str, str] = field(default_factory=dict)
    heartbeat: Heartbeat = no_heartbeat


@dataclass(frozen=True)
class ValidationRequest:
    """Check the restored ``resource_name`` against the manifest saved in ``snapshot`` at backup time."""

    endpoint: EndpointSpec
    resource_name: str
    repository: Repository
    snapshot: Snapshot
    heartbeat: Heartbeat = no_heartbeat


@dataclass
class RestoreOutcome:
    """What a restore created: the resource name behind the same endpoint, and how much was written."""

    resource_name: str
    bytes_restored: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class ValidationOutcome:
    """Whether a restored copy is usable, with the evidence (row counts, checksums...)."""

    valid: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class Connector(Protocol):
    """One resource type's discovery, backup, restore and restore validation."""

    resource_type: ResourceType

    def check_endpoint(self, endpoint: EndpointSpec) -> None:
        """Raise ConnectorError naming what is wrong with the endpoint's connection settings or access."""
        ...

    def discover(self, endpoint: EndpointSpec) -> list[DiscoveredResource]:
        """List the resources behind the endpoint with their native tags."""
        ...

    def backup(self, request: BackupRequest) -> Snapshot:
        """Save the resource as one committed snapshot (``partial`` set if anything was skipped)."""
        ...

    def restore_metadata(
        self, endpoint: EndpointSpec, resource_name: str, snapshot: Snapshot
    ) -> dict[str, str]:
        """Return the restore Metadata keys this type accepts, filled with defaults for a new copy."""
        ...

    def restore(self, request: RestoreRequest) -> RestoreOutcome:
        """Restore the snapshot where the metadata says, never over an existing resource unless told to."""
        ...

    def validate(self, request: ValidationRequest) -> ValidationOutcome:
        """Check that a restored resource is usable and matches the manifest the snapshot recorded."""
        ...

    def delete_restored(self, endpoint: EndpointSpec, resource_name: str) -> None:
        """Remove a resource a restore test created (never called on anything else)."""
        ...


# Resource type -> "module:ClassName"; imported on first use.
_CONNECTORS: dict[ResourceType, str] = {
    ResourceType.FILESYSTEM: "backvault.sources.filesystem.connector:FilesystemConnector",
    ResourceType.POSTGRESQL: "backvault.sources.postgresql:PostgresqlConnector",
    ResourceType.MYSQL: "backvault.sources.mysql:MysqlConnector",
    ResourceType.SQLITE: "backvault.sources.sqlite:SqliteConnector",
    ResourceType.REDIS: "backvault.sources.redis:RedisConnector",
    ResourceType.S3: "backvault.sources.s3:S3Connector",
    ResourceType.DYNAMODB: "backvault.sources.dynamodb:DynamodbConnector",
}


def get_connector(resource_type: ResourceType | str) -> Connector:
    """Return the connector for a resource type, or raise ConnectorError if it is unknown or not built."""
    try:
        kind = ResourceType(resource_type)
    except ValueError:
        known = ", ".join(t.value for t in ResourceType)
        raise ConnectorError(f"Unknown resource type {resource_type!r}; known types: {known}.") from None
    module_name, _, class_name = _CONNECTORS[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise ConnectorError(f"No connector for resource type {kind.value} is installed.") from None
        raise
    connector: Connector = getattr(module, class_name)()
    return connector
