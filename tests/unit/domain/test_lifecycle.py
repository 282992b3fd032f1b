"""Lifecycle arithmetic and UpdateRecoveryPointLifecycle rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backvault.domain.errors import InvalidParameterValueException, InvalidResourceStateException
from backvault.domain.lifecycle import (
    CalculatedLifecycle,
    Lifecycle,
    StorageClass,
    calculate_lifecycle,
    lifecycle_from_request,
    validate_lifecycle_update,
)

CREATED = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


def test_calculated_dates_are_whole_days_after_creation() -> None:
    calculated = calculate_lifecycle(CREATED, Lifecycle(30, 120))
    assert calculated == CalculatedLifecycle(
        move_to_cold_storage_at=datetime(2025, 1, 31, 10, 0, tzinfo=UTC),
        delete_at=datetime(2025, 5, 1, 10, 0, tzinfo=UTC),
    )
    assert calculated.to_aws() == {
        "MoveToColdStorageAt": datetime(2025, 1, 31, 10, 0, tzinfo=UTC),
        "DeleteAt": datetime(2025, 5, 1, 10, 0, tzinfo=UTC),
    }


def test_days_are_24_hours_across_dst() -> None:
    berlin_creation = datetime(2025, 3, 29, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 11:00 UTC
    calculated = calculate_lifecycle(berlin_creation, Lifecycle(None, 1))
    assert calculated.delete_at == datetime(2025, 3, 30, 11, 0, tzinfo=UTC)


def test_due_and_expired_boundaries() -> None:
    calculated = calculate_lifecycle(CREATED, Lifecycle(30, 120))
    assert calculated.move_to_cold_storage_at is not None and calculated.delete_at is not None
    cold_at, delete_at = calculated.move_to_cold_storage_at, calculated.delete_at
    assert not calculated.is_due_for_cold(cold_at - timedelta(seconds=1))
    assert calculated.is_due_for_cold(cold_at)
    assert not calculated.is_expired(delete_at - timedelta(microseconds=1))
    assert calculated.is_expired(delete_at)
    # An aware "now" in another zone compares as an instant.
    assert calculated.is_expired(delete_at.astimezone(ZoneInfo("America/New_York")))


def test_no_lifecycle_and_no_cold_support() -> None:
    never = calculate_lifecycle(CREATED, None)
    assert not never.is_due_for_cold(CREATED + timedelta(days=100_000))
    assert not never.is_expired(CREATED + timedelta(days=100_000))
    warm_only = calculate_lifecycle(CREATED, Lifecycle(30, 120), supports_cold_storage=False)
    assert warm_only.move_to_cold_storage_at is None
    assert warm_only.delete_at == datetime(2025, 5, 1, 10, 0, tzinfo=UTC)


def test_parsing_minus_one_and_output_only_members() -> None:
    assert lifecycle_from_request(None) is None
    forever = Lifecycle.from_aws({"MoveToColdStorageAfterDays": -1, "DeleteAfterDays": -1})
    assert forever == Lifecycle(None, None)
    assert forever.keeps_forever
    tolerated = Lifecycle.from_aws({"DeleteAfterDays": 7, "DeleteAfterEvent": "DELETE_AFTER_COPY"})
    assert tolerated == Lifecycle(None, 7)
    archived = Lifecycle.from_aws({"DeleteAfterDays": 7, "OptInToArchiveForSupportedResources": True})
    assert archived.to_aws() == {"DeleteAfterDays": 7, "OptInToArchiveForSupportedResources": True}


@pytest.mark.parametrize(
    ("cold", "delete", "valid"),
    [
        (30, 120, True),
        (30, 119, False),
        (1, 91, True),
        (None, 1, True),
        (None, 0, False),
        (0, None, False),
        (36500, None, True),
        (None, 36501, False),
        (-2, None, False),
    ],
)
def test_lifecycle_value_rules(cold: int | None, delete: int | None, valid: bool) -> None:
    body = {
        k: v for k, v in (("MoveToColdStorageAfterDays", cold), ("DeleteAfterDays", delete)) if v is not None
    }
    if valid:
        assert Lifecycle.from_aws(body) == Lifecycle(cold, delete)
    else:
        with pytest.raises(InvalidParameterValueException, match="Invalid lifecycle in Lifecycle"):
            Lifecycle.from_aws(body)


def test_update_of_a_cold_point_keeps_the_transition_day() -> None:
    current = Lifecycle(30, 120)
    assert validate_lifecycle_update(
        current, Lifecycle(30, 150), storage_class=StorageClass.COLD
    ) == Lifecycle(30, 150)
    with pytest.raises(InvalidParameterValueException, match="already in cold storage"):
        validate_lifecycle_update(current, Lifecycle(40, 150), storage_class=StorageClass.COLD)
    with pytest.raises(InvalidParameterValueException, match="already in cold storage"):
        validate_lifecycle_update(current, Lifecycle(None, 150), storage_class=StorageClass.COLD)
    # The 90-days-in-cold rule still holds: a request ending retention before cold + 90 can't even parse.
    with pytest.raises(InvalidParameterValueException, match=r"i\.e\. >= 120"):
        Lifecycle.from_aws({"MoveToColdStorageAfterDays": 30, "DeleteAfterDays": 100})
    # Keeping the point forever is always allowed.
    assert validate_lifecycle_update(
        current, Lifecycle(None, None), storage_class=StorageClass.COLD
    ).keeps_forever


def test_update_of_a_warm_point_may_change_everything() -> None:
    assert validate_lifecycle_update(
        Lifecycle(30, 120), Lifecycle(10, 100), storage_class=StorageClass.WARM
    ) == Lifecycle(10, 100)
    # A type without cold storage has never moved, whatever the stored class says.
    assert validate_lifecycle_update(
        Lifecycle(30, 120), Lifecycle(5, 95), storage_class=StorageClass.COLD, supports_cold_storage=False
    ) == Lifecycle(5, 95)


def test_update_of_a_deleted_point_is_refused() -> None:
    with pytest.raises(InvalidResourceStateException) as info:
        validate_lifecycle_update(None, Lifecycle(None, 10), storage_class=StorageClass.DELETED)
    assert info.value.code == "InvalidResourceStateException"
