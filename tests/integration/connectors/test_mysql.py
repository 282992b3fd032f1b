"""MySQL/MariaDB connector against the real MariaDB on 127.0.0.1:3306: the contract, and more."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pymysql
import pytest
from contract import (
    REPOSITORY_PASSWORD,
    ConnectorContract,
    DatabaseNameRestores,
    MakeResource,
    Mutate,
    StateOf,
    new_name,
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
from backvault.sources.mysql import MysqlConnector

HOST, PORT, USER = "127.0.0.1", 3306, "root"
DEFAULT_TAGS = {"owner": "dba", "backvault-contract": "default"}

_SCHEMA = [
    "CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, born DATE, "
    "balance DECIMAL(12, 2), seen DATETIME(6), profile JSON, photo BLOB, ratio DOUBLE, small FLOAT, "
    "flag BIT(3), kind ENUM('a', 'b'), note TEXT CHARACTER SET utf8mb4)",
    "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, "
    "total DECIMAL(10, 2), note VARCHAR(200), FOREIGN KEY (customer_id) REFERENCES customers(id))",
    "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, message VARCHAR(200))",
    "CREATE VIEW big_spenders AS SELECT customer_id, SUM(total) AS spent FROM orders GROUP BY customer_id",
    "CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW "
    "INSERT INTO audit (message) VALUES (CONCAT('order ', NEW.id))",
    "CREATE FUNCTION order_count(customer INT) RETURNS INT READS SQL DATA "
    "RETURN (SELECT COUNT(*) FROM orders WHERE customer_id = customer)",
    "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE id < 0",
    "INSERT INTO customers (name, born, balance, seen, profile, photo, ratio, small, flag, kind, note) "
    "SELECT CONCAT('customer ', seq), DATE '1980-01-01' + INTERVAL seq DAY, seq * 1.5, "
    "TIMESTAMP '2024-01-01 00:00:00.123456' + INTERVAL seq HOUR, JSON_OBJECT('n', seq), UNHEX(MD5(seq)), "
    "seq / 7, seq / 3, seq % 8, IF(seq % 2, 'a', 'b'), CONCAT('naïve ☃ ', seq) FROM seq_1_to_400",
    "INSERT INTO customers (name) VALUES ('nulls everywhere')",
    "INSERT INTO orders (customer_id, total, note) SELECT 1 + seq % 400, seq * 0.25, REPEAT('x', seq % 50) "
    "FROM seq_1_to_3000",
]


def _admin(database: str | None = None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(host=HOST, port=PORT, user=USER, password="", database=database, autocommit=True)


def _run(statement: str, database: str | None = None) -> list[tuple[Any, ...]]:
    connection = _admin(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())
    finally:
        connection.close()


def _drop(name: str) -> None:
    _run(f"DROP DATABASE IF EXISTS `{name}`")


def _state(database: str) -> dict[str, Any]:
    """Tables' rows, columns, routines, triggers and events of a database."""
    state: dict[str, Any] = {
        "columns": _run(
            "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT "
            "FROM information_schema.COLUMNS "
            f"WHERE TABLE_SCHEMA = '{database}' ORDER BY 1, 2"
        ),
        "routines": _run(
            "SELECT ROUTINE_NAME, ROUTINE_DEFINITION FROM information_schema.ROUTINES "
            f"WHERE ROUTINE_SCHEMA = '{database}' ORDER BY 1"
        ),
        "triggers": _run(
            "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            f"WHERE TRIGGER_SCHEMA = '{database}' ORDER BY 1"
        ),
        "events": _run(
            "SELECT EVENT_NAME, EVENT_DEFINITION FROM information_schema.EVENTS "
            f"WHERE EVENT_SCHEMA = '{database}' ORDER BY 1"
        ),
    }
    for (table,) in _run(
        f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{database}' "
        "AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1"
    ):
        state[table] = sorted(_run(f"SELECT * FROM `{database}`.`{table}`"), key=repr)
    return state


def _endpoint(**connection: Any) -> EndpointSpec:
    return EndpointSpec(
        "maria",
        ResourceType.MYSQL,
        {"host": HOST, "port": PORT, "user": USER, **connection},
        credentials={"password": ""},
        default_tags=DEFAULT_TAGS,
    )


def _create(name: str, comment: str | None = None) -> None:
    suffix = f" COMMENT '{comment}'" if comment else ""
    _run(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci{suffix}")
    for statement in _SCHEMA:
        _run(statement, name)


class TestMysqlContract(DatabaseNameRestores, ConnectorContract):
    resource_type = ResourceType.MYSQL

    @pytest.fixture
    def endpoint(self) -> EndpointSpec:
        return _endpoint()

    @pytest.fixture
    def unusable_endpoints(self) -> dict[str, EndpointSpec]:
        base = {"host": HOST, "port": PORT, "user": USER}
        return {
            "wrong password": EndpointSpec("w", ResourceType.MYSQL, base, {"password": "s3cret-wrong-pw"}),
            "unknown user": EndpointSpec(
                "u", ResourceType.MYSQL, {**base, "user": "nobody_bv"}, {"password": "x1y2"}
            ),
            "unreachable server": EndpointSpec(
                "x", ResourceType.MYSQL, {**base, "port": 1}, {"password": "pw-z9"}
            ),
            "bad port": EndpointSpec("p", ResourceType.MYSQL, {**base, "port": 70000}),
        }

    @pytest.fixture
    def make_resource(self) -> Iterator[MakeResource]:
        made: list[str] = []

        def make(name: str, tags: Mapping[str, str]) -> str:
            made.append(name)
            _create(name, json.dumps({"backvault": {"tags": dict(tags)}}) if tags else None)
            return name

        yield make
        for name in made:
            _drop(name)

    @pytest.fixture
    def mutate(self) -> Mutate:
        def change(database: str) -> None:
            _run("UPDATE customers SET balance = balance + 1 WHERE id % 10 = 0", database)
            _run("DELETE FROM orders WHERE id % 13 = 0", database)
            _run("INSERT INTO orders (customer_id, total) VALUES (3, 99.5)", database)
            _run("ALTER TABLE customers ADD COLUMN extra VARCHAR(10) DEFAULT 'new'", database)

        return change

    @pytest.fixture
    def snapshot_state(self) -> StateOf:
        return _state

    @pytest.fixture
    def tamper(self) -> Mutate:
        def damage(database: str) -> None:
            _run("UPDATE orders SET note = 'tampered' WHERE id = 42", database)

        return damage


# --- beyond the contract ---------------------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[str]:
    name = new_name()
    _create(name)
    try:
        yield name
    finally:
        _drop(name)


@pytest.fixture(scope="module")
def big_database() -> Iterator[str]:
    """A database whose dump is about 15 MB, so a dump can be cut while the tool is still writing."""
    name = new_name()
    _run(f"CREATE DATABASE `{name}`")
    try:
        _run("CREATE TABLE filler (id INT PRIMARY KEY, payload VARCHAR(100))", name)
        _run(
            "INSERT INTO filler SELECT seq, CONCAT(MD5(seq), MD5(seq * 7), MD5(seq * 13)) "
            "FROM seq_1_to_150000",
            name,
        )
        yield name
    finally:
        _drop(name)


def _dump_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() in ("mariadb-dump", "mysqldump")]


def _assert_no_snapshot_and_clean(repository: Repository) -> None:
    reopened = Repository.open(repository.store, REPOSITORY_PASSWORD)
    assert reopened.list_snapshots() == []
    report = check(reopened, read_data_fraction=1.0)
    assert report.ok, [problem.message for problem in report.problems]


def test_a_stopped_job_kills_the_dump_mid_stream(big_database: str, repository: Repository) -> None:
    seen_running: list[bool] = []

    def stop(processed: int) -> None:
        seen_running.append(bool(_dump_children()))
        raise ConnectorStopped("job cancelled")

    with pytest.raises(ConnectorStopped):
        MysqlConnector().backup(BackupRequest(_endpoint(), big_database, repository, heartbeat=stop))
    assert seen_running == [True]
    assert _dump_children() == []
    _assert_no_snapshot_and_clean(repository)
    # the brief global read lock is gone: writes go through
    _run("INSERT INTO filler VALUES (0, 'after')", big_database)
    _run("DELETE FROM filler WHERE id = 0", big_database)


def test_a_killed_dump_fails_the_backup(big_database: str, repository: Repository) -> None:
    def kill(processed: int) -> None:
        for child in _dump_children():
            child.kill()

    with pytest.raises(ConnectorError, match=r"dump failed \(killed by SIGKILL\)"):
        MysqlConnector().backup(BackupRequest(_endpoint(), big_database, repository, heartbeat=kill))
    _assert_no_snapshot_and_clean(repository)


def test_the_manifest_matches_the_dump_while_writes_go_on(database: str, repository: Repository) -> None:
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        connection = _admin(database)
        try:
            with connection.cursor() as cursor:
                while not stop.is_set():
                    cursor.execute("INSERT INTO orders (customer_id, total) VALUES (5, 1.0)")
                    written.append(1)
        finally:
            connection.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        connector = MysqlConnector()
        endpoint = _endpoint()
        snapshot = connector.backup(BackupRequest(endpoint, database, repository))
    finally:
        stop.set()
        writer.join()
    assert written, "the writer never wrote"
    outcome = connector.restore(RestoreRequest(endpoint, database, repository, snapshot, {}))
    try:
        result = connector.validate(ValidationRequest(endpoint, outcome.resource_name, repository, snapshot))
        assert result.valid, result.message
        # the trigger copied into the restore: the audit rows match the orders that were dumped
        restored_orders = _run("SELECT COUNT(*) FROM orders", outcome.resource_name)[0][0]
        assert _run("SELECT COUNT(*) FROM audit", outcome.resource_name)[0][0] == restored_orders
        events = _run(
            f"SELECT STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{outcome.resource_name}'"
        )
        assert events == [("DISABLED",)], "a restored copy must not run the original's scheduled events"
    finally:
        connector.delete_restored(endpoint, outcome.resource_name)


def test_unchanged_database_dumps_dedup_completely(database: str, repository: Repository) -> None:
    connector = MysqlConnector()
    first = connector.backup(BackupRequest(_endpoint(), database, repository))
    second = connector.backup(BackupRequest(_endpoint(), database, repository))
    assert first.summary["chunks_new"] > 0
    # only the manifest (its time stamp) is new
    assert second.summary["chunks_new"] <= 2


def test_discover_reads_the_tags_table_and_filters(database: str) -> None:
    _run("CREATE TABLE backvault_tags (tag_key VARCHAR(128) PRIMARY KEY, tag_value VARCHAR(256))", database)
    _run("INSERT INTO backvault_tags VALUES ('backup', 'hourly'), ('owner', 'shop-team')", database)
    found = {item.name: item for item in MysqlConnector().discover(_endpoint())}
    assert found[database].tags == {**DEFAULT_TAGS, "backup": "hourly", "owner": "shop-team"}
    assert not {"mysql", "sys", "information_schema", "performance_schema"} & set(found)
    assert database not in {
        item.name for item in MysqlConnector().discover(_endpoint(databases=["nomatch*"]))
    }


def test_backup_without_the_global_lock_is_allowed_when_asked(database: str, repository: Repository) -> None:
    connector = MysqlConnector()
    endpoint = _endpoint(consistent_manifest=False)
    snapshot = connector.backup(BackupRequest(endpoint, database, repository))
    outcome = connector.restore(RestoreRequest(endpoint, database, repository, snapshot, {}))
    try:
        assert connector.validate(
            ValidationRequest(endpoint, outcome.resource_name, repository, snapshot)
        ).valid
    finally:
        connector.delete_restored(endpoint, outcome.resource_name)


def test_option_file_is_private_and_removed() -> None:
    from backvault.sources.mysql.session import Settings

    settings = Settings(
        EndpointSpec("o", ResourceType.MYSQL, {"host": HOST}, credentials={"password": 'p"a\\ss #word'})
    )
    with settings.option_file() as path:
        assert (Path(path).stat().st_mode & 0o777) == 0o600
        assert 'password="p"a\\\\ss #word"' in Path(path).read_text()
    assert not Path(path).exists()
