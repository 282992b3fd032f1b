"""Backup vaults: CreateBackupVault, DescribeBackupVault, ListBackupVaults, DeleteBackupVault.

A vault is a repository in a storage location (``<path>/<vault>`` or ``s3://bucket/prefix/<vault>``)
opened by a random passphrase that only the catalog knows, wrapped by the server's master secret.
Creation is one transaction around the repository's creation: the vault row exists exactly when
its repository does (the repository is removed again if the commit fails), at the price of holding
the catalog's write lock while the passphrase's key derivation runs.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, RecoveryPoint
from backvault.control.catalog.models import BackupVault, StorageLocation
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.locations import get_location_row, open_location_store, vault_repository_url
from backvault.control.pagination import paginate
from backvault.control.secrets import SecretError
from backvault.domain.arn import backup_vault_arn, parse_arn
from backvault.domain.errors import (
    AlreadyExistsException,
    DependencyFailureException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.domain.plans import validate_recovery_point_tags
from backvault.domain.vault import VaultLock, validate_backup_vault_name
from backvault.repo.errors import RepositoryError
from backvault.repo.repository import Repository
from backvault.storage.base import ObjectStore, StorageError

logger = logging.getLogger(__name__)

VAULT_TYPE = "BACKUP_VAULT"
VAULT_STATE_AVAILABLE = "AVAILABLE"
PASSPHRASE_BYTES = 32
# Jobs in these states may be writing into a vault's repository right now.
ACTIVE_JOB_STATES = ("CREATED", "PENDING", "RUNNING", "ABORTING")


def passphrase_context(vault_name: str) -> str:
    """The wrapping context of a vault's passphrase: the purpose and the vault, so rows cannot swap."""
    return f"backup-vault/{vault_name}/repository-passphrase"


def create_backup_vault(
    context: ServiceContext,
    backup_vault_name: str,
    *,
    backup_vault_tags: dict[str, str] | None = None,
    encryption_key_arn: str | None = None,
    creator_request_id: str | None = None,
    location_name: str | None = None,
) -> dict[str, Any]:
    """Create a vault and its repository; a retry with the same CreatorRequestId returns the vault."""
    name = validate_backup_vault_name(backup_vault_name)
    tags = validate_recovery_point_tags(backup_vault_tags or {}, "BackupVaultTags")
    if encryption_key_arn is not None:
        parse_arn(expect_str(encryption_key_arn, "EncryptionKeyArn"))
    passphrase = secrets.token_urlsafe(PASSPHRASE_BYTES)
    store: ObjectStore | None = None
    created = False
    try:
        with context.catalog.transaction() as session:
            existing = session.get(BackupVault, name)
            if existing is not None:
                if creator_request_id and existing.creator_request_id == creator_request_id:
                    return _creation_response(existing)
                raise _already_exists(existing)
            location = get_location_row(session, location_name or context.default_location, lock="share")
            vault = BackupVault(
                name=name,
                arn=backup_vault_arn(context.arn_context(location.name), name),
                location_name=location.name,
                vault_type=VAULT_TYPE,
                vault_state=VAULT_STATE_AVAILABLE,
                creation_date=context.now(),
                creator_request_id=creator_request_id,
                encryption_key_arn=encryption_key_arn,
                encryption_key_reference=context.master_secret.key_id,
                wrapped_repository_passphrase=context.master_secret.wrap(
                    passphrase.encode("utf-8"), passphrase_context(name)
                ),
                repository_url=vault_repository_url(location, name),
                number_of_recovery_points=0,
                locked=False,
                tags=tags,
            )
            session.add(vault)
            try:
                session.flush()  # before touching storage: a concurrent twin fails here, not after
            except IntegrityError:
                raise AlreadyExistsException(f"Backup vault {name!r} already exists.") from None
            store = open_location_store(location, vault.repository_url)
            _create_repository(store, name, passphrase)
            created = True
            record_event(
                session,
                EventType.BACKUP_VAULT_CREATED,
                vault.creation_date,
                resource_arn=vault.arn,
                vault_name=name,
            )
            return _creation_response(vault)
    except BaseException:
        if created and store is not None:
            _remove_repository(store)  # no vault row was committed, so no repository may stay
        raise
    finally:
        if store is not None:
            store.close()


def describe_backup_vault(
    context: ServiceContext, backup_vault_name: str, *, backup_vault_account_id: str | None = None
) -> dict[str, Any]:
    """Return DescribeBackupVault's answer."""
    if backup_vault_account_id is not None and backup_vault_account_id != context.account:
        raise ResourceNotFoundException(
            f"Backup vault {backup_vault_name!r} does not exist in account {backup_vault_account_id}."
        )
    with context.catalog.transaction() as session:
        return vault_to_aws(get_vault_row(session, backup_vault_name))


def list_backup_vaults(
    context: ServiceContext,
    *,
    by_vault_type: str | None = None,
    by_shared: bool | None = None,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """Return ListBackupVaults' answer, by vault name."""
    statement = select(BackupVault)
    # Every backvault vault is a standard one and none is shared through AWS RAM.
    if (by_vault_type is not None and by_vault_type != VAULT_TYPE) or by_shared:
        statement = statement.where(BackupVault.name.is_(None))
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            statement,
            [BackupVault.name],
            operation="ListBackupVaults",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"BackupVaultList": [vault_to_aws(row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def delete_backup_vault(context: ServiceContext, backup_vault_name: str) -> dict[str, Any]:
    """Delete an empty vault and its repository (InvalidRequestException while it holds anything)."""
    store: ObjectStore | None = None
    try:
        with context.catalog.transaction() as session:
            # The row lock makes a backup that is recording a point into this vault finish first.
            vault = get_vault_row(session, backup_vault_name, for_update=True)
            # Count the rows themselves: a destructive decision must not trust the cached counter.
            points = session.scalar(
                select(func.count()).select_from(RecoveryPoint).where(RecoveryPoint.vault_name == vault.name)
            )
            if points:
                raise InvalidRequestException(
                    f"Backup vault {vault.name!r} cannot be deleted because it contains {points} recovery "
                    "point(s); delete them first."
                )
            active = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.vault_name == vault.name, Job.state.in_(ACTIVE_JOB_STATES))
            )
            if active:
                raise InvalidRequestException(
                    f"Backup vault {vault.name!r} cannot be deleted while {active} job(s) use it; wait for "
                    "them to finish or stop them."
                )
            store = _vault_store(session, vault)
            _refuse_untracked_snapshots(store, vault.name)
            session.delete(vault)
            record_event(
                session,
                EventType.BACKUP_VAULT_DELETED,
                context.now(),
                resource_arn=vault.arn,
                vault_name=vault.name,
            )
        _remove_repository(store)  # only once the row is gone for good
    finally:
        if store is not None:
            store.close()
    return {}


# --- helpers for the other services -------------------------------------------------------------


def get_vault_row(session: Session, backup_vault_name: str, *, for_update: bool = False) -> BackupVault:
    """Return the vault row (row-locked on PostgreSQL if asked), or raise ResourceNotFoundException."""
    statement = select(BackupVault).where(
        BackupVault.name == expect_str(backup_vault_name, "BackupVaultName")
    )
    vault = session.scalars(statement.with_for_update() if for_update else statement).first()
    if vault is None:
        raise ResourceNotFoundException(f"Backup vault {backup_vault_name!r} does not exist.")
    return vault


def vault_lock(vault: BackupVault) -> VaultLock | None:
    """Return the vault's lock as the domain models it, or None when unlocked."""
    if not vault.locked:
        return None
    return VaultLock(vault.min_retention_days, vault.max_retention_days, vault.lock_date)


def vault_passphrase(context: ServiceContext, vault: BackupVault) -> str:
    """Unwrap the vault repository's passphrase (DependencyFailureException if the secret is wrong)."""
    try:
        secret = context.master_secret.unwrap(
            vault.wrapped_repository_passphrase, passphrase_context(vault.name)
        )
    except SecretError as error:
        raise DependencyFailureException(f"Backup vault {vault.name!r} cannot be opened: {error}") from None
    return secret.decode("utf-8")


def open_vault_repository(context: ServiceContext, backup_vault_name: str) -> Repository:
    """Open a vault's repository (outside any catalog transaction: opening reads storage)."""
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        store = _vault_store(session, vault)
        passphrase = vault_passphrase(context, vault)
    try:
        return Repository.open(store, passphrase)
    except (RepositoryError, StorageError) as error:
        store.close()
        raise DependencyFailureException(f"Backup vault {backup_vault_name!r}: {error}") from None


def vault_to_aws(vault: BackupVault) -> dict[str, Any]:
    """Return DescribeBackupVault's shape (also ListBackupVaults' members, which are a subset)."""
    body: dict[str, Any] = {
        "BackupVaultName": vault.name,
        "BackupVaultArn": vault.arn,
        "VaultType": vault.vault_type,
        "VaultState": vault.vault_state,
        "CreationDate": vault.creation_date,
        "NumberOfRecoveryPoints": vault.number_of_recovery_points,
        "Locked": False,
    }
    if vault.encryption_key_arn:
        body["EncryptionKeyArn"] = vault.encryption_key_arn
    if vault.creator_request_id:
        body["CreatorRequestId"] = vault.creator_request_id
    lock = vault_lock(vault)
    if lock is not None:
        body.update(lock.to_aws())
    return body


def _creation_response(vault: BackupVault) -> dict[str, Any]:
    return {"BackupVaultName": vault.name, "BackupVaultArn": vault.arn, "CreationDate": vault.creation_date}


def _already_exists(vault: BackupVault) -> AlreadyExistsException:
    return AlreadyExistsException(
        f"Backup vault {vault.name!r} already exists.",
        Arn=vault.arn,
        CreatorRequestId=vault.creator_request_id,
    )


def _vault_store(session: Session, vault: BackupVault) -> ObjectStore:
    location = session.get(StorageLocation, vault.location_name)
    if location is None:  # the foreign key forbids it; say so plainly if the catalog was edited by hand
        raise DependencyFailureException(f"Backup vault {vault.name!r} names a missing storage location.")
    return open_location_store(location, vault.repository_url)


def _create_repository(store: ObjectStore, vault_name: str, passphrase: str) -> None:
    try:
        occupied = next(iter(store.list("")), None) is not None
    except StorageError as error:
        raise DependencyFailureException(f"Backup vault {vault_name!r}: storage failed: {error}") from None
    if occupied:
        raise InvalidRequestException(
            f"Cannot create backup vault {vault_name!r}: {store.location} already holds data (a vault "
            "deleted without its repository, or other files). Move it away or use another location."
        )
    # The location was empty a moment ago, so whatever a failed init leaves behind is ours to remove.
    try:
        Repository.init(store, passphrase).close()
    except (RepositoryError, StorageError, OSError) as error:
        _remove_repository(store)
        raise DependencyFailureException(
            f"Backup vault {vault_name!r}: its repository could not be created in {store.location}: {error}"
        ) from None


def _refuse_untracked_snapshots(store: ObjectStore, vault_name: str) -> None:
    # A snapshot the catalog does not know (a job that crashed before recording it) is still data:
    # deleting the vault would destroy it, so an operator has to look first.
    try:
        snapshot = next(iter(store.list("snapshots/")), None)
    except StorageError as error:
        raise DependencyFailureException(f"Backup vault {vault_name!r}: storage failed: {error}") from None
    if snapshot is not None:
        raise InvalidRequestException(
            f"Backup vault {vault_name!r} cannot be deleted: its repository {store.location} holds "
            f"snapshots the catalog has no recovery point for (e.g. {snapshot.key}). Inspect it with "
            "'backvault repo snapshots' before removing it."
        )


def _remove_repository(store: ObjectStore) -> None:
    # Best effort: the catalog no longer names this repository; leftovers only block re-creating a
    # vault of the same name, with a clear message.
    try:
        for info in list(store.list("")):
            store.delete(info.key)
    except (StorageError, OSError) as error:
        logger.warning("could not remove all of the repository at %s: %s", store.location, error)
