"""Vault Lock (governance and compliance, with a moving clock), access policies and notifications."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from control_helpers import START, FakeClock
from sqlalchemy import select

from backvault.control.catalog import Event
from backvault.control.context import ServiceContext
from backvault.control.vault_settings import (
    delete_backup_vault_access_policy,
    delete_backup_vault_lock_configuration,
    delete_backup_vault_notifications,
    get_backup_vault_access_policy,
    get_backup_vault_notifications,
    put_backup_vault_access_policy,
    put_backup_vault_lock_configuration,
    put_backup_vault_notifications,
)
from backvault.control.vaults import create_backup_vault, describe_backup_vault, list_backup_vaults
from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    MissingParameterValueException,
    ResourceNotFoundException,
)

ARN = "arn:aws:backup:local:000000000000:backup-vault:main"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "backup:DeleteRecoveryPoint", "Resource": "*"}
    ],
}
TOPIC = "arn:aws:sns:local:000000000000:backup-events"


@pytest.fixture
def vault(context: ServiceContext) -> str:
    """A vault named main."""
    return str(create_backup_vault(context, "main")["BackupVaultName"])


def test_governance_lock_can_be_changed_and_removed_any_time(
    context: ServiceContext, clock: FakeClock, vault: str
) -> None:
    put_backup_vault_lock_configuration(context, vault, min_retention_days=7, max_retention_days=30)
    described = describe_backup_vault(context, vault)
    assert (described["Locked"], described["MinRetentionDays"], described["MaxRetentionDays"]) == (
        True,
        7,
        30,
    )
    assert "LockDate" not in described
    clock.advance(timedelta(days=400))
    put_backup_vault_lock_configuration(context, vault, min_retention_days=14)
    assert describe_backup_vault(context, vault)["MinRetentionDays"] == 14
    assert "MaxRetentionDays" not in describe_backup_vault(context, vault)
    delete_backup_vault_lock_configuration(context, vault)
    assert describe_backup_vault(context, vault)["Locked"] is False
    assert "MinRetentionDays" not in describe_backup_vault(context, vault)


def test_compliance_lock_becomes_immutable_on_its_lock_date(
    context: ServiceContext, clock: FakeClock, vault: str
) -> None:
    put_backup_vault_lock_configuration(context, vault, min_retention_days=7, changeable_for_days=3)
    lock_date = START + timedelta(days=3)
    assert describe_backup_vault(context, vault)["LockDate"] == lock_date
    assert list_backup_vaults(context)["BackupVaultList"][0]["LockDate"] == lock_date

    # Still in the cooling-off period: it may change (the new lock date counts from now).
    clock.advance(timedelta(days=2))
    put_backup_vault_lock_configuration(context, vault, min_retention_days=10, changeable_for_days=3)
    lock_date = clock() + timedelta(days=3)
    assert describe_backup_vault(context, vault)["LockDate"] == lock_date

    clock.current = lock_date - timedelta(microseconds=1)
    put_backup_vault_lock_configuration(context, vault, min_retention_days=10, changeable_for_days=3)
    lock_date = clock() + timedelta(days=3)

    clock.current = lock_date  # on the lock date itself: immutable
    with pytest.raises(InvalidRequestException, match="compliance mode and became immutable"):
        put_backup_vault_lock_configuration(context, vault, min_retention_days=1)
    with pytest.raises(InvalidRequestException, match="immutable"):
        delete_backup_vault_lock_configuration(context, vault)
    clock.advance(timedelta(days=3650))
    with pytest.raises(InvalidRequestException, match="immutable"):
        delete_backup_vault_lock_configuration(context, vault)
    described = describe_backup_vault(context, vault)
    assert (described["Locked"], described["MinRetentionDays"], described["LockDate"]) == (
        True,
        10,
        lock_date,
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_retention_days": 0}, "MinRetentionDays \\(0\\)"),
        ({"min_retention_days": 10, "max_retention_days": 5}, "must not be greater"),
        ({"changeable_for_days": 2}, "ChangeableForDays \\(2\\)"),
    ],
)
def test_invalid_locks_are_refused_and_change_nothing(
    context: ServiceContext, vault: str, settings: dict[str, int], message: str
) -> None:
    with pytest.raises(InvalidParameterValueException, match=message):
        put_backup_vault_lock_configuration(context, vault, **settings)
    assert describe_backup_vault(context, vault)["Locked"] is False


def test_lock_changes_are_events(context: ServiceContext, vault: str) -> None:
    put_backup_vault_lock_configuration(context, vault, min_retention_days=7, changeable_for_days=3)
    with context.catalog.transaction() as session:
        event = session.scalars(select(Event).where(Event.event_type == "BACKUP_VAULT_LOCK_CHANGED")).one()
        assert event.vault_name == vault
        assert event.detail["Mode"] == "COMPLIANCE"


def test_access_policy_round_trip(context: ServiceContext, vault: str) -> None:
    with pytest.raises(ResourceNotFoundException, match="no access policy"):
        get_backup_vault_access_policy(context, vault)
    put_backup_vault_access_policy(context, vault, policy=json.dumps(POLICY))
    answer = get_backup_vault_access_policy(context, vault)
    assert (answer["BackupVaultName"], answer["BackupVaultArn"]) == (vault, ARN)
    assert json.loads(answer["Policy"]) == POLICY
    delete_backup_vault_access_policy(context, vault)
    delete_backup_vault_access_policy(context, vault)
    with pytest.raises(ResourceNotFoundException):
        get_backup_vault_access_policy(context, vault)


@pytest.mark.parametrize("policy", ["{not json", "[1, 2]", '{"Version": "2012-10-17"}', None])
def test_invalid_policies_are_refused(context: ServiceContext, vault: str, policy: str | None) -> None:
    with pytest.raises(InvalidParameterValueException, match="Policy"):
        put_backup_vault_access_policy(context, vault, policy=policy)


def test_notifications_round_trip(context: ServiceContext, vault: str) -> None:
    with pytest.raises(ResourceNotFoundException, match="no notification configuration"):
        get_backup_vault_notifications(context, vault)
    events = ["BACKUP_JOB_FAILED", "COPY_JOB_FAILED", "BACKUP_JOB_FAILED"]
    put_backup_vault_notifications(context, vault, sns_topic_arn=TOPIC, backup_vault_events=events)
    assert get_backup_vault_notifications(context, vault) == {
        "BackupVaultName": vault,
        "BackupVaultArn": ARN,
        "SNSTopicArn": TOPIC,
        "BackupVaultEvents": ["BACKUP_JOB_FAILED", "COPY_JOB_FAILED"],
    }
    delete_backup_vault_notifications(context, vault)
    with pytest.raises(ResourceNotFoundException):
        get_backup_vault_notifications(context, vault)


def test_invalid_notifications_are_refused(context: ServiceContext, vault: str) -> None:
    with pytest.raises(InvalidParameterValueException, match="unknown event\\(s\\) BACKUP_JOB_EXPLODED"):
        put_backup_vault_notifications(
            context, vault, sns_topic_arn=TOPIC, backup_vault_events=["BACKUP_JOB_EXPLODED"]
        )
    with pytest.raises(InvalidParameterValueException, match="Invalid ARN"):
        put_backup_vault_notifications(context, vault, sns_topic_arn="topic", backup_vault_events=[])


def test_settings_of_a_missing_vault_are_not_found(context: ServiceContext) -> None:
    calls: list[Callable[[], object]] = [
        lambda: put_backup_vault_lock_configuration(context, "nope", min_retention_days=1),
        lambda: delete_backup_vault_lock_configuration(context, "nope"),
        lambda: get_backup_vault_access_policy(context, "nope"),
        lambda: put_backup_vault_access_policy(context, "nope", policy=json.dumps(POLICY)),
        lambda: get_backup_vault_notifications(context, "nope"),
        lambda: delete_backup_vault_notifications(context, "nope"),
    ]
    for call in calls:
        with pytest.raises(ResourceNotFoundException, match="'nope'"):
            call()


def test_missing_notification_members_are_reported(context: ServiceContext, vault: str) -> None:
    with pytest.raises(MissingParameterValueException, match="SNSTopicArn"):
        put_backup_vault_notifications(
            context, vault, sns_topic_arn=None, backup_vault_events=["BACKUP_JOB_FAILED"]
        )
    with pytest.raises(MissingParameterValueException, match="BackupVaultEvents"):
        put_backup_vault_notifications(context, vault, sns_topic_arn=TOPIC, backup_vault_events=None)
