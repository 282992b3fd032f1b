"""The contract every connector passes: a base test class that each connector's test file subclasses.

Usage (``from contract import ConnectorContract, new_name``)::

    class TestPostgresql(ConnectorContract):
        resource_type = ResourceType.POSTGRESQL

        @pytest.fixture
        def endpoint(self) -> EndpointSpec: ...            # a usable endpoint, with default_tags
        @pytest.fixture
        def unusable_endpoints(self, endpoint) -> dict[str, EndpointSpec]: ...  # "wrong password": ...
        @pytest.fixture
        def make_resource(self, endpoint) -> Iterator[MakeResource]: ...  # creates, and drops at teardown
        @pytest.fixture
        def mutate(self, endpoint) -> Mutate: ...           # changes a resource's data
        @pytest.fixture
        def snapshot_state(self, endpoint) -> StateOf: ...  # the data as a comparable value
        @pytest.fixture
        def tamper(self, endpoint) -> Mutate: ...           # a change that validation must notice

Optional overrides: ``restore_metadata_for`` (aim a restore at a given new name; the default keeps
the connector's own defaults), ``occupied_metadata_for`` (aim a restore at an existing resource, which
must be refused; the default returns None and that test is skipped), ``stop_after_bytes``.

Resources get names from ``new_name()``: lowercase letters and digits only, valid as a database,
bucket, table or file name. ``make_resource(name, tags)`` returns the name the connector uses for
the resource (a SQLite connector might return ``name + ".db"``). Restored copies are removed by the
tests themselves through ``connector.delete_restored``.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from backvault.domain.arn import ResourceType
from backvault.repo.check import check
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import (
    BackupRequest,
    Connector,
    ConnectorError,
    ConnectorStopped,
    EndpointSpec,
    Heartbeat,
    RestoreOutcome,
    RestoreRequest,
    ValidationOutcome,
    ValidationRequest,
    get_connector,
    no_heartbeat,
)
from backvault.storage.local import LocalStore

REPOSITORY_PASSWORD = "contract test passphrase"

MakeResource = Callable[[str, Mapping[str, str]], str]
Mutate = Callable[[str], None]
StateOf = Callable[[str], Any]
MetadataFor = Callable[[dict[str, str], str], dict[str, str]]
OccupiedMetadataFor = Callable[[dict[str, str], str], "dict[str, str] | None"]


def new_name() -> str:
    """A random resource name: 'bvt' and 12 hex digits (valid for every resource type)."""
    return f"bvt{uuid.uuid4().hex[:12]}"


class StopAfter:
    """A heartbeat that raises ConnectorStopped once ``limit`` bytes were reported (a cancelled job)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls: list[int] = []

    def __call__(self, processed: int) -> None:
        self.calls.append(processed)
        if processed >= self.limit:
            raise ConnectorStopped(f"stopped by the test after {processed} bytes")


class ConnectorContract:
    """Tests every connector must pass; subclasses provide the fixtures named in the module docstring."""

    resource_type: ClassVar[ResourceType]
    # The interrupted-backup test stops the job at the first heartbeat reporting this many bytes.
    stop_after_bytes: ClassVar[int] = 1

    # --- fixtures a subclass must provide ------------------------------------------------------

    @pytest.fixture
    def endpoint(self) -> EndpointSpec:
        """A usable endpoint with some default_tags (at least one key the resources do not set)."""
        raise NotImplementedError("subclass ConnectorContract and provide the 'endpoint' fixture")

    @pytest.fixture
    def unusable_endpoints(self, endpoint: EndpointSpec) -> dict[str, EndpointSpec]:
        """Endpoints that must be refused with ConnectorError, by what is wrong with them."""
        raise NotImplementedError("provide 'unusable_endpoints' (wrong password, unreachable server...)")

    @pytest.fixture
    def make_resource(self, endpoint: EndpointSpec) -> MakeResource:
        """A factory: create a resource with some data and native tags, return its connector name."""
        raise NotImplementedError("provide 'make_resource' (and drop what it made at teardown)")

    @pytest.fixture
    def mutate(self, endpoint: EndpointSpec) -> Mutate:
        """Change the data of a resource (insert, update and delete something)."""
        raise NotImplementedError("provide 'mutate'")

    @pytest.fixture
    def snapshot_state(self, endpoint: EndpointSpec) -> StateOf:
        """Read a resource's whole data as a value that compares equal exactly when the data is equal."""
        raise NotImplementedError("provide 'snapshot_state'")

    @pytest.fixture
    def tamper(self, endpoint: EndpointSpec) -> Mutate:
        """Damage a restored copy in a way its validation must detect."""
        raise NotImplementedError("provide 'tamper'")

    # --- fixtures a subclass may override -------------------------------------------------------

    @pytest.fixture
    def restore_metadata_for(self) -> MetadataFor:
        """Restore metadata aiming at a new resource: (connector defaults, a fresh name) -> metadata."""
        return lambda defaults, _target_name: dict(defaults)

    @pytest.fixture
    def occupied_metadata_for(self) -> OccupiedMetadataFor:
        """Restore metadata aiming at an existing resource (which must be refused), or None to skip."""
        return lambda _defaults, _existing_name: None

    # --- provided fixtures and helpers ----------------------------------------------------------

    @pytest.fixture
    def connector(self) -> Connector:
        """The connector under test, looked up the way the control plane does."""
        return get_connector(self.resource_type)

    @pytest.fixture
    def repository(self, tmp_path: Path) -> Repository:
        """A fresh local repository."""
        store = LocalStore(tmp_path / "repository")
        Repository.init(store, REPOSITORY_PASSWORD)
        return Repository.open(store, REPOSITORY_PASSWORD)

    @staticmethod
    def backup(
        connector: Connector,
        endpoint: EndpointSpec,
        resource: str,
        repository: Repository,
        heartbeat: Heartbeat = no_heartbeat,
    ) -> Snapshot:
        """Back up one resource."""
        request = BackupRequest(endpoint, resource, repository, tags=["contract"], heartbeat=heartbeat)
        return connector.backup(request)

    @staticmethod
    def restore(
        connector: Connector,
        endpoint: EndpointSpec,
        resource: str,
        repository: Repository,
        snapshot: Snapshot,
        metadata: Mapping[str, str],
    ) -> RestoreOutcome:
        """Restore one snapshot with the given metadata."""
        return connector.restore(RestoreRequest(endpoint, resource, repository, snapshot, metadata))

    @staticmethod
    def validate(
        connector: Connector,
        endpoint: EndpointSpec,
        restored: str,
        repository: Repository,
        snapshot: Snapshot,
    ) -> ValidationOutcome:
        """Validate a restored copy against the snapshot's manifest."""
        return connector.validate(ValidationRequest(endpoint, restored, repository, snapshot))

    # --- the contract ---------------------------------------------------------------------------

    def test_check_endpoint_accepts_a_usable_endpoint(
        self, connector: Connector, endpoint: EndpointSpec
    ) -> None:
        connector.check_endpoint(endpoint)
        assert connector.resource_type == self.resource_type

    def test_unusable_endpoints_are_refused_with_a_clear_error(
        self, connector: Connector, unusable_endpoints: dict[str, EndpointSpec]
    ) -> None:
        assert unusable_endpoints, "unusable_endpoints must name at least one broken endpoint"
        for problem, broken in unusable_endpoints.items():
            for attempt in (connector.check_endpoint, connector.discover):
                with pytest.raises(ConnectorError) as caught:
                    attempt(broken)
                message = str(caught.value)
                assert message.strip(), f"{problem}: empty error message"
                for secret in broken.credentials.values():
                    if secret:
                        assert secret not in message, f"{problem}: the error shows a secret"
                        assert secret not in repr(broken)

    def test_discover_finds_a_new_resource_with_its_tags(
        self, connector: Connector, endpoint: EndpointSpec, make_resource: MakeResource
    ) -> None:
        name = new_name()
        before = {found.name for found in connector.discover(endpoint)}
        native = {"backvault-contract": "yes", "team": name}
        resource = make_resource(name, native)
        assert resource not in before
        found = {item.name: item for item in connector.discover(endpoint)}
        assert resource in found, f"discover did not list the new resource {resource!r}: {sorted(found)}"
        tags = dict(found[resource].tags)
        for key, value in native.items():
            assert tags.get(key) == value, f"native tag {key!r} missing or wrong in {tags}"
        for key, value in endpoint.default_tags.items():
            if key not in native:
                assert tags.get(key) == value, f"default tag {key!r} missing or wrong in {tags}"

    def test_restoring_the_first_point_returns_exactly_the_first_state(
        self,
        connector: Connector,
        endpoint: EndpointSpec,
        repository: Repository,
        make_resource: MakeResource,
        mutate: Mutate,
        snapshot_state: StateOf,
        restore_metadata_for: MetadataFor,
    ) -> None:
        resource = make_resource(new_name(), {})
        first_state = snapshot_state(resource)
        beats: list[int] = []
        first = self.backup(connector, endpoint, resource, repository, heartbeat=beats.append)
        assert first.id and not first.partial
        assert beats, "the connector never called the heartbeat"
        assert beats == sorted(beats), "heartbeat byte counts went backwards"
        mutate(resource)
        second_state = snapshot_state(resource)
        assert second_state != first_state, "mutate did not change the resource"
        second = self.backup(connector, endpoint, resource, repository)
        assert second.id != first.id
        assert {snapshot.id for snapshot in repository.list_snapshots()} == {first.id, second.id}

        defaults = connector.restore_metadata(endpoint, resource, first)
        assert all(isinstance(value, str) for value in defaults.values())
        metadata = restore_metadata_for(defaults, new_name())
        outcome = self.restore(connector, endpoint, resource, repository, first, metadata)
        try:
            assert outcome.resource_name != resource, "a restore to a new name went over the original"
            assert snapshot_state(outcome.resource_name) == first_state
            assert snapshot_state(resource) == second_state, "restoring a copy changed the original"
        finally:
            connector.delete_restored(endpoint, outcome.resource_name)

    def test_validation_passes_on_the_restored_copy_and_fails_on_a_tampered_one(
        self,
        connector: Connector,
        endpoint: EndpointSpec,
        repository: Repository,
        make_resource: MakeResource,
        tamper: Mutate,
        restore_metadata_for: MetadataFor,
    ) -> None:
        resource = make_resource(new_name(), {})
        snapshot = self.backup(connector, endpoint, resource, repository)
        defaults = connector.restore_metadata(endpoint, resource, snapshot)
        metadata = restore_metadata_for(defaults, new_name())
        outcome = self.restore(connector, endpoint, resource, repository, snapshot, metadata)
        try:
            good = self.validate(connector, endpoint, outcome.resource_name, repository, snapshot)
            assert good.valid, f"validation failed on an untouched restore: {good.message} {good.details}"
            tamper(outcome.resource_name)
            bad = self.validate(connector, endpoint, outcome.resource_name, repository, snapshot)
            assert not bad.valid, "validation passed on a tampered copy"
            assert bad.message.strip()
        finally:
            connector.delete_restored(endpoint, outcome.resource_name)

    def test_restore_over_an_existing_resource_is_refused(
        self,
        connector: Connector,
        endpoint: EndpointSpec,
        repository: Repository,
        make_resource: MakeResource,
        snapshot_state: StateOf,
        mutate: Mutate,
        occupied_metadata_for: OccupiedMetadataFor,
    ) -> None:
        resource = make_resource(new_name(), {})
        snapshot = self.backup(connector, endpoint, resource, repository)
        mutate(resource)
        state = snapshot_state(resource)
        metadata = occupied_metadata_for(connector.restore_metadata(endpoint, resource, snapshot), resource)
        if metadata is None:
            pytest.skip("this connector's contract test names no occupied restore target")
        with pytest.raises(ConnectorError):
            self.restore(connector, endpoint, resource, repository, snapshot, metadata)
        assert snapshot_state(resource) == state, "a refused restore changed the existing resource"

    def test_an_interrupted_backup_leaves_no_snapshot_and_a_clean_repository(
        self,
        connector: Connector,
        endpoint: EndpointSpec,
        repository: Repository,
        make_resource: MakeResource,
    ) -> None:
        resource = make_resource(new_name(), {})
        stopper = StopAfter(self.stop_after_bytes)
        with pytest.raises((ConnectorStopped, ConnectorError)):
            self.backup(connector, endpoint, resource, repository, heartbeat=stopper)
        assert stopper.calls, "the connector never called the heartbeat"
        reopened = Repository.open(repository.store, REPOSITORY_PASSWORD)
        assert reopened.list_snapshots() == [], "an interrupted backup committed a snapshot"
        report = check(reopened, read_data_fraction=1.0)
        assert report.ok, [problem.message for problem in report.problems]
        # The repository stays usable: the next run succeeds.
        snapshot = self.backup(connector, endpoint, resource, reopened)
        assert [item.id for item in reopened.list_snapshots()] == [snapshot.id]

    def test_backing_up_a_missing_resource_is_refused(
        self, connector: Connector, endpoint: EndpointSpec, repository: Repository
    ) -> None:
        with pytest.raises(ConnectorError):
            self.backup(connector, endpoint, new_name(), repository)
        assert repository.list_snapshots() == []


def closed_port() -> int:
    """A local port nothing listens on (for "unreachable server" endpoints)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class DatabaseNameRestores:
    """Mixin for database connectors whose restore target is a ``DatabaseName`` on the same server."""

    @pytest.fixture
    def restore_metadata_for(self) -> MetadataFor:
        return lambda defaults, name: {**defaults, "DatabaseName": name}

    @pytest.fixture
    def occupied_metadata_for(self) -> OccupiedMetadataFor:
        return lambda defaults, existing: {**defaults, "DatabaseName": existing}
