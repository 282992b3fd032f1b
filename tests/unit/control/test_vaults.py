"""Backup vaults: AWS name rules, creation with a real repository, secrecy of its passphrase, deletion."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from control_helpers import add_recovery_point
from sqlalchemy import text

from backvault.control import vaults as vaults_module
from backvault.control.catalog import BackupVault, Catalog, Job
from backvault.control.catalog.schema import metadata
from backvault.control.context import ServiceContext
from backvault.control.locations import create_storage_location
from backvault.control.secrets import MasterSecret
from backvault.control.vaults import (
    create_backup_vault,
    delete_backup_vault,
    describe_backup_vault,
    list_backup_vaults,
    open_vault_repository,
    passphrase_context,
)
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
)
from backvault.repo.errors import WrongPasswordError
from backvault.repo.repository import Repository
from backvault.storage.local import LocalStore

ARN = "arn:aws:backup:local:000000000000:backup-vault:main"


def _vault_row(catalog: Catalog, name: str) -> BackupVault:
    with catalog.transaction() as session:
        vault = session.get(BackupVault, name)
        assert vault is not None
        return vault


def _passphrase(catalog: Catalog, master_secret: MasterSecret, name: str) -> str:
    token = _vault_row(catalog, name).wrapped_repository_passphrase
    return master_secret.unwrap(token, passphrase_context(name)).decode()


def test_create_and_describe_use_aws_shapes(context: ServiceContext) -> None:
    created = create_backup_vault(
        context, "main", backup_vault_tags={"team": "db"}, creator_request_id="req-1"
    )
    assert created == {"BackupVaultName": "main", "BackupVaultArn": ARN, "CreationDate": context.now()}
    assert describe_backup_vault(context, "main") == {
        "BackupVaultName": "main",
        "BackupVaultArn": ARN,
        "VaultType": "BACKUP_VAULT",
        "VaultState": "AVAILABLE",
        "CreationDate": context.now(),
        "CreatorRequestId": "req-1",
        "NumberOfRecoveryPoints": 0,
        "Locked": False,
    }
    assert _vault_row(context.catalog, "main").tags == {"team": "db"}


@pytest.mark.parametrize("name", ["a", "x" * 51, "has space", "dot.ted", "slash/name", "ünïcode", ""])
def test_vault_names_follow_aws_rules(context: ServiceContext, data_dir: Path, name: str) -> None:
    with pytest.raises(InvalidParameterValueException, match="BackupVaultName"):
        create_backup_vault(context, name)
    assert list_backup_vaults(context)["BackupVaultList"] == []
    vaults_directory = data_dir / "vaults"
    assert not vaults_directory.exists() or list(vaults_directory.iterdir()) == []


@pytest.mark.parametrize("name", ["ab", "Prod_Vault-2", "x" * 50])
def test_valid_vault_names_are_accepted(context: ServiceContext, name: str) -> None:
    assert create_backup_vault(context, name)["BackupVaultName"] == name


def test_existing_vault_is_already_exists_unless_the_same_request_is_retried(context: ServiceContext) -> None:
    first = create_backup_vault(context, "main", creator_request_id="req-1")
    with pytest.raises(AlreadyExistsException) as raised:
        create_backup_vault(context, "main")
    assert raised.value.to_response_body()["Arn"] == ARN
    assert raised.value.to_response_body()["CreatorRequestId"] == "req-1"
    with pytest.raises(AlreadyExistsException):
        create_backup_vault(context, "main", creator_request_id="req-2")
    assert create_backup_vault(context, "main", creator_request_id="req-1") == first


def test_creation_initialises_a_repository_that_opens_with_the_unwrapped_passphrase(
    context: ServiceContext, master_secret: MasterSecret, data_dir: Path
) -> None:
    create_backup_vault(context, "main")
    passphrase = _passphrase(context.catalog, master_secret, "main")
    store = LocalStore(data_dir / "vaults" / "main")
    assert store.exists("config")
    repository = Repository.open(store, passphrase)
    assert repository.list_snapshots() == []
    with pytest.raises(WrongPasswordError):
        Repository.open(store, passphrase + "x")
    opened = open_vault_repository(context, "main")
    assert opened.config.id == repository.config.id


def test_the_passphrase_is_never_stored_in_clear(
    context: ServiceContext, master_secret: MasterSecret, data_dir: Path
) -> None:
    create_backup_vault(context, "main")
    passphrase = _passphrase(context.catalog, master_secret, "main")
    assert len(passphrase) >= 40
    if context.catalog.dialect == "sqlite":
        files = [path for path in data_dir.iterdir() if path.name.startswith("catalog.db")]
        raw = b"".join(path.read_bytes() for path in files)
        assert b"repository-passphrase" not in raw  # the context is associated data, never stored
    else:
        with context.catalog.engine.connect() as connection:
            raw = " ".join(
                connection.execute(
                    text(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t")
                ).scalar()
                or ""
                for table in metadata.tables
            ).encode()
    assert (
        _vault_row(context.catalog, "main").wrapped_repository_passphrase.encode() in raw
    )  # we read the data
    assert passphrase.encode() not in raw


def test_unknown_location_and_bad_tags(context: ServiceContext) -> None:
    with pytest.raises(ResourceNotFoundException, match="'nowhere'"):
        create_backup_vault(context, "main", location_name="nowhere")
    with pytest.raises(InvalidParameterValueException, match="aws: prefix"):
        create_backup_vault(context, "main", backup_vault_tags={"aws:owner": "x"})
    with pytest.raises(InvalidParameterValueException, match="Invalid ARN"):
        create_backup_vault(context, "main", encryption_key_arn="not-an-arn")
    assert list_backup_vaults(context)["BackupVaultList"] == []


def test_vault_arn_region_is_the_location(context: ServiceContext, tmp_path: Path) -> None:
    create_storage_location(context, "eu-central", "local", path=str(tmp_path / "eu"))
    created = create_backup_vault(context, "main", location_name="eu-central")
    assert created["BackupVaultArn"] == "arn:aws:backup:eu-central:000000000000:backup-vault:main"
    assert (tmp_path / "eu" / "main" / "config").is_file()


def test_a_location_already_holding_data_is_refused_and_left_alone(
    context: ServiceContext, data_dir: Path
) -> None:
    occupied = data_dir / "vaults" / "main"
    occupied.mkdir(parents=True)
    (occupied / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidRequestException, match="already holds data"):
        create_backup_vault(context, "main")
    assert (occupied / "precious.txt").read_text() == "keep me"
    with pytest.raises(ResourceNotFoundException):
        describe_backup_vault(context, "main")


def test_a_failed_commit_removes_the_new_repository(
    context: ServiceContext, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_event(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("catalog write failed")

    monkeypatch.setattr(vaults_module, "record_event", failing_event)
    with pytest.raises(RuntimeError, match="catalog write failed"):
        create_backup_vault(context, "main")
    assert list(LocalStore(data_dir / "vaults" / "main").list("")) == []
    monkeypatch.undo()
    create_backup_vault(context, "main")  # nothing left behind blocks a retry


def test_concurrent_creations_make_one_vault(context: ServiceContext) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        barrier.wait()
        try:
            create_backup_vault(context, "main")
            outcomes.append("created")
        except AlreadyExistsException:
            outcomes.append("exists")

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created", "exists", "exists", "exists"]
    open_vault_repository(context, "main")


def test_delete_an_empty_vault_removes_its_repository(context: ServiceContext, data_dir: Path) -> None:
    create_backup_vault(context, "main")
    assert delete_backup_vault(context, "main") == {}
    with pytest.raises(ResourceNotFoundException):
        describe_backup_vault(context, "main")
    with pytest.raises(ResourceNotFoundException):
        delete_backup_vault(context, "main")
    assert list(LocalStore(data_dir / "vaults" / "main").list("")) == []
    create_backup_vault(context, "main")  # the name and the place can be used again


def test_delete_refuses_a_vault_with_recovery_points(context: ServiceContext) -> None:
    created = create_backup_vault(context, "main")
    add_recovery_point(context.catalog, "main", created["BackupVaultArn"], context.now())
    with pytest.raises(InvalidRequestException, match="contains 1 recovery point"):
        delete_backup_vault(context, "main")
    assert describe_backup_vault(context, "main")["NumberOfRecoveryPoints"] == 1
    open_vault_repository(context, "main")  # the repository is untouched


def test_delete_refuses_a_vault_a_job_is_using(context: ServiceContext) -> None:
    create_backup_vault(context, "main")
    with context.catalog.transaction() as session:
        session.add(
            Job(
                id="job-1", job_type="BACKUP", state="RUNNING", vault_name="main", creation_date=context.now()
            )
        )
    with pytest.raises(InvalidRequestException, match="1 job"):
        delete_backup_vault(context, "main")


def test_delete_refuses_a_repository_holding_untracked_snapshots(
    context: ServiceContext, data_dir: Path
) -> None:
    create_backup_vault(context, "main")
    LocalStore(data_dir / "vaults" / "main").put("snapshots/" + "ab" * 32, b"snapshot")
    with pytest.raises(
        InvalidRequestException, match="holds snapshots the catalog has no recovery point for"
    ):
        delete_backup_vault(context, "main")
    describe_backup_vault(context, "main")


def test_list_pages_filters_and_rejects_foreign_tokens(context: ServiceContext) -> None:
    for name in ("vc", "va", "vb"):
        create_backup_vault(context, name)
    first = list_backup_vaults(context, max_results=2)
    assert [vault["BackupVaultName"] for vault in first["BackupVaultList"]] == ["va", "vb"]
    second = list_backup_vaults(context, max_results=2, next_token=first["NextToken"])
    assert [vault["BackupVaultName"] for vault in second["BackupVaultList"]] == ["vc"]
    assert "NextToken" not in second
    assert (
        list_backup_vaults(context, by_vault_type="LOGICALLY_AIR_GAPPED_BACKUP_VAULT")["BackupVaultList"]
        == []
    )
    assert list_backup_vaults(context, by_shared=True)["BackupVaultList"] == []
    assert len(list_backup_vaults(context, by_vault_type="BACKUP_VAULT")["BackupVaultList"]) == 3
    with pytest.raises(InvalidParameterValueException, match="NextToken"):
        list_backup_vaults(context, next_token="garbage")
    with pytest.raises(InvalidParameterValueException, match="MaxResults"):
        list_backup_vaults(context, max_results=0)


def test_describe_in_another_account_is_not_found(context: ServiceContext) -> None:
    create_backup_vault(context, "main")
    assert (
        describe_backup_vault(context, "main", backup_vault_account_id="000000000000")["BackupVaultName"]
        == "main"
    )
    with pytest.raises(ResourceNotFoundException):
        describe_backup_vault(context, "main", backup_vault_account_id="111111111111")


def test_a_vault_on_s3(context: ServiceContext, s3_bucket: tuple[str, str]) -> None:
    endpoint, bucket = s3_bucket
    create_storage_location(
        context, "s3-main", "s3", bucket=bucket, prefix="backvault", endpoint_url=endpoint
    )
    create_backup_vault(context, "main", location_name="s3-main")
    repository = open_vault_repository(context, "main")
    assert repository.store.location == f"s3://{bucket}/backvault/main"
    delete_backup_vault(context, "main")
    assert list(repository.store.list("")) == []
