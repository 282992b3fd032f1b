"""Vault names, Vault Lock modes and retention checks, legal holds (all with a fixed clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    InvalidResourceStateException,
    MissingParameterValueException,
)
from backvault.domain.lifecycle import Lifecycle
from backvault.domain.vault import (
    LegalHold,
    LegalHoldStatus,
    RecoveryPointRef,
    RecoveryPointSelection,
    VaultLock,
    VaultLockMode,
    check_can_delete_point,
    check_lifecycle_update,
    check_no_active_legal_hold,
    check_retention_for_new_point,
    new_vault_lock,
    validate_backup_vault_name,
    validate_lock_change,
    vault_lock_from_request,
)

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
PG = "arn:aws:backvault:local:000000000000:postgresql:pg/orders"


@pytest.mark.parametrize("name", ["ab", "Default", "prod_vault-2", "x" * 50])
def test_valid_vault_names(name: str) -> None:
    assert validate_backup_vault_name(name) == name


@pytest.mark.parametrize("name", ["a", "x" * 51, "my vault", "vault.prod", "vault/1", ""])
def test_invalid_vault_names(name: str) -> None:
    with pytest.raises(InvalidParameterValueException, match="2-50 characters"):
        validate_backup_vault_name(name)


def test_governance_lock_can_change_any_time() -> None:
    lock = new_vault_lock(min_retention_days=7, max_retention_days=365, changeable_for_days=None, now=NOW)
    assert lock == VaultLock(7, 365, None)
    assert lock.mode == VaultLockMode.GOVERNANCE
    validate_lock_change(lock, NOW + timedelta(days=10_000))
    assert lock.to_aws() == {"Locked": True, "MinRetentionDays": 7, "MaxRetentionDays": 365}


def test_compliance_lock_becomes_immutable_on_its_lock_date() -> None:
    lock = vault_lock_from_request({"MinRetentionDays": 30, "ChangeableForDays": 3}, NOW)
    assert lock.mode == VaultLockMode.COMPLIANCE
    assert lock.lock_date == datetime(2025, 5, 4, 12, 0, tzinfo=UTC)
    validate_lock_change(lock, datetime(2025, 5, 4, 11, 59, 59, tzinfo=UTC))  # grace time: allowed
    with pytest.raises(InvalidRequestException) as info:
        validate_lock_change(lock, datetime(2025, 5, 4, 12, 0, tzinfo=UTC))
    assert info.value.code == "InvalidRequestException"
    assert "2025-05-04T12:00:00Z" in info.value.message
    validate_lock_change(None, NOW)  # no lock yet: anything goes
    assert lock.to_aws()["LockDate"] == datetime(2025, 5, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("min_days", "max_days", "changeable", "fragment"),
    [
        (None, None, 2, "72-hour cooling-off"),
        (None, None, 36501, "between 3 and 36500"),
        (0, None, None, "MinRetentionDays (0)"),
        (None, 36501, None, "MaxRetentionDays (36501)"),
        (30, 7, None, "must not be greater than MaxRetentionDays (7)"),
    ],
)
def test_lock_parameter_errors(
    min_days: int | None, max_days: int | None, changeable: int | None, fragment: str
) -> None:
    with pytest.raises(InvalidParameterValueException) as info:
        new_vault_lock(
            min_retention_days=min_days, max_retention_days=max_days, changeable_for_days=changeable, now=NOW
        )
    assert fragment in info.value.message


def test_lock_request_rejects_wrong_types_and_unknown_members() -> None:
    with pytest.raises(InvalidRequestException, match="must be an integer"):
        vault_lock_from_request({"MinRetentionDays": "7"}, NOW)
    with pytest.raises(InvalidRequestException, match="unknown member"):
        vault_lock_from_request({"MinRetention": 7}, NOW)


@pytest.mark.parametrize(
    ("lock", "lifecycle", "allowed"),
    [
        (None, None, True),
        (VaultLock(7, None), Lifecycle(None, 7), True),
        (VaultLock(7, None), Lifecycle(None, 6), False),
        (VaultLock(7, None), None, True),  # kept forever satisfies a minimum
        (VaultLock(None, 30), Lifecycle(None, 30), True),
        (VaultLock(None, 30), Lifecycle(None, 31), False),
        (VaultLock(None, 30), None, False),  # no DeleteAfterDays while a maximum is set
        (VaultLock(None, 30), Lifecycle(10, None), False),
        (VaultLock(7, 30), Lifecycle(None, 15), True),
    ],
)
def test_retention_of_new_points(lock: VaultLock | None, lifecycle: Lifecycle | None, allowed: bool) -> None:
    if allowed:
        check_retention_for_new_point(lock, lifecycle)
    else:
        with pytest.raises(InvalidParameterValueException, match=r"vault lock|different vault"):
            check_retention_for_new_point(lock, lifecycle)


def test_deletion_waits_for_the_minimum_retention() -> None:
    created = datetime(2025, 4, 1, 0, 0, tzinfo=UTC)
    lock = VaultLock(30, None, None)
    with pytest.raises(InvalidRequestException, match="can be deleted from 2025-05-01T00:00:00Z"):
        check_can_delete_point(lock, created, datetime(2025, 4, 30, 23, 59, tzinfo=UTC))
    check_can_delete_point(lock, created, datetime(2025, 5, 1, 0, 0, tzinfo=UTC))
    check_can_delete_point(VaultLock(None, 90), created, created)  # only a maximum: no minimum to wait for
    check_can_delete_point(None, created, created)


def test_lifecycle_changes_in_a_locked_vault_only_extend() -> None:
    created = datetime(2025, 4, 1, tzinfo=UTC)
    lock = VaultLock(30, 365)
    current_end = created + timedelta(days=60)
    check_lifecycle_update(lock, created, current_end, Lifecycle(None, 90))  # extend
    check_lifecycle_update(lock, created, current_end, Lifecycle(None, 60))  # unchanged
    with pytest.raises(InvalidRequestException, match="extended but not shortened"):
        check_lifecycle_update(lock, created, current_end, Lifecycle(None, 45))
    with pytest.raises(InvalidParameterValueException, match="MinRetentionDays"):
        check_lifecycle_update(VaultLock(30, None), created, None, Lifecycle(None, 20))
    with pytest.raises(InvalidParameterValueException, match="MaxRetentionDays"):
        check_lifecycle_update(lock, created, current_end, Lifecycle(None, 400))
    with pytest.raises(InvalidRequestException, match="it ends never"):
        check_lifecycle_update(VaultLock(30, None), created, None, Lifecycle(None, 100))
    check_lifecycle_update(None, created, current_end, Lifecycle(None, 1))  # no lock: free


def point(
    vault: str = "prod", arn: str = PG, day: int = 10, resource_type: str = "PostgreSQL"
) -> RecoveryPointRef:
    return RecoveryPointRef(vault, arn, datetime(2025, 3, day, 12, 0, tzinfo=UTC), resource_type)


def hold(**selection: object) -> LegalHold:
    return LegalHold(
        legal_hold_id="LH-1",
        title="case 42",
        description="litigation",
        status=LegalHoldStatus.ACTIVE,
        creation_date=NOW,
        selection=RecoveryPointSelection.from_aws(selection),
    )


MARCH = {"FromDate": datetime(2025, 3, 1, tzinfo=UTC), "ToDate": datetime(2025, 3, 10, 12, 0, tzinfo=UTC)}


@pytest.mark.parametrize(
    ("criteria", "candidate", "covered"),
    [
        ({"VaultNames": ["prod"]}, point(), True),
        ({"VaultNames": ["prod"]}, point(vault="dev"), False),
        ({"VaultNames": ["dev", "prod"]}, point(), True),
        ({"ResourceIdentifiers": [PG]}, point(), True),
        ({"ResourceIdentifiers": ["PostgreSQL"]}, point(), True),
        ({"ResourceIdentifiers": [PG]}, point(arn=PG + "2"), False),
        ({"DateRange": MARCH}, point(day=10), True),  # ToDate is inclusive (12:00 exactly)
        ({"DateRange": MARCH}, point(day=11), False),
        ({"DateRange": MARCH}, point(day=1), True),
        ({"VaultNames": ["prod"], "DateRange": MARCH}, point(day=11), False),  # criteria are AND'ed
        ({"VaultNames": ["prod"], "ResourceIdentifiers": [PG]}, point(vault="dev"), False),
    ],
)
def test_legal_hold_coverage(criteria: dict[str, object], candidate: RecoveryPointRef, covered: bool) -> None:
    assert hold(**criteria).covers(candidate) is covered


def test_legal_hold_lifecycle_and_deletion_check() -> None:
    active = hold(VaultNames=["prod"])
    check_no_active_legal_hold([active], point(vault="dev"))
    with pytest.raises(InvalidRequestException, match=r"active legal hold\(s\): LH-1"):
        check_no_active_legal_hold([active], point())
    canceling = active.with_status(LegalHoldStatus.CANCELING, NOW, "case closed")
    assert canceling.protects(point())  # still protecting until canceled
    canceled = canceling.with_status(LegalHoldStatus.CANCELED, NOW + timedelta(minutes=5))
    assert canceled.cancellation_date == NOW + timedelta(minutes=5)
    assert canceled.cancel_description == "case closed"
    assert not canceled.protects(point()) and canceled.covers(point())
    check_no_active_legal_hold([canceled], point())
    with pytest.raises(InvalidResourceStateException, match="is CANCELED; it cannot become CANCELING"):
        canceled.with_status(LegalHoldStatus.CANCELING, NOW, "again")
    with pytest.raises(MissingParameterValueException, match="CancelDescription"):
        active.with_status(LegalHoldStatus.CANCELING, NOW)


def test_recovery_point_selection_errors() -> None:
    with pytest.raises(MissingParameterValueException, match="at least one of"):
        RecoveryPointSelection.from_aws({})
    with pytest.raises(InvalidParameterValueException, match="is after ToDate"):
        RecoveryPointSelection.from_aws(
            {"DateRange": {"FromDate": MARCH["ToDate"], "ToDate": MARCH["FromDate"]}}
        )
    with pytest.raises(MissingParameterValueException, match="ToDate is required"):
        RecoveryPointSelection.from_aws({"DateRange": {"FromDate": MARCH["FromDate"]}})
    with pytest.raises(InvalidParameterValueException, match="2-50 characters"):
        RecoveryPointSelection.from_aws({"VaultNames": ["x"]})
    with pytest.raises(InvalidRequestException, match="time zone"):
        RecoveryPointSelection.from_aws({"DateRange": {"FromDate": "2025-01-01", "ToDate": "2025-02-01"}})
    selection = RecoveryPointSelection.from_aws({"VaultNames": ["prod"], "DateRange": MARCH})
    assert selection.to_aws() == {"VaultNames": ["prod"], "DateRange": MARCH}
