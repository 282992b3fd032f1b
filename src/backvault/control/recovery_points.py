"""Recovery points: List...ByBackupVault, List...ByResource, Describe, UpdateRecoveryPointLifecycle, Delete.

A point is a catalog row plus one snapshot: ``snapshot_id`` names it in the vault's warm repository
while ``storage_class`` is WARM, and in the vault's cold repository once it is COLD
(control/point_storage.py says where those are).

Deletion rules, as AWS applies them:
* a point that a legal hold (not CANCELED) selects cannot be deleted;
* in a vault with a Vault Lock, a point younger than MinRetentionDays cannot be deleted (both modes);
* in a vault whose compliance-mode lock has passed its lock date, a point cannot be deleted before
  its retention ends (DeleteAt; never, for a point kept forever): nobody can shorten what a
  compliance lock protects, and deleting is the ultimate shortening.
Deleting removes the row at once and queues its snapshot for forgetting (done immediately when the
repository answers; the lifecycle engine prunes the data and retries what failed).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import backvault.control.catalog.removals  # noqa: F401 - registers the snapshot_removals table
from backvault.control.catalog.activity import RecoveryPoint
from backvault.control.catalog.models import BackupVault
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.legal_holds import holds_covering
from backvault.control.pagination import paginate
from backvault.control.point_storage import Tier, forget_removal, open_tier_repository, queue_removal
from backvault.control.vaults import get_vault_row, vault_lock
from backvault.domain.arn import BackupArnKind, backup_plan_arn, parse_backup_arn, parse_resource_arn
from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.domain.lifecycle import Lifecycle, StorageClass, calculate_lifecycle, validate_lifecycle_update
from backvault.domain.vault import VaultLock, check_can_delete_point, check_lifecycle_update
from backvault.repo.repository import Repository

logger = logging.getLogger(__name__)

VAULT_TYPE = "BACKUP_VAULT"


# --- reading -------------------------------------------------------------------------------------


def describe_recovery_point(
    context: ServiceContext,
    backup_vault_name: str,
    recovery_point_arn: str,
    *,
    backup_vault_account_id: str | None = None,
) -> dict[str, Any]:
    """Return DescribeRecoveryPoint's answer."""
    _check_account(context, backup_vault_account_id, backup_vault_name)
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        point = get_point_row(session, recovery_point_arn, vault_name=vault.name)
        return point_to_aws(context, point, vault)


def list_recovery_points_by_backup_vault(
    context: ServiceContext,
    backup_vault_name: str,
    *,
    backup_vault_account_id: str | None = None,
    next_token: str | None = None,
    max_results: int | None = None,
    by_resource_arn: str | None = None,
    by_resource_type: str | None = None,
    by_backup_plan_id: str | None = None,
    by_created_before: datetime | None = None,
    by_created_after: datetime | None = None,
    by_parent_recovery_point_arn: str | None = None,
) -> dict[str, Any]:
    """Return ListRecoveryPointsByBackupVault's answer, filtered as AWS filters."""
    _check_account(context, backup_vault_account_id, backup_vault_name)
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        statement = select(RecoveryPoint).where(RecoveryPoint.vault_name == vault.name)
        if by_resource_arn is not None:
            statement = statement.where(
                RecoveryPoint.resource_arn == expect_str(by_resource_arn, "ByResourceArn")
            )
        if by_resource_type is not None:
            statement = statement.where(
                RecoveryPoint.resource_type == expect_str(by_resource_type, "ByResourceType")
            )
        if by_backup_plan_id is not None:
            statement = statement.where(
                RecoveryPoint.plan_id == expect_str(by_backup_plan_id, "ByBackupPlanId")
            )
        if by_created_before is not None:
            statement = statement.where(
                RecoveryPoint.creation_date < _instant(by_created_before, "ByCreatedBefore")
            )
        if by_created_after is not None:
            statement = statement.where(
                RecoveryPoint.creation_date > _instant(by_created_after, "ByCreatedAfter")
            )
        if by_parent_recovery_point_arn is not None:
            # backvault makes no composite points, so no point has a parent
            parse_backup_arn(by_parent_recovery_point_arn, BackupArnKind.RECOVERY_POINT)
            statement = statement.where(RecoveryPoint.id.is_(None))
        rows, token = paginate(
            session,
            statement,
            [RecoveryPoint.id],
            operation="ListRecoveryPointsByBackupVault",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"RecoveryPoints": [point_to_aws(context, row, vault) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def list_recovery_points_by_resource(
    context: ServiceContext,
    resource_arn: str,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
    managed_by_aws_backup_only: bool | None = None,
) -> dict[str, Any]:
    """Return ListRecoveryPointsByResource's answer (every point is managed by the service)."""
    arn = expect_str(resource_arn, "ResourceArn")
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(RecoveryPoint).where(RecoveryPoint.resource_arn == arn),
            [RecoveryPoint.id],
            operation="ListRecoveryPointsByResource",
            next_token=next_token,
            max_results=max_results,
        )
        vaults: dict[str, BackupVault | None] = {}
        members = []
        for row in rows:
            if row.vault_name not in vaults:
                vaults[row.vault_name] = session.get(BackupVault, row.vault_name)
            vault = vaults[row.vault_name]
            member: dict[str, Any] = {
                "RecoveryPointArn": row.arn,
                "CreationDate": row.creation_date,
                "Status": row.status,
                "BackupSizeBytes": row.backup_size_in_bytes,
                "BackupVaultName": row.vault_name,
                "IsParent": False,
                "ResourceName": resource_name(row.resource_arn),
                "VaultType": VAULT_TYPE,
            }
            if row.status_message:
                member["StatusMessage"] = row.status_message
            if vault is not None and vault.encryption_key_arn:
                member["EncryptionKeyArn"] = vault.encryption_key_arn
            members.append(member)
        response: dict[str, Any] = {"RecoveryPoints": members}
        if token:
            response["NextToken"] = token
        return response


def recovery_point_tags(context: ServiceContext, recovery_point_arn: str) -> dict[str, str]:
    """Return the tags of a recovery point."""
    with context.catalog.transaction() as session:
        return dict(get_point_row(session, recovery_point_arn).tags or {})


def open_recovery_point_repository(
    context: ServiceContext, recovery_point_arn: str
) -> tuple[Repository, RecoveryPoint]:
    """Open the repository holding the point now (warm, or the cold tier) and return it with the row.

    The row is detached; its ``snapshot_id`` names the snapshot in the returned repository.
    """
    with context.catalog.transaction() as session:
        point = get_point_row(session, recovery_point_arn)
        session.expunge(point)
    if not point.snapshot_id:
        raise InvalidRequestException(f"Recovery point {point.arn} has no snapshot (status {point.status}).")
    if point.storage_class == StorageClass.DELETED:
        raise InvalidRequestException(f"Recovery point {point.arn} is deleted.")
    tier = Tier.COLD if point.storage_class == StorageClass.COLD else Tier.WARM
    return open_tier_repository(context, point.vault_name, tier), point


# --- changing ------------------------------------------------------------------------------------


def update_recovery_point_lifecycle(
    context: ServiceContext,
    backup_vault_name: str,
    recovery_point_arn: str,
    *,
    lifecycle: Any = None,
) -> dict[str, Any]:
    """Change a point's lifecycle (AWS's rules, and the vault lock's: extend, never shorten)."""
    new = Lifecycle.from_aws(lifecycle or {}, "Lifecycle")
    now = context.now()
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        point = get_point_row(session, recovery_point_arn, vault_name=vault.name, for_update=True)
        validate_lifecycle_update(
            stored_lifecycle(point), new, storage_class=StorageClass(point.storage_class)
        )
        check_lifecycle_update(vault_lock(vault), point.creation_date, point.delete_at, new)
        calculated = calculate_lifecycle(point.creation_date, new)
        point.lifecycle = new.to_aws()
        if point.storage_class != StorageClass.COLD:  # a cold point's move date is history now
            point.move_to_cold_storage_at = calculated.move_to_cold_storage_at
        point.delete_at = calculated.delete_at
        record_event(
            session,
            EventType.RECOVERY_POINT_MODIFIED,
            now,
            resource_arn=point.arn,
            vault_name=vault.name,
            detail={"Lifecycle": point.lifecycle},
        )
        return {
            "BackupVaultArn": vault.arn,
            "RecoveryPointArn": point.arn,
            "Lifecycle": new.to_aws(),
            "CalculatedLifecycle": calculated_lifecycle(point),
        }


def delete_recovery_point(
    context: ServiceContext, backup_vault_name: str, recovery_point_arn: str
) -> dict[str, Any]:
    """Delete a point unless a legal hold or the vault lock protects it; its data goes with the next prune."""
    now = context.now()
    try:
        with context.catalog.transaction() as session:
            vault = get_vault_row(session, backup_vault_name)
            point = get_point_row(session, recovery_point_arn, vault_name=vault.name, for_update=True)
            check_point_deletable(session, point, vault_lock(vault), now, manual=True)
            removal_id = remove_point(session, context, point, reason="DELETED")
    except InvalidRequestException as error:
        _record_refusal(context, backup_vault_name, recovery_point_arn, error)
        raise
    try:
        forget_removal(context, removal_id)
    except Exception as error:  # the row is gone for good; the lifecycle engine retries the forget
        logger.warning("recovery point %s: forgetting its snapshot failed: %s", recovery_point_arn, error)
    return {}


def check_point_deletable(
    session: Session, point: RecoveryPoint, lock: VaultLock | None, now: datetime, *, manual: bool
) -> None:
    """Raise InvalidRequestException when a legal hold or the vault lock forbids deleting the point."""
    held_by = holds_covering(session, point)
    if held_by:
        raise InvalidRequestException(
            f"Recovery point {point.arn} cannot be deleted because it has active legal hold(s): "
            f"{', '.join(held_by)}. Cancel the hold(s) first."
        )
    check_can_delete_point(lock, point.creation_date, now)
    if (
        manual
        and lock is not None
        and lock.is_immutable(now)
        and (point.delete_at is None or now < point.delete_at)
    ):
        until = (
            "it is kept forever"
            if point.delete_at is None
            else f"it ends {point.delete_at:%Y-%m-%dT%H:%M:%SZ}"
        )
        raise InvalidRequestException(
            f"Recovery point {point.arn} is protected by the vault's Vault Lock in compliance mode and "
            f"cannot be deleted before its retention ends ({until})."
        )


def remove_point(session: Session, context: ServiceContext, point: RecoveryPoint, *, reason: str) -> str:
    """Delete the row, queue its snapshot for forgetting and record the event; returns the removal id."""
    removal_id = ""
    if point.snapshot_id:
        tier = Tier.COLD if point.storage_class == StorageClass.COLD else Tier.WARM
        removal_id = queue_removal(
            session,
            context,
            vault_name=point.vault_name,
            tier=tier,
            snapshot_id=point.snapshot_id,
            recovery_point_arn=point.arn,
            reason=reason,
        ).id
    session.delete(point)
    record_event(
        session,
        EventType.RECOVERY_POINT_DELETED,
        context.now(),
        resource_arn=point.arn,
        vault_name=point.vault_name,
        detail={"Reason": reason, "StorageClass": point.storage_class, "ResourceArn": point.resource_arn},
    )
    return removal_id


def _record_refusal(
    context: ServiceContext, vault_name: str, recovery_point_arn: str, error: InvalidRequestException
) -> None:
    with context.catalog.transaction() as session:
        record_event(
            session,
            EventType.RECOVERY_POINT_DELETION_REFUSED,
            context.now(),
            resource_arn=recovery_point_arn,
            vault_name=vault_name if session.get(BackupVault, vault_name) else None,
            detail={"Reason": error.message},
        )


# --- helpers for the other services -------------------------------------------------------------


def get_point_row(
    session: Session, recovery_point_arn: str, *, vault_name: str | None = None, for_update: bool = False
) -> RecoveryPoint:
    """Return a point by ARN (in ``vault_name`` when given), or raise ResourceNotFoundException."""
    arn = expect_str(recovery_point_arn, "RecoveryPointArn")
    parse_backup_arn(arn, BackupArnKind.RECOVERY_POINT)
    statement = select(RecoveryPoint).where(RecoveryPoint.arn == arn)
    point = session.scalars(statement.with_for_update() if for_update else statement).first()
    if point is None or (vault_name is not None and point.vault_name != vault_name):
        where = f" in backup vault {vault_name!r}" if vault_name else ""
        raise ResourceNotFoundException(f"Recovery point {arn} does not exist{where}.")
    return point


def stored_lifecycle(point: RecoveryPoint) -> Lifecycle | None:
    """The point's Lifecycle as stored (None when it has none)."""
    if not point.lifecycle:
        return None
    return Lifecycle.from_aws(point.lifecycle, "Lifecycle")


def calculated_lifecycle(point: RecoveryPoint) -> dict[str, datetime]:
    """The point's CalculatedLifecycle from its stored instants."""
    body: dict[str, datetime] = {}
    if point.move_to_cold_storage_at is not None:
        body["MoveToColdStorageAt"] = point.move_to_cold_storage_at
    if point.delete_at is not None:
        body["DeleteAt"] = point.delete_at
    return body


def resource_name(resource_arn: str) -> str:
    """A short, readable name of a protected resource (its ARN's last part)."""
    try:
        parsed = parse_resource_arn(resource_arn)
    except InvalidParameterValueException:
        return resource_arn.rsplit(":", 1)[-1]
    return parsed.name or parsed.endpoint or ""


def point_to_aws(context: ServiceContext, point: RecoveryPoint, vault: BackupVault) -> dict[str, Any]:
    """Return DescribeRecoveryPoint's shape (ListRecoveryPointsByBackupVault's members are a subset)."""
    body: dict[str, Any] = {
        "RecoveryPointArn": point.arn,
        "BackupVaultName": vault.name,
        "BackupVaultArn": vault.arn,
        "ResourceArn": point.resource_arn,
        "ResourceType": point.resource_type,
        "ResourceName": resource_name(point.resource_arn),
        "Status": point.status,
        "CreationDate": point.creation_date,
        "BackupSizeInBytes": point.backup_size_in_bytes,
        "CalculatedLifecycle": calculated_lifecycle(point),
        "IsEncrypted": True,  # every repository is encrypted with its own key
        "StorageClass": point.storage_class,
        "IsParent": False,
        "VaultType": VAULT_TYPE,
    }
    optional: dict[str, Any] = {
        "SourceBackupVaultArn": point.source_backup_vault_arn,
        "StatusMessage": point.status_message,
        "CompletionDate": point.completion_date,
        "EncryptionKeyArn": vault.encryption_key_arn,
        "LastRestoreTime": point.last_restore_time,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if point.lifecycle:
        body["Lifecycle"] = dict(point.lifecycle)
    if point.plan_id:
        created_by = {
            "BackupPlanId": point.plan_id,
            "BackupPlanArn": backup_plan_arn(context.arn_context(), point.plan_id),
        }
        if point.plan_version_id:
            created_by["BackupPlanVersion"] = point.plan_version_id
        if point.rule_id:
            created_by["BackupRuleId"] = point.rule_id
        body["CreatedBy"] = created_by
    return body


def _check_account(context: ServiceContext, account: str | None, vault_name: str) -> None:
    if account is not None and account != context.account:
        raise ResourceNotFoundException(f"Backup vault {vault_name!r} does not exist in account {account}.")


def _instant(value: Any, where: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidParameterValueException(f"{where} must be a timestamp with a time zone.")
    return value
