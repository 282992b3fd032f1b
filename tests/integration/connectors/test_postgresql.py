"""PostgreSQL connector against the real server on 127.0.0.1:5432: the contract, and dumps that die."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
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
from psycopg import sql

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
from backvault.sources.postgresql import PostgresqlConnector
from backvault.sources.streams import find_file, open_content

HOST, PORT, USER, PASSWORD = "127.0.0.1", 5432, "postgres", "postgres"
DEFAULT_TAGS = {"owner": "dba", "backvault-contract": "default"}

_SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, born date, balance numeric(12, 2),
                        seen timestamptz, profile jsonb, photo bytea, scores int[], ratio double precision);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id),
                     placed timestamptz NOT NULL DEFAULT now(), total numeric, note text);
CREATE SCHEMA archive;
CREATE TABLE archive.old_orders (LIKE orders);
CREATE VIEW big_spenders AS SELECT customer_id, sum(total) AS spent FROM orders GROUP BY customer_id;
CREATE FUNCTION order_count(int) RETURNS bigint LANGUAGE sql
    AS 'SELECT count(*) FROM orders WHERE customer_id = $1';
INSERT INTO customers (name, born, balance, seen, profile, photo, scores, ratio)
SELECT 'customer ' || g, date '1980-01-01' + g, g * 1.5,
       timestamptz '2024-01-01 00:00+00' + g * interval '1 hour',
       jsonb_build_object('n', g, 'vip', g % 5 = 0), decode(md5(g::text), 'hex'), ARRAY[g, g * 2],
       g / 7.0
FROM generate_series(1, 400) AS g;
INSERT INTO customers (name) VALUES ('nulls everywhere');
INSERT INTO orders (customer_id, placed, total, note)
SELECT 1 + g % 400, timestamptz '2024-02-01 00:00+00' + g * interval '1 minute', g * 0.25, repeat('x', g % 50)
FROM generate_series(1, 3000) AS g;
INSERT INTO archive.old_orders SELECT * FROM orders WHERE id <= 100;
"""


def _admin(database: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=database, autocommit=True
    )


def _drop(name: str) -> None:
    with _admin() as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _state(database: str) -> dict[str, Any]:
    """Schema objects and every table's rows, as text, sorted."""
    with _admin(database) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        state: dict[str, Any] = {
            "columns": connection.execute(
                "SELECT table_schema, table_name, column_name, data_type, column_default "
                "FROM information_schema.columns "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                "ORDER BY 1, 2, 3"
            ).fetchall(),
            "routines": connection.execute(
                "SELECT routine_schema, routine_name FROM information_schema.routines "
                "WHERE routine_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            ).fetchall(),
            "sequences": connection.execute(
                "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2"
            ).fetchall(),
        }
        tables = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("SELECT t::text FROM {} AS t ORDER BY 1").format(sql.Identifier(schema, table))
            state[f"{schema}.{table}"] = [row[0] for row in connection.execute(query)]
        return state


def _server_checks_passwords() -> bool:
    try:
        psycopg.connect(
            host=HOST, port=PORT, user=USER, password="certainly-wrong", dbname="postgres"
        ).close()
    except psycopg.OperationalError:
        return True
    return False


def _endpoint(**connection: Any) -> EndpointSpec:
    settings = {"host": HOST, "port": PORT, "user": USER, **connection}
    return EndpointSpec(
        "pg", ResourceType.POSTGRESQL, settings, credentials={"password": PASSWORD}, default_tags=DEFAULT_TAGS
    )


class TestPostgresqlContract(DatabaseNameRestores, ConnectorContract):
    resource_type = ResourceType.POSTGRESQL

    @pytest.fixture
    def endpoint(self) -> EndpointSpec:
        return _endpoint()

    @pytest.fixture
    def unusable_endpoints(self) -> dict[str, EndpointSpec]:
        broken = {
            # this server trusts 127.0.0.1, so an unknown role is how credentials are refused here
            "unknown user": EndpointSpec(
                "u",
                ResourceType.POSTGRESQL,
                {"host": HOST, "port": PORT, "user": "no_such_role_bv"},
                credentials={"password": "s3cret-unknown-user"},
            ),
            "unreachable server": EndpointSpec(
                "x",
                ResourceType.POSTGRESQL,
                {"host": HOST, "port": 1, "user": USER},
                credentials={"password": "s3cret-unreachable"},
            ),
            "bad port": EndpointSpec("p", ResourceType.POSTGRESQL, {"host": HOST, "port": "many"}),
        }
        if _server_checks_passwords():
            broken["wrong password"] = EndpointSpec(
                "w",
                ResourceType.POSTGRESQL,
                {"host": HOST, "port": PORT, "user": USER},
                {"password": "wrong-pw"},
            )
        return broken

    @pytest.fixture
    def make_resource(self) -> Iterator[MakeResource]:
        made: list[str] = []

        def make(name: str, tags: Mapping[str, str]) -> str:
            with _admin() as connection:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                made.append(name)
                if tags:
                    comment = json.dumps({"backvault": {"tags": dict(tags)}})
                    connection.execute(
                        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                            sql.Identifier(name), sql.Literal(comment)
                        )
                    )
            with _admin(name) as connection:
                connection.execute(_SCHEMA)
            return name

        yield make
        for name in made:
            _drop(name)

    @pytest.fixture
    def mutate(self) -> Mutate:
        def change(database: str) -> None:
            with _admin(database) as connection:
                connection.execute("UPDATE customers SET balance = balance + 1 WHERE id % 10 = 0")
                connection.execute("DELETE FROM orders WHERE id % 13 = 0")
                connection.execute("INSERT INTO orders (customer_id, total) VALUES (3, 99.5)")
                connection.execute("ALTER TABLE customers ADD COLUMN extra text DEFAULT 'new'")

        return change

    @pytest.fixture
    def snapshot_state(self) -> StateOf:
        return _state

    @pytest.fixture
    def tamper(self) -> Mutate:
        def damage(database: str) -> None:
            with _admin(database) as connection:
                connection.execute("UPDATE orders SET note = 'tampered' WHERE id = 42")

        return damage


# --- beyond the contract ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_database() -> Iterator[str]:
    """A database whose dump is about 15 MB, so a dump can be cut while pg_dump is still writing.

    Shared by the tests of this module: they only read it (or copy it first).
    """
    name = new_name()
    with _admin() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with _admin(name) as connection:
            connection.execute(
                "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || "
                "md5((g * 13)::text) AS payload FROM generate_series(1, 150000) AS g"
            )
        yield name
    finally:
        _drop(name)


@pytest.fixture
def big_copy(big_database: str) -> Iterator[str]:
    """A private copy of the big database, for a test that changes it."""
    name = new_name()
    with _admin() as connection:
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(big_database)
            )
        )
    try:
        yield name
    finally:
        _drop(name)


def _pg_dump_children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if child.name() == "pg_dump"]


def _assert_no_snapshot_and_clean(repository: Repository) -> None:
    reopened = Repository.open(repository.store, REPOSITORY_PASSWORD)
    assert reopened.list_snapshots() == []
    report = check(reopened, read_data_fraction=1.0)
    assert report.ok, [problem.message for problem in report.problems]


def test_a_stopped_job_kills_pg_dump_mid_stream(big_database: str, repository: Repository) -> None:
    seen_running: list[bool] = []

    def stop_while_dumping(processed: int) -> None:
        seen_running.append(bool(_pg_dump_children()))
        raise ConnectorStopped("job cancelled")

    with pytest.raises(ConnectorStopped):
        PostgresqlConnector().backup(
            BackupRequest(_endpoint(), big_database, repository, heartbeat=stop_while_dumping)
        )
    assert seen_running == [True], "the heartbeat did not run while pg_dump was still dumping"
    assert _pg_dump_children() == [], "pg_dump was left running"
    _assert_no_snapshot_and_clean(repository)


def test_a_killed_pg_dump_fails_the_backup_with_its_error(big_database: str, repository: Repository) -> None:
    def kill_the_tool(processed: int) -> None:
        for child in _pg_dump_children():
            child.kill()

    with pytest.raises(ConnectorError, match=r"pg_dump failed \(killed by SIGKILL\)"):
        PostgresqlConnector().backup(
            BackupRequest(_endpoint(), big_database, repository, heartbeat=kill_the_tool)
        )
    _assert_no_snapshot_and_clean(repository)


def test_a_failing_pg_dump_is_summarised(big_copy: str, repository: Repository) -> None:
    # A role that may read one table but not the other: pg_dump fails with "permission denied",
    # and that error, summarised from its stderr, is what the backup reports.
    role = f"bvro_{new_name()}"
    with _admin() as connection:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with _admin(big_copy) as connection:
            connection.execute(sql.SQL("GRANT SELECT ON filler TO {}").format(sql.Identifier(role)))
            connection.execute("CREATE TABLE secret_table (x int)")
        endpoint = _endpoint(user=role)
        with pytest.raises(ConnectorError) as caught:
            PostgresqlConnector().backup(BackupRequest(endpoint, big_copy, repository))
        assert "pg_dump failed (exit code 1)" in str(caught.value)
        assert "permission denied" in str(caught.value)
        assert PASSWORD not in str(caught.value)
        _assert_no_snapshot_and_clean(repository)
    finally:
        with _admin(big_copy) as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with _admin() as connection:
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_second_backup_reuses_unchanged_data(big_copy: str, repository: Repository) -> None:
    connector = PostgresqlConnector()
    first = connector.backup(BackupRequest(_endpoint(), big_copy, repository))
    with _admin(big_copy) as connection:
        connection.execute("UPDATE filler SET payload = 'changed' WHERE id <= 1500")  # 1% of the rows
    second = connector.backup(BackupRequest(_endpoint(), big_copy, repository))
    assert first.summary["bytes_read"] > 10_000_000
    assert second.summary["chunks_reused"] > 0
    assert second.summary["bytes_stored"] < first.summary["bytes_stored"] / 4


def test_discover_reads_plain_json_comments_and_honours_filters() -> None:
    name = new_name()
    with _admin() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        connection.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal('{"backup": "daily", "tier": 2}')
            )
        )
    try:
        found = {item.name: item for item in PostgresqlConnector().discover(_endpoint())}
        assert found[name].tags == {**DEFAULT_TAGS, "backup": "daily", "tier": "2"}
        assert "template0" not in found and "template1" not in found and "postgres" not in found
        filtered = PostgresqlConnector().discover(_endpoint(exclude_databases=["bvt*"]))
        assert name not in {item.name for item in filtered}
    finally:
        _drop(name)


def test_restore_into_an_existing_empty_database_and_no_owner(repository: Repository) -> None:
    source, target = new_name(), new_name()
    with _admin() as connection:
        for name in (source, target):
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with _admin(source) as connection:
            connection.execute(_SCHEMA)
        connector = PostgresqlConnector()
        endpoint = _endpoint()
        snapshot = connector.backup(BackupRequest(endpoint, source, repository))
        metadata = {"DatabaseName": target, "NoOwner": "true"}
        outcome = connector.restore(RestoreRequest(endpoint, source, repository, snapshot, metadata))
        assert outcome.resource_name == target and outcome.bytes_restored > 0
        assert _state(target) == _state(source)
        assert connector.validate(ValidationRequest(endpoint, target, repository, snapshot)).valid
    finally:
        _drop(source)
        _drop(target)


def test_the_manifest_matches_the_dump_while_writes_go_on(repository: Repository) -> None:
    database = new_name()
    with _admin() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with _admin(database) as connection:
            while not stop.is_set():
                connection.execute("INSERT INTO orders (customer_id, total) VALUES (5, 1.0)")
                written.append(1)

    try:
        with _admin(database) as connection:
            connection.execute(_SCHEMA)
        writer = threading.Thread(target=write)
        writer.start()
        try:
            connector = PostgresqlConnector()
            endpoint = _endpoint()
            snapshot = connector.backup(BackupRequest(endpoint, database, repository))
        finally:
            stop.set()
            writer.join()
        assert written, "the writer never wrote"
        outcome = connector.restore(RestoreRequest(endpoint, database, repository, snapshot, {}))
        try:
            result = connector.validate(
                ValidationRequest(endpoint, outcome.resource_name, repository, snapshot)
            )
            assert result.valid, result.message
        finally:
            connector.delete_restored(endpoint, outcome.resource_name)
    finally:
        _drop(database)


def test_globals_are_saved_when_asked_without_role_passwords(
    big_database: str, repository: Repository
) -> None:
    snapshot = PostgresqlConnector().backup(
        BackupRequest(_endpoint(include_globals=True), big_database, repository)
    )
    with open_content(repository, find_file(repository, snapshot, "globals.sql")) as stream:
        globals_sql = stream.read().decode()
    assert "CREATE ROLE postgres" in globals_sql
    assert "PASSWORD" not in globals_sql.upper().replace("NOPASSWORD", "")
