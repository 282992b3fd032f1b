"""A vault's settings: Vault Lock, access policy and notifications (AWS's Put/Get/Delete operations)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from backvault.control.catalog.notification_models import NotificationSink
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.notification_sinks import get_sink_row
from backvault.control.vaults import get_vault_row, vault_lock
from backvault.domain.arn import parse_arn
from backvault.domain.errors import (
    InvalidParameterValueException,
    ResourceNotFoundException,
    expect_list,
    expect_str,
    require_member,
)
from backvault.domain.iam import validate_policy_document
from backvault.domain.vault import new_vault_lock, validate_lock_change

# AWS's BackupVaultEvent values (botocore's backup model); the domain layer does not list them.
BACKUP_VAULT_EVENTS = frozenset(
    {
        "BACKUP_JOB_STARTED",
        "BACKUP_JOB_COMPLETED",
        "BACKUP_JOB_SUCCESSFUL",
        "BACKUP_JOB_FAILED",
        "BACKUP_JOB_EXPIRED",
        "RESTORE_JOB_STARTED",
        "RESTORE_JOB_COMPLETED",
        "RESTORE_JOB_SUCCESSFUL",
        "RESTORE_JOB_FAILED",
        "COPY_JOB_STARTED",
        "COPY_JOB_SUCCESSFUL",
        "COPY_JOB_FAILED",
        "RECOVERY_POINT_MODIFIED",
        "BACKUP_PLAN_CREATED",
        "BACKUP_PLAN_MODIFIED",
        "S3_BACKUP_OBJECT_FAILED",
        "S3_RESTORE_OBJECT_FAILED",
        "CONTINUOUS_BACKUP_INTERRUPTED",
        "RECOVERY_POINT_INDEX_COMPLETED",
        "RECOVERY_POINT_INDEX_DELETED",
        "RECOVERY_POINT_INDEXING_FAILED",
    }
)


# --- Vault Lock ----------------------------------------------------------------------------------


def put_backup_vault_lock_configuration(
    context: ServiceContext,
    backup_vault_name: str,
    *,
    min_retention_days: int | None = None,
    max_retention_days: int | None = None,
    changeable_for_days: int | None = None,
) -> dict[str, Any]:
    """Set or replace the vault's lock; refused once a compliance lock has reached its lock date."""
    now = context.now()
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name, for_update=True)
        validate_lock_change(vault_lock(vault), now)
        lock = new_vault_lock(
            min_retention_days=min_retention_days,
            max_retention_days=max_retention_days,
            changeable_for_days=changeable_for_days,
            now=now,
        )
        vault.locked = True
        vault.min_retention_days = lock.min_retention_days
        vault.max_retention_days = lock.max_retention_days
        vault.changeable_for_days = changeable_for_days
        vault.lock_date = lock.lock_date
        record_event(
            session,
            EventType.BACKUP_VAULT_LOCK_CHANGED,
            now,
            resource_arn=vault.arn,
            vault_name=vault.name,
            detail={
                "Mode": lock.mode.value,
                "MinRetentionDays": lock.min_retention_days,
                "MaxRetentionDays": lock.max_retention_days,
                "LockDate": None if lock.lock_date is None else lock.lock_date.isoformat(),
            },
        )
        return {}


def delete_backup_vault_lock_configuration(context: ServiceContext, backup_vault_name: str) -> dict[str, Any]:
    """Remove the vault's lock; refused once a compliance lock has reached its lock date."""
    now = context.now()
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name, for_update=True)
        validate_lock_change(vault_lock(vault), now)
        if vault.locked:
            vault.locked = False
            vault.min_retention_days = vault.max_retention_days = vault.changeable_for_days = None
            vault.lock_date = None
            record_event(
                session,
                EventType.BACKUP_VAULT_LOCK_DELETED,
                now,
                resource_arn=vault.arn,
                vault_name=vault.name,
            )
        return {}


# --- access policy -------------------------------------------------------------------------------


def put_backup_vault_access_policy(
    context: ServiceContext, backup_vault_name: str, *, policy: str | None = None
) -> dict[str, Any]:
    """Store the vault's resource policy (a JSON policy document given as a string, as in AWS)."""
    document = _parse_policy(policy)
    return _set_vault_setting(
        context, backup_vault_name, "access_policy", document, EventType.BACKUP_VAULT_ACCESS_POLICY_CHANGED
    )


def get_backup_vault_access_policy(context: ServiceContext, backup_vault_name: str) -> dict[str, Any]:
    """Return the vault's policy; ResourceNotFoundException when it has none, as AWS answers."""
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        if vault.access_policy is None:
            raise ResourceNotFoundException(f"Backup vault {vault.name!r} has no access policy.")
        return {
            "BackupVaultName": vault.name,
            "BackupVaultArn": vault.arn,
            "Policy": json.dumps(vault.access_policy, separators=(",", ":")),
        }


def delete_backup_vault_access_policy(context: ServiceContext, backup_vault_name: str) -> dict[str, Any]:
    """Remove the vault's policy (removing a missing policy is not an error)."""
    return _set_vault_setting(
        context, backup_vault_name, "access_policy", None, EventType.BACKUP_VAULT_ACCESS_POLICY_CHANGED
    )


def _parse_policy(policy: Any) -> dict[str, Any]:
    text = expect_str(policy if policy is not None else "", "Policy")
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidParameterValueException(f"Policy is not valid JSON: {error}.") from None
    if not isinstance(document, dict) or "Statement" not in document:
        raise InvalidParameterValueException(
            "Policy must be a JSON policy document: an object with a Statement member."
        )
    # A policy the API could not enforce would lock the vault up: refuse it when it is stored.
    # The document is kept as given, as AWS returns it.
    validate_policy_document(document, resource_policy=True)
    return document


# --- notifications -------------------------------------------------------------------------------
#
# The vault's configuration is stored as {"SNSTopicArn", "BackupVaultEvents", "FailuresOnly"}.
# FailuresOnly is a backvault extension: AWS's GetBackupVaultNotifications answers exactly AWS's
# members, and AWS's PutBackupVaultNotifications, which has no such member, replaces the whole
# configuration and so turns it off. The extension route (get/put_backup_vault_notification_settings)
# reads and sets it.


def put_backup_vault_notifications(
    context: ServiceContext,
    backup_vault_name: str,
    *,
    sns_topic_arn: str | None,
    backup_vault_events: list[str] | None,
    failures_only: bool = False,
) -> dict[str, Any]:
    """Subscribe a topic (a notification sink's ARN) to some of the vault's events, replacing any before."""
    where = "PutBackupVaultNotifications"
    request = {"SNSTopicArn": sns_topic_arn, "BackupVaultEvents": backup_vault_events}
    topic = expect_str(require_member(request, "SNSTopicArn", where), "SNSTopicArn")
    parse_arn(topic)
    listed = expect_list(require_member(request, "BackupVaultEvents", where), "BackupVaultEvents")
    events = [expect_str(item, "BackupVaultEvents[]") for item in listed]
    unknown = sorted(set(events) - BACKUP_VAULT_EVENTS)
    if unknown:
        raise InvalidParameterValueException(
            f"BackupVaultEvents has unknown event(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(BACKUP_VAULT_EVENTS))}."
        )
    if not isinstance(failures_only, bool):
        raise InvalidParameterValueException(f"FailuresOnly must be true or false, got {failures_only!r}.")
    settings = {
        "SNSTopicArn": topic,
        "BackupVaultEvents": list(dict.fromkeys(events)),
        "FailuresOnly": failures_only,
    }
    return _set_vault_setting(
        context, backup_vault_name, "notifications", settings, EventType.BACKUP_VAULT_NOTIFICATIONS_CHANGED
    )


def get_backup_vault_notifications(context: ServiceContext, backup_vault_name: str) -> dict[str, Any]:
    """Return the vault's notification configuration; ResourceNotFoundException when it has none."""
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        if vault.notifications is None:
            raise ResourceNotFoundException(f"Backup vault {vault.name!r} has no notification configuration.")
        return {
            "BackupVaultName": vault.name,
            "BackupVaultArn": vault.arn,
            "SNSTopicArn": vault.notifications["SNSTopicArn"],
            "BackupVaultEvents": list(vault.notifications["BackupVaultEvents"]),
        }


def delete_backup_vault_notifications(context: ServiceContext, backup_vault_name: str) -> dict[str, Any]:
    """Remove the vault's notification configuration (removing a missing one is not an error)."""
    return _set_vault_setting(
        context, backup_vault_name, "notifications", None, EventType.BACKUP_VAULT_NOTIFICATIONS_CHANGED
    )


def put_backup_vault_notification_settings(
    context: ServiceContext,
    backup_vault_name: str,
    *,
    backup_vault_events: list[str] | None,
    sns_topic_arn: str | None = None,
    sink_name: str | None = None,
    failures_only: bool = False,
) -> dict[str, Any]:
    """The extension's Put: the topic by ARN or by sink name (which must exist), and FailuresOnly."""
    if (sns_topic_arn is None) == (sink_name is None):
        raise InvalidParameterValueException("Name the sink by SinkName or by SNSTopicArn (one of them).")
    if sink_name is not None:
        with context.catalog.transaction() as session:
            sns_topic_arn = get_sink_row(session, expect_str(sink_name, "SinkName")).arn
    put_backup_vault_notifications(
        context,
        backup_vault_name,
        sns_topic_arn=sns_topic_arn,
        backup_vault_events=backup_vault_events,
        failures_only=failures_only,
    )
    return get_backup_vault_notification_settings(context, backup_vault_name)


def get_backup_vault_notification_settings(context: ServiceContext, backup_vault_name: str) -> dict[str, Any]:
    """AWS's Get answer plus FailuresOnly and the SinkName the topic ARN names (None if no sink has it)."""
    answer = get_backup_vault_notifications(context, backup_vault_name)
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        sink = session.scalars(
            select(NotificationSink.name).where(NotificationSink.arn == answer["SNSTopicArn"])
        ).first()
        failures_only = bool((vault.notifications or {}).get("FailuresOnly"))
    return {**answer, "SinkName": sink, "FailuresOnly": failures_only}


def _set_vault_setting(
    context: ServiceContext, backup_vault_name: str, attribute: str, value: Any, event: EventType
) -> dict[str, Any]:
    """Set (or clear, with None) one JSON setting of a vault; a real change is recorded as an event."""
    with context.catalog.transaction() as session:
        vault = get_vault_row(session, backup_vault_name)
        if value is None and getattr(vault, attribute) is None:
            return {}  # deleting a missing setting is not an error, and not a change
        setattr(vault, attribute, value)
        record_event(session, event, context.now(), resource_arn=vault.arn, vault_name=vault.name)
        return {}
