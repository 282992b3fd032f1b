"""Recovery points: AWS shapes and filters, lifecycle updates, deletion under vault locks, tags."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import FakeClock
from point_helpers import (
    RESOURCE,
    back_up_point,
    make_data,
    point_row,
    read_files,
    restore_point,
    snapshot_ids,
)
from sqlalchemy import select

from backvault.control.catalog import Event
from backvault.control.context import ServiceContext
from backvault.control.legal_holds import create_legal_hold
from backvault.control.plans import create_backup_plan
from backvault.control.point_storage import pending_removals
from backvault.control.recovery_points import (
    delete_recovery_point,
    describe_recovery_point,
    list_recovery_points_by_backup_vault,
    list_recovery_points_by_resource,
    recovery_point_tags,
    update_recovery_point_lifecycle,
)
from backvault.control.tags import list_tags, tag_resource, untag_resource
from backvault.control.vault_settings import put_backup_vault_lock_configuration
from backvault.control.vaults import create_backup_vault, describe_backup_vault
from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
)

OTHER_RESOURCE = "arn:aws:backvault:local:000000000000:filesystem:files/other"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_data(tmp_path / "projects", size=300 * 1024)


def events(context: ServiceContext, event_type: str) -> list[Event]:
    with context.catalog.transaction() as session:
        rows = list(session.scalars(select(Event).where(Event.event_type == event_type)))
        for row in rows:
            session.expunge(row)
        return rows


def test_describe_and_list_have_aws_shapes_and_filters(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "main", encryption_key_arn="arn:aws:kms:local:000000000000:key/abc")
    create_backup_vault(context, "other")
    plan = create_backup_plan(
        context, {"BackupPlanName": "p", "Rules": [{"RuleName": "r", "TargetBackupVaultName": "main"}]}
    )
    start = clock.current
    first = back_up_point(
        context,
        "main",
        source,
        lifecycle={"MoveToColdStorageAfterDays": 7, "DeleteAfterDays": 97},
        plan_id=plan["BackupPlanId"],
    )
    clock.advance(timedelta(days=1))
    second = back_up_point(context, "main", source, resource_arn=OTHER_RESOURCE)
    back_up_point(context, "other", source)

    body = describe_recovery_point(context, "main", first)
    assert body["RecoveryPointArn"] == first and body["BackupVaultName"] == "main"
    assert body["BackupVaultArn"] == describe_backup_vault(context, "main")["BackupVaultArn"]
    assert body["ResourceArn"] == RESOURCE and body["ResourceType"] == "Filesystem"
    assert body["ResourceName"] == "projects"
    assert body["Status"] == "COMPLETED" and body["StorageClass"] == "WARM"
    assert body["Lifecycle"] == {"MoveToColdStorageAfterDays": 7, "DeleteAfterDays": 97}
    assert body["CalculatedLifecycle"] == {
        "MoveToColdStorageAt": start + timedelta(days=7),
        "DeleteAt": start + timedelta(days=97),
    }
    assert body["CreatedBy"]["BackupPlanId"] == plan["BackupPlanId"]
    assert body["CreatedBy"]["BackupPlanArn"] == plan["BackupPlanArn"]
    assert body["CreatedBy"]["BackupRuleId"] == "rule-1"
    assert body["EncryptionKeyArn"] == "arn:aws:kms:local:000000000000:key/abc"
    assert body["IsEncrypted"] is True and body["BackupSizeInBytes"] > 0
    assert "SourceBackupVaultArn" not in body

    def arns(**filters: object) -> set[str]:
        listed = list_recovery_points_by_backup_vault(context, "main", **filters)  # type: ignore[arg-type]
        return {item["RecoveryPointArn"] for item in listed["RecoveryPoints"]}

    assert arns() == {first, second}
    assert arns(by_resource_arn=OTHER_RESOURCE) == {second}
    assert arns(by_resource_type="Filesystem") == {first, second}
    assert arns(by_resource_type="PostgreSQL") == set()
    assert arns(by_backup_plan_id=plan["BackupPlanId"]) == {first}
    assert arns(by_created_before=start + timedelta(hours=1)) == {first}
    assert arns(by_created_after=start + timedelta(hours=1)) == {second}
    assert arns(by_parent_recovery_point_arn=first) == set()
    page = list_recovery_points_by_backup_vault(context, "main", max_results=1)
    rest = list_recovery_points_by_backup_vault(context, "main", max_results=1, next_token=page["NextToken"])
    assert {page["RecoveryPoints"][0]["RecoveryPointArn"], rest["RecoveryPoints"][0]["RecoveryPointArn"]} == {
        first,
        second,
    }
    assert "NextToken" not in rest

    by_resource = list_recovery_points_by_resource(context, RESOURCE)["RecoveryPoints"]
    assert {item["BackupVaultName"] for item in by_resource} == {"main", "other"}
    assert all(item["BackupSizeBytes"] > 0 and item["Status"] == "COMPLETED" for item in by_resource)

    with pytest.raises(ResourceNotFoundException, match="other"):
        describe_recovery_point(context, "other", first)
    with pytest.raises(ResourceNotFoundException):
        describe_recovery_point(context, "main", first, backup_vault_account_id="111111111111")
    with pytest.raises(InvalidParameterValueException):
        describe_recovery_point(context, "main", "arn:aws:backup:local:000000000000:backup-vault:main")


def test_update_lifecycle_follows_aws_rules(context: ServiceContext, clock: FakeClock, source: Path) -> None:
    create_backup_vault(context, "main")
    start = clock.current
    arn = back_up_point(context, "main", source, lifecycle={"DeleteAfterDays": 30})

    answer = update_recovery_point_lifecycle(
        context, "main", arn, lifecycle={"MoveToColdStorageAfterDays": 10, "DeleteAfterDays": 100}
    )
    assert answer["RecoveryPointArn"] == arn
    assert answer["Lifecycle"] == {"MoveToColdStorageAfterDays": 10, "DeleteAfterDays": 100}
    assert answer["CalculatedLifecycle"]["DeleteAt"] == start + timedelta(days=100)
    assert describe_recovery_point(context, "main", arn)["CalculatedLifecycle"]["MoveToColdStorageAt"] == (
        start + timedelta(days=10)
    )
    with pytest.raises(InvalidParameterValueException, match="90"):
        update_recovery_point_lifecycle(
            context, "main", arn, lifecycle={"MoveToColdStorageAfterDays": 10, "DeleteAfterDays": 50}
        )
    # without a lifecycle the point is kept forever
    assert "DeleteAt" not in update_recovery_point_lifecycle(context, "main", arn)["CalculatedLifecycle"]
    assert len(events(context, "RECOVERY_POINT_MODIFIED")) == 2


def test_a_cold_point_keeps_its_cold_period(context: ServiceContext, source: Path) -> None:
    create_backup_vault(context, "main")
    arn = back_up_point(
        context, "main", source, lifecycle={"MoveToColdStorageAfterDays": 1, "DeleteAfterDays": 91}
    )
    with context.catalog.transaction() as session:
        from backvault.control.recovery_points import get_point_row

        get_point_row(session, arn).storage_class = "COLD"
    with pytest.raises(InvalidParameterValueException, match="cold storage"):
        update_recovery_point_lifecycle(
            context, "main", arn, lifecycle={"MoveToColdStorageAfterDays": 5, "DeleteAfterDays": 200}
        )
    answer = update_recovery_point_lifecycle(
        context, "main", arn, lifecycle={"MoveToColdStorageAfterDays": 1, "DeleteAfterDays": 200}
    )
    assert answer["Lifecycle"]["DeleteAfterDays"] == 200


def test_compliance_locked_vault_refuses_deletion_and_shortening(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "locked")
    put_backup_vault_lock_configuration(
        context, "locked", min_retention_days=7, max_retention_days=400, changeable_for_days=3
    )
    clock.advance(timedelta(days=4))  # past the lock date: the lock is immutable now
    arn = back_up_point(context, "locked", source, lifecycle={"DeleteAfterDays": 30})
    before = snapshot_ids(context, "locked")

    with pytest.raises(InvalidRequestException, match="Vault Lock"):
        delete_recovery_point(context, "locked", arn)
    clock.advance(timedelta(days=10))  # older than MinRetentionDays, but its retention has not ended
    with pytest.raises(InvalidRequestException, match="compliance mode"):
        delete_recovery_point(context, "locked", arn)
    with pytest.raises(InvalidRequestException, match="shortened"):
        update_recovery_point_lifecycle(context, "locked", arn, lifecycle={"DeleteAfterDays": 20})
    with pytest.raises(InvalidParameterValueException, match="MaxRetentionDays"):
        update_recovery_point_lifecycle(context, "locked", arn, lifecycle={"DeleteAfterDays": 500})
    with pytest.raises(InvalidParameterValueException, match="MinRetentionDays"):
        update_recovery_point_lifecycle(context, "locked", arn, lifecycle={"DeleteAfterDays": 3})
    extended = update_recovery_point_lifecycle(context, "locked", arn, lifecycle={"DeleteAfterDays": 60})
    assert extended["Lifecycle"] == {"DeleteAfterDays": 60}

    assert point_row(context, arn) is not None and snapshot_ids(context, "locked") == before
    refusals = events(context, "RECOVERY_POINT_DELETION_REFUSED")
    assert len(refusals) == 2 and refusals[0].resource_arn == arn
    clock.advance(timedelta(days=60))  # retention over: deletable by hand (the engine would expire it)
    delete_recovery_point(context, "locked", arn)
    assert point_row(context, arn) is None


def test_governance_lock_protects_points_younger_than_min_retention(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "gov")
    put_backup_vault_lock_configuration(context, "gov", min_retention_days=5)
    arn = back_up_point(context, "gov", source)
    with pytest.raises(InvalidRequestException, match="MinRetentionDays=5"):
        delete_recovery_point(context, "gov", arn)
    clock.advance(timedelta(days=5))
    delete_recovery_point(context, "gov", arn)
    assert point_row(context, arn) is None


def test_delete_forgets_the_snapshot_and_queues_the_prune(
    context: ServiceContext, source: Path, tmp_path: Path
) -> None:
    create_backup_vault(context, "main")
    keep = back_up_point(context, "main", source)
    arn = back_up_point(context, "main", source)
    snapshot = point_row(context, arn).snapshot_id  # type: ignore[union-attr]
    assert describe_backup_vault(context, "main")["NumberOfRecoveryPoints"] == 2

    assert delete_recovery_point(context, "main", arn) == {}
    assert point_row(context, arn) is None
    assert snapshot not in snapshot_ids(context, "main")
    assert describe_backup_vault(context, "main")["NumberOfRecoveryPoints"] == 1
    [removal] = pending_removals(context)
    assert removal["State"] == "FORGOTTEN" and removal["SnapshotId"] == snapshot
    [event] = events(context, "RECOVERY_POINT_DELETED")
    assert event.resource_arn == arn and event.detail["Reason"] == "DELETED"
    with pytest.raises(ResourceNotFoundException):
        delete_recovery_point(context, "main", arn)
    # the other point still restores
    assert read_files(restore_point(context, keep, tmp_path / "restored")) == read_files(source)


def test_legal_hold_blocks_deletion_until_cancelled(context: ServiceContext, source: Path) -> None:
    from backvault.control.legal_holds import cancel_legal_hold

    create_backup_vault(context, "main")
    arn = back_up_point(context, "main", source)
    hold = create_legal_hold(
        context, "case 42", "litigation", recovery_point_selection={"ResourceIdentifiers": [RESOURCE]}
    )
    with pytest.raises(InvalidRequestException, match=hold["LegalHoldId"]):
        delete_recovery_point(context, "main", arn)
    cancel_legal_hold(context, hold["LegalHoldId"], "case closed")
    delete_recovery_point(context, "main", arn)
    assert point_row(context, arn) is None


def test_tags_on_points_vaults_plans_and_holds(context: ServiceContext, source: Path) -> None:
    vault_arn = create_backup_vault(context, "main", backup_vault_tags={"team": "ops"})["BackupVaultArn"]
    plan_arn = create_backup_plan(
        context, {"BackupPlanName": "p", "Rules": [{"RuleName": "r", "TargetBackupVaultName": "main"}]}
    )["BackupPlanArn"]
    hold_arn = create_legal_hold(
        context, "t", "d", recovery_point_selection={"VaultNames": ["main"]}, tags={"case": "1"}
    )["LegalHoldArn"]
    point_arn = back_up_point(context, "main", source, tags={"kind": "daily"})

    assert recovery_point_tags(context, point_arn) == {"kind": "daily"}
    tag_resource(context, point_arn, {"owner": "alice", "kind": "weekly"})
    assert list_tags(context, point_arn)["Tags"] == {"kind": "weekly", "owner": "alice"}
    untag_resource(context, point_arn, ["kind", "absent"])
    assert recovery_point_tags(context, point_arn) == {"owner": "alice"}
    assert list_tags(context, vault_arn)["Tags"] == {"team": "ops"}
    assert list_tags(context, hold_arn)["Tags"] == {"case": "1"}
    tag_resource(context, plan_arn, {"a": "1", "b": "2", "c": "3"})
    first = list_tags(context, plan_arn, max_results=2)
    assert first["Tags"] == {"a": "1", "b": "2"}
    assert list_tags(context, plan_arn, next_token=first["NextToken"])["Tags"] == {"c": "3"}

    with pytest.raises(InvalidParameterValueException, match="aws:"):
        tag_resource(context, vault_arn, {"aws:name": "x"})
    with pytest.raises(ResourceNotFoundException):
        list_tags(context, "arn:aws:backup:local:000000000000:recovery-point:missing")
    with pytest.raises(InvalidParameterValueException, match="not supported"):
        list_tags(context, "arn:aws:backup:local:000000000000:report-plan:r")
