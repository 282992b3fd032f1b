"""S3 connector against moto's server: the connector contract, incremental backups, restore targets."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
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
    StopAfter,
    closed_port,
    new_name,
)

from backvault.domain.arn import ResourceType
from backvault.repo.check import check
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    ConnectorStopped,
    EndpointSpec,
    RestoreRequest,
    ValidationRequest,
)
from backvault.sources.s3 import S3Connector, streaming
from backvault.sources.s3.backup import SMALL_OBJECT

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret-key"}
DEFAULT_TAGS = {"owner": "platform", "backvault-contract": "default"}
# Keys that cannot all be paths: a key that is also a "folder", a trailing slash, an empty part.
ODD_KEYS = ["a", "a/b", "folder/", "x//y", "./dot", "space name ü.txt"]


def _client(endpoint_url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _empty_and_delete(client: Any, bucket: str) -> None:
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
    except client.exceptions.NoSuchBucket:
        pass


def _put(client: Any, bucket: str, key: str, body: bytes, tags: Mapping[str, str] | None = None) -> None:
    extra: dict[str, Any] = {
        "ContentType": "text/plain",
        "Metadata": {"origin": "test", "key-length": str(len(key))},
    }
    if tags:
        extra["Tagging"] = "&".join(f"{name}={value}" for name, value in tags.items())
    client.put_object(Bucket=bucket, Key=key, Body=body, **extra)


def bucket_state(client: Any, resource_name: str) -> dict[str, tuple[Any, ...]]:
    """Every object under BUCKET[/PREFIX]: sha256, size, content type, user metadata, tags."""
    bucket, _, prefix = resource_name.partition("/")
    state: dict[str, tuple[Any, ...]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            response = client.get_object(Bucket=bucket, Key=item["Key"])
            body = response["Body"].read()
            tags = client.get_object_tagging(Bucket=bucket, Key=item["Key"])["TagSet"]
            state[item["Key"][len(prefix) :]] = (
                hashlib.sha256(body).hexdigest(),
                len(body),
                response.get("ContentType"),
                response.get("Metadata"),
                sorted((tag["Key"], tag["Value"]) for tag in tags),
            )
    return state


class GetCounter:
    """A boto3 session factory that counts the GetObject calls made through its sessions."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self) -> Any:
        session = boto3.session.Session()
        session.events.register("before-call.s3.GetObject", self._count)
        return session

    def _count(self, params: dict[str, Any], **_kwargs: Any) -> None:
        self.calls.append(params.get("url_path", ""))


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[Any]:
    client = _client(moto_endpoint)
    yield client
    client.close()


@pytest.fixture
def endpoint(moto_endpoint: str) -> EndpointSpec:
    connection = {"endpoint_url": moto_endpoint, "region": "us-east-1"}
    return EndpointSpec("objects", ResourceType.S3, connection, CREDENTIALS, DEFAULT_TAGS)


@pytest.fixture
def buckets(s3: Any) -> Iterator[list[str]]:
    """Names of buckets to remove at teardown."""
    made: list[str] = []
    yield made
    for bucket in made:
        _empty_and_delete(s3, bucket)


@pytest.fixture
def make_bucket(s3: Any, buckets: list[str]) -> MakeResource:
    def make(name: str, tags: Mapping[str, str]) -> str:
        s3.create_bucket(Bucket=name)
        buckets.append(name)
        if tags:
            tag_set = [{"Key": key, "Value": value} for key, value in tags.items()]
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_set})
        for number in range(12):
            _put(
                s3,
                name,
                f"data/{number:03d}.txt",
                f"object {number}\n".encode() * (number + 1),
                {"n": str(number)},
            )
        for key in ODD_KEYS:
            _put(s3, name, key, f"odd {key}".encode())
        _put(s3, name, "empty", b"")
        _put(s3, name, "random.bin", os.urandom(300_000), {"kind": "random", "team": "x y"})
        return name

    return make


class TestS3Contract(ConnectorContract):
    resource_type = ResourceType.S3

    @pytest.fixture
    def endpoint(self, endpoint: EndpointSpec) -> EndpointSpec:
        return endpoint

    @pytest.fixture
    def unusable_endpoints(self, endpoint: EndpointSpec) -> dict[str, EndpointSpec]:
        unreachable = {"endpoint_url": f"http://127.0.0.1:{closed_port()}", "connect_timeout": 1}
        return {
            "unreachable server": EndpointSpec("down", ResourceType.S3, unreachable, CREDENTIALS),
            "no credentials": EndpointSpec("nokeys", ResourceType.S3, dict(endpoint.connection), {}),
        }

    @pytest.fixture
    def make_resource(self, make_bucket: MakeResource) -> MakeResource:
        return make_bucket

    @pytest.fixture
    def mutate(self, s3: Any) -> Mutate:
        def change(bucket: str) -> None:
            _put(s3, bucket, "data/000.txt", b"changed content")
            s3.delete_object(Bucket=bucket, Key="data/001.txt")
            _put(s3, bucket, "data/new.txt", b"a new object", {"new": "yes"})
            s3.put_object_tagging(
                Bucket=bucket, Key="data/002.txt", Tagging={"TagSet": [{"Key": "n", "Value": "re"}]}
            )

        return change

    @pytest.fixture
    def snapshot_state(self, s3: Any) -> StateOf:
        return lambda resource: bucket_state(s3, resource)

    @pytest.fixture
    def tamper(self, s3: Any) -> Mutate:
        def damage(resource: str) -> None:
            bucket, _, prefix = resource.partition("/")
            key = prefix + "data/005.txt"
            size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            s3.put_object(Bucket=bucket, Key=key, Body=b"X" * size)

        return damage

    @pytest.fixture
    def restore_metadata_for(self, buckets: list[str]) -> MetadataFor:
        def aim(defaults: dict[str, str], name: str) -> dict[str, str]:
            buckets.append(name)  # removed at teardown even if the test fails before delete_restored
            return {**defaults, "TargetBucket": name}

        return aim

    @pytest.fixture
    def occupied_metadata_for(self) -> OccupiedMetadataFor:
        return lambda defaults, existing: {**defaults, "TargetBucket": existing}


# --- beyond the contract --------------------------------------------------------------------------


def _backup(
    connector: S3Connector,
    endpoint: EndpointSpec,
    bucket: str,
    repository: Repository,
    heartbeat: Callable[[int], None] | None = None,
    options: Mapping[str, str] | None = None,
) -> Snapshot:
    request = BackupRequest(endpoint, bucket, repository, options=dict(options or {}))
    if heartbeat is not None:
        request = BackupRequest(
            endpoint, bucket, repository, options=dict(options or {}), heartbeat=heartbeat
        )
    return connector.backup(request)


def test_unchanged_objects_are_not_downloaded_again(
    endpoint: EndpointSpec, repository: Repository, make_bucket: MakeResource, s3: Any, buckets: list[str]
) -> None:
    counter = GetCounter()
    connector = S3Connector(session_factory=counter)
    bucket = make_bucket(new_name(), {})
    total = len(bucket_state(s3, bucket))
    first = _backup(connector, endpoint, bucket, repository)
    assert len(counter.calls) == total
    assert first.source["objects_downloaded"] == total and first.source["objects_reused"] == 0
    first_state = bucket_state(s3, bucket)

    counter.calls.clear()
    second = _backup(connector, endpoint, bucket, repository)
    assert counter.calls == [], "an unchanged object was downloaded again"
    assert second.source["objects_reused"] == total and second.source["parent"] == first.id

    _put(s3, bucket, "data/003.txt", b"changed once")
    s3.put_object_tagging(
        Bucket=bucket, Key="data/004.txt", Tagging={"TagSet": [{"Key": "only", "Value": "tags"}]}
    )
    counter.calls.clear()
    third = _backup(connector, endpoint, bucket, repository)
    assert len(counter.calls) == 1 and counter.calls[0].endswith("/data/003.txt")
    assert third.source["objects_downloaded"] == 1 and third.source["objects_reused"] == total - 1

    # Every point restores to exactly what the bucket held when it was taken (tags included).
    third_state = bucket_state(s3, bucket)
    for snapshot, state in ((first, first_state), (third, third_state)):
        target = new_name()
        buckets.append(target)
        outcome = connector.restore(
            RestoreRequest(endpoint, bucket, repository, snapshot, {"TargetBucket": target})
        )
        assert outcome.problems == []
        assert bucket_state(s3, target) == state
    assert check(Repository.open(repository.store, REPOSITORY_PASSWORD), read_data_fraction=1.0).ok


def test_restore_into_a_prefix_of_an_existing_bucket_and_overwrite(
    endpoint: EndpointSpec, repository: Repository, make_bucket: MakeResource, s3: Any, buckets: list[str]
) -> None:
    connector = S3Connector()
    bucket = make_bucket(new_name(), {})
    state = bucket_state(s3, bucket)
    snapshot = _backup(connector, endpoint, bucket, repository)
    target = make_bucket(new_name(), {})
    metadata = {"TargetBucket": target, "TargetPrefix": "restored/"}
    outcome = connector.restore(RestoreRequest(endpoint, bucket, repository, snapshot, metadata))
    assert outcome.resource_name == f"{target}/restored/"
    assert bucket_state(s3, outcome.resource_name) == state
    assert connector.validate(ValidationRequest(endpoint, outcome.resource_name, repository, snapshot)).valid

    # The prefix is now occupied: refused, unless Overwrite is given.
    with pytest.raises(ConnectorError, match="Overwrite"):
        connector.restore(RestoreRequest(endpoint, bucket, repository, snapshot, metadata))
    s3.put_object(Bucket=target, Key="restored/data/000.txt", Body=b"scribbled")
    connector.restore(
        RestoreRequest(endpoint, bucket, repository, snapshot, {**metadata, "Overwrite": "true"})
    )
    assert bucket_state(s3, outcome.resource_name) == state

    # A missing object and changed tags are both reported by validation.
    s3.delete_object(Bucket=target, Key="restored/data/007.txt")
    s3.put_object_tagging(
        Bucket=target, Key="restored/random.bin", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}
    )
    result = connector.validate(ValidationRequest(endpoint, outcome.resource_name, repository, snapshot))
    assert not result.valid
    assert any("data/007.txt: missing" in problem for problem in result.details["Problems"])
    assert any("random.bin: tags differ" in problem for problem in result.details["Problems"])

    connector.delete_restored(endpoint, outcome.resource_name)
    assert s3.list_objects_v2(Bucket=target, Prefix="restored/")["KeyCount"] == 0
    assert s3.list_objects_v2(Bucket=target)["KeyCount"] > 0, "delete_restored went beyond the prefix"


def test_a_large_object_is_streamed_and_an_interruption_mid_object_commits_nothing(
    endpoint: EndpointSpec,
    repository: Repository,
    s3: Any,
    buckets: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streaming, "HEARTBEAT_SECONDS", 0.0)  # a heartbeat on every read: a stop mid-object
    connector = S3Connector()
    bucket = new_name()
    s3.create_bucket(Bucket=bucket)
    buckets.append(bucket)
    large = os.urandom(SMALL_OBJECT + 3 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big/blob.bin", Body=large)
    stopper = StopAfter(SMALL_OBJECT // 2)
    with pytest.raises(ConnectorStopped):
        _backup(connector, endpoint, bucket, repository, heartbeat=stopper)
    assert max(stopper.calls) < len(large), "the stop came only after the whole object was read"
    reopened = Repository.open(repository.store, REPOSITORY_PASSWORD)
    assert reopened.list_snapshots() == []
    assert check(reopened, read_data_fraction=1.0).ok

    snapshot = _backup(connector, endpoint, bucket, reopened)
    target = new_name()
    buckets.append(target)
    connector.restore(RestoreRequest(endpoint, bucket, reopened, snapshot, {"TargetBucket": target}))
    assert s3.get_object(Bucket=target, Key="big/blob.bin")["Body"].read() == large
    assert connector.validate(ValidationRequest(endpoint, target, reopened, snapshot)).valid


def test_a_missing_bucket_and_bad_options_are_refused(endpoint: EndpointSpec, repository: Repository) -> None:
    connector = S3Connector()
    with pytest.raises(ConnectorError, match="does not exist"):
        _backup(connector, endpoint, new_name(), repository)
    with pytest.raises(ConnectorError, match="not a bucket name"):
        _backup(connector, endpoint, "Not_A_Bucket", repository)
    with pytest.raises(ConnectorError, match="ObjectTags"):
        _backup(connector, endpoint, "some-bucket", repository, options={"ObjectTags": "sometimes"})
