"""Redis connector: the contract on the shared server's high databases, instance backups on private servers.

Contract tests use databases 8-15 of 127.0.0.1:6379 (emptied afterwards; other databases are never
touched). The instance tests (RDB over SYNC, restore into a fresh instance) run on private
``redis-server`` processes, so their RDB holds only test data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from contract import (
    REPOSITORY_PASSWORD,
    ConnectorContract,
    MakeResource,
    MetadataFor,
    Mutate,
    OccupiedMetadataFor,
    StateOf,
    StopAfter,
)

from backvault.domain.arn import ResourceType
from backvault.repo.check import check
from backvault.repo.repository import Repository
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    ConnectorStopped,
    EndpointSpec,
    RestoreRequest,
    ValidationRequest,
)
from backvault.sources.redis import RedisConnector
from backvault.sources.s3 import streaming
from backvault.sources.streams import find_file, open_content

DEFAULT_TAGS = {"owner": "platform", "backvault-contract": "default"}
TEST_DATABASES = range(15, 7, -1)
PASSWORD = "redis-test-secret-Zq81"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class RedisServer:
    """A private redis-server on a free port; the config (and password) go through stdin, not argv."""

    def __init__(self, directory: Path, password: str | None = None, rdb_file: str = "dump.rdb") -> None:
        self.port = _free_port()
        self.password = password
        directory.mkdir(parents=True, exist_ok=True)
        config = [
            f"port {self.port}",
            "bind 127.0.0.1",
            'save ""',
            "appendonly no",
            f"dir {directory}",
            f"dbfilename {rdb_file}",
            "databases 16",
        ]
        if password:
            config.append(f"requirepass {password}")
        self.process = subprocess.Popen(
            ["redis-server", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        assert self.process.stdin is not None
        self.process.stdin.write("\n".join(config).encode() + b"\n")
        self.process.stdin.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.05)

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, password=self.password)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def shared_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """6379 when the shared server runs; otherwise a private server for this module."""
    try:
        with redis.Redis(port=6379, socket_connect_timeout=1) as probe:
            probe.ping()
        yield 6379
    except redis.ConnectionError:
        server = RedisServer(tmp_path_factory.mktemp("redis-shared"))
        yield server.port
        server.stop()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(
        name: str = "server", password: str | None = PASSWORD, rdb_file: str = "dump.rdb"
    ) -> RedisServer:
        server = RedisServer(tmp_path / name, password, rdb_file)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def fill(client: redis.Redis, marker: str) -> None:
    """One key of every type, binary names and values, and keys with and without a TTL."""
    client.set(f"{marker}:string", "hello")
    client.set(b"bin\x00\xffkey", bytes(range(256)))
    client.hset("user:1", mapping={"name": "Ada", "age": "36", "blob": b"\x00\x01"})
    client.rpush("queue", *[f"job-{n}" for n in range(50)])
    client.sadd("colors", "red", "green", "blue")
    client.zadd("scores", {"ada": 1.5, "bob": -2.25, "eve": 1e10})
    client.xadd("events", {"kind": "login", "user": "ada"}, id="1-1")
    client.xadd("events", {"kind": "logout", "user": "ada"}, id="2-1")
    client.set("session", "temporary", ex=3600)
    client.set("big", b"x" * 200_000 + b"tail")
    for number in range(300):
        client.set(f"counter:{number}", number)


def state_of(client: redis.Redis) -> dict[bytes, tuple[Any, ...]]:
    """Every key's type, value and whether it has a TTL (the TTL itself keeps running down)."""
    state: dict[bytes, tuple[Any, ...]] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        readers: dict[bytes, Callable[[], Any]] = {
            b"string": lambda key=key: client.get(key),
            b"hash": lambda key=key: client.hgetall(key),
            b"list": lambda key=key: client.lrange(key, 0, -1),
            b"set": lambda key=key: sorted(client.smembers(key)),
            b"zset": lambda key=key: client.zrange(key, 0, -1, withscores=True),
            b"stream": lambda key=key: client.xrange(key),
        }
        state[key] = (kind, readers[kind](), client.pttl(key) > 0)
    return state


def _backup(
    connector: RedisConnector, endpoint: EndpointSpec, resource: str, repository: Repository, **kw: Any
) -> Any:
    return connector.backup(BackupRequest(endpoint, resource, repository, **kw))


class TestRedisContract(ConnectorContract):
    resource_type = ResourceType.REDIS

    @pytest.fixture
    def endpoint(self, shared_port: int) -> EndpointSpec:
        connection = {"host": "127.0.0.1", "port": shared_port, "resources": "databases"}
        return EndpointSpec("cache", ResourceType.REDIS, connection, {}, DEFAULT_TAGS)

    @pytest.fixture
    def touched(self, shared_port: int) -> Iterator[set[int]]:
        """Test databases used by a test; emptied at teardown."""
        used: set[int] = set()
        yield used
        for db in used:
            with redis.Redis(port=shared_port, db=db) as client:
                client.flushdb()

    @pytest.fixture
    def unusable_endpoints(
        self, endpoint: EndpointSpec, private_server: Callable[..., RedisServer]
    ) -> dict[str, EndpointSpec]:
        closed = {**endpoint.connection, "port": _free_port(), "timeout": 2}
        locked = {"host": "127.0.0.1", "port": private_server("locked").port}
        return {
            "unreachable server": EndpointSpec("down", ResourceType.REDIS, closed),
            "wrong password": EndpointSpec(
                "badpass", ResourceType.REDIS, locked, {"password": "not-it-0815"}
            ),
            "no password": EndpointSpec("nopass", ResourceType.REDIS, locked),
        }

    @pytest.fixture
    def make_resource(self, shared_port: int, touched: set[int]) -> MakeResource:
        def make(name: str, tags: Mapping[str, str]) -> str:
            for db in TEST_DATABASES:
                with redis.Redis(port=shared_port, db=db) as client:
                    if db not in touched and client.dbsize() == 0:
                        touched.add(db)
                        fill(client, name)
                        if tags:
                            client.hset("backvault:tags", mapping=dict(tags))
                        return str(db)
            raise RuntimeError("no empty test database (8-15) on the Redis server")

        return make

    @pytest.fixture
    def mutate(self, shared_port: int) -> Mutate:
        def change(resource: str) -> None:
            with redis.Redis(port=shared_port, db=int(resource)) as client:
                client.set("counter:7", "changed")
                client.delete("colors")
                client.hset("user:1", "age", "37")
                client.set("brand-new", "value")

        return change

    @pytest.fixture
    def snapshot_state(self, shared_port: int) -> StateOf:
        def read(resource: str) -> dict[bytes, tuple[Any, ...]]:
            with redis.Redis(port=shared_port, db=int(resource)) as client:
                return state_of(client)

        return read

    @pytest.fixture
    def tamper(self, shared_port: int) -> Mutate:
        def damage(resource: str) -> None:
            with redis.Redis(port=shared_port, db=int(resource)) as client:
                client.hset("user:1", "name", "Mallory")  # same key count: only the sampled digest tells

        return damage

    @pytest.fixture
    def restore_metadata_for(self, touched: set[int]) -> MetadataFor:
        def aim(defaults: dict[str, str], _name: str) -> dict[str, str]:
            touched.add(int(defaults["TargetDb"]))
            assert int(defaults["TargetDb"]) >= 8, "the default target would be a database other tests use"
            return dict(defaults)

        return aim

    @pytest.fixture
    def occupied_metadata_for(self) -> OccupiedMetadataFor:
        return lambda defaults, existing: {**defaults, "TargetDb": existing}


# --- whole instances on private servers ---------------------------------------------------------


def _instance_endpoint(server: RedisServer, password: str | None = PASSWORD) -> EndpointSpec:
    credentials = {"password": password} if password else {}
    connection = {"host": "127.0.0.1", "port": server.port}
    return EndpointSpec("private", ResourceType.REDIS, connection, credentials, {"tier": "cache"})


def test_instance_backup_restores_into_a_fresh_instance_from_the_rdb_and_key_by_key(
    private_server: Callable[..., RedisServer], repository: Repository, tmp_path: Path
) -> None:
    source = private_server("source")
    for db in (0, 3):
        with source.client(db) as client:
            fill(client, f"db{db}")
    with source.client(0) as client:
        client.hset("backvault:tags", mapping={"backup": "daily"})
    connector = RedisConnector()
    endpoint = _instance_endpoint(source)
    assert [(found.name, dict(found.tags)) for found in connector.discover(endpoint)] == [
        ("", {"tier": "cache", "backup": "daily"})
    ]
    expected = {db: state_of(source.client(db)) for db in (0, 3)}
    snapshot = _backup(connector, endpoint, "", repository)
    assert snapshot.source["databases"] == [0, 3] and snapshot.source["rdb"]
    with open_content(repository, find_file(repository, snapshot, "rdb/dump.rdb")) as stream:
        assert stream.read(5) == b"REDIS"
    with source.client(3) as client:
        client.set("after-the-backup", "1")

    # A fresh instance started from the restored RDB file.
    rdb_path = tmp_path / "fresh" / "restored.rdb"
    connector.restore(RestoreRequest(endpoint, "", repository, snapshot, {"RdbFile": str(rdb_path)}))
    with pytest.raises(ConnectorError, match="already exists"):
        connector.restore(RestoreRequest(endpoint, "", repository, snapshot, {"RdbFile": str(rdb_path)}))
    fresh = private_server("fresh", password=None, rdb_file="restored.rdb")
    assert {db: state_of(fresh.client(db)) for db in (0, 3)} == expected

    # Key by key into another (empty) server, each database to its own index; then validation.
    target = private_server("target")
    metadata = {"TargetHost": "127.0.0.1", "TargetPort": str(target.port)}
    outcome = connector.restore(RestoreRequest(endpoint, "", repository, snapshot, metadata))
    assert outcome.resource_name == "" and outcome.problems == []
    assert {db: state_of(target.client(db)) for db in (0, 3)} == expected
    target_endpoint = _instance_endpoint(target)
    assert connector.validate(ValidationRequest(target_endpoint, "", repository, snapshot)).valid
    with pytest.raises(ConnectorError, match="holds"):
        connector.restore(RestoreRequest(endpoint, "", repository, snapshot, metadata))
    with target.client(3) as client:
        client.delete("queue")
    result = connector.validate(ValidationRequest(target_endpoint, "", repository, snapshot))
    assert not result.valid and "db 3" in result.message

    # One database of the instance snapshot into a chosen database.
    with pytest.raises(ConnectorError, match="TargetDb can only be used for one"):
        connector.restore(RestoreRequest(endpoint, "", repository, snapshot, {"TargetDb": "9"}))


def test_wrong_password_and_interrupted_rdb_transfer(
    private_server: Callable[..., RedisServer], repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = private_server("locked")
    big = os.urandom(3_000_000)  # random: the RDB cannot compress it away
    with server.client() as client:
        client.set("big", big)
    connector = RedisConnector()
    for broken in (_instance_endpoint(server, "wrong-password-123"), _instance_endpoint(server, None)):
        with pytest.raises(ConnectorError) as caught:
            connector.check_endpoint(broken)
        assert "credentials" in str(caught.value) and PASSWORD not in str(caught.value)
        assert "wrong-password-123" not in str(caught.value)

    monkeypatch.setattr(streaming, "HEARTBEAT_SECONDS", 0.0)  # a heartbeat on every read
    stopper = StopAfter(1)
    with pytest.raises(ConnectorStopped):
        _backup(connector, _instance_endpoint(server), "", repository, heartbeat=stopper)
    assert stopper.calls[-1] < len(big), "the stop came only after the whole RDB was read"
    monkeypatch.undo()
    reopened = Repository.open(repository.store, REPOSITORY_PASSWORD)
    assert reopened.list_snapshots() == []
    assert check(reopened, read_data_fraction=1.0).ok
    with server.client() as client:  # the aborted 'replica' is gone and the server still serves
        assert client.get("big") == big

    keys_only = _backup(connector, _instance_endpoint(server), "", reopened, options={"RdbSnapshot": "false"})
    assert keys_only.source["rdb"] is False
    with pytest.raises(ConnectorError, match="no RDB"):
        connector.restore(
            RestoreRequest(_instance_endpoint(server), "", reopened, keys_only, {"RdbFile": "/x"})
        )


def test_bad_resource_names_and_metadata_are_refused(
    private_server: Callable[..., RedisServer], repository: Repository
) -> None:
    server = private_server("names")
    connector = RedisConnector()
    endpoint = _instance_endpoint(server)
    with pytest.raises(ConnectorError, match="no database 99"):
        _backup(connector, endpoint, "99", repository)
    with server.client(2) as client:
        client.set("k", "v")
    snapshot = _backup(connector, endpoint, "2", repository)
    with pytest.raises(ConnectorError, match="TargetDb"):
        connector.restore(RestoreRequest(endpoint, "2", repository, snapshot, {"TargetDb": "two"}))
    with pytest.raises(ConnectorError, match="Refusing to flush"):
        connector.delete_restored(endpoint, "")
    outcome = connector.restore(RestoreRequest(endpoint, "2", repository, snapshot, {"TargetDb": "5"}))
    assert outcome.resource_name == "5"
    assert server.client(5).get("k") == b"v"


def test_a_server_lost_mid_transfer_fails_the_backup_with_a_clear_error(
    private_server: Callable[..., RedisServer], repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = private_server("dying")
    with server.client() as client:
        client.set("big", os.urandom(4_000_000))
    monkeypatch.setattr(streaming, "HEARTBEAT_SECONDS", 0.0)
    beats: list[int] = []

    def kill_the_server(processed: int) -> None:
        beats.append(processed)
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    with pytest.raises(ConnectorError, match="was cut after"):
        _backup(RedisConnector(), _instance_endpoint(server), "", repository, heartbeat=kill_the_server)
    assert beats and beats[0] < 4_000_000
    assert Repository.open(repository.store, REPOSITORY_PASSWORD).list_snapshots() == []
