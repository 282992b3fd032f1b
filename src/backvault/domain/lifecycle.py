"""Recovery-point lifecycle: AWS Backup's ``Lifecycle`` rules and the dates they produce.

A lifecycle says how many days after creation a recovery point moves to cold storage and when it is
deleted. AWS's rules, enforced here:

* each number is 1-36500 days; ``-1`` means "never" (AWS: -1 for both keeps points indefinitely);
* a point stays at least 90 days in cold storage, so when both are set
  ``DeleteAfterDays >= MoveToColdStorageAfterDays + 90``;
* once a point is in cold storage its ``MoveToColdStorageAfterDays`` can no longer change
  (UpdateRecoveryPointLifecycle), which with the rule above keeps it 90 days in cold;
* resource types that cannot go cold ignore ``MoveToColdStorageAfterDays`` (it is still validated);
* ``OptInToArchiveForSupportedResources`` is kept for round trips and otherwise ignored.

Days are exact 24-hour periods from the creation instant, as AWS's ``CalculatedLifecycle`` shows;
calculated instants are in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidResourceStateException,
    expect_bool,
    expect_int,
    expect_mapping,
    reject_unknown_members,
)

MIN_DAYS_IN_COLD = 90
MAX_LIFECYCLE_DAYS = 36500
KEEP_FOREVER = -1


class StorageClass(StrEnum):
    """Where a recovery point's data currently is (AWS's ``StorageClass``)."""

    WARM = "WARM"
    COLD = "COLD"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Lifecycle:
    """Days after creation to move to cold storage and to delete; None means never."""

    move_to_cold_storage_after_days: int | None = None
    delete_after_days: int | None = None
    opt_in_to_archive_for_supported_resources: bool | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def keeps_forever(self) -> bool:
        """True when the point is never deleted by its lifecycle."""
        return self.delete_after_days is None

    def validate(self, where: str = "Lifecycle") -> None:
        """Check AWS's lifecycle rules, raising InvalidParameterValueException."""
        _check_days(self.move_to_cold_storage_after_days, self.delete_after_days, where)

    @classmethod
    def from_aws(cls, data: Any, where: str = "Lifecycle") -> Lifecycle:
        """Parse an AWS ``Lifecycle`` object; -1 in a field means never."""
        body = expect_mapping(data, where)
        # DeleteAfterEvent is output-only in AWS ("not valid as an input"): tolerated, ignored.
        allowed = {
            "MoveToColdStorageAfterDays",
            "DeleteAfterDays",
            "OptInToArchiveForSupportedResources",
            "DeleteAfterEvent",
        }
        reject_unknown_members(body, allowed, where)
        days: dict[str, int | None] = {}
        for key in ("MoveToColdStorageAfterDays", "DeleteAfterDays"):
            raw = body.get(key)
            value = None if raw is None else expect_int(raw, f"{where}.{key}")
            days[key] = None if value == KEEP_FOREVER else value
        opt_in = body.get("OptInToArchiveForSupportedResources")
        if opt_in is not None:
            expect_bool(opt_in, f"{where}.OptInToArchiveForSupportedResources")
        cold, delete = days["MoveToColdStorageAfterDays"], days["DeleteAfterDays"]
        _check_days(cold, delete, where)  # first, so the message names the caller's location
        return cls(cold, delete, opt_in)

    def to_aws(self) -> dict[str, Any]:
        """Return the AWS ``Lifecycle`` object (fields that are never are left out)."""
        body: dict[str, Any] = {}
        if self.move_to_cold_storage_after_days is not None:
            body["MoveToColdStorageAfterDays"] = self.move_to_cold_storage_after_days
        if self.delete_after_days is not None:
            body["DeleteAfterDays"] = self.delete_after_days
        if self.opt_in_to_archive_for_supported_resources is not None:
            body["OptInToArchiveForSupportedResources"] = self.opt_in_to_archive_for_supported_resources
        return body


def _check_days(cold: int | None, delete: int | None, where: str) -> None:
    for name, value in (("MoveToColdStorageAfterDays", cold), ("DeleteAfterDays", delete)):
        if value is not None and not 1 <= value <= MAX_LIFECYCLE_DAYS:
            raise InvalidParameterValueException(
                f"Invalid lifecycle in {where}: {name} ({value}) cannot be less than 1 or more than "
                f"{MAX_LIFECYCLE_DAYS} days (use -1 to mean never)."
            )
    if cold is not None and delete is not None and delete < cold + MIN_DAYS_IN_COLD:
        raise InvalidParameterValueException(
            f"Invalid lifecycle in {where}: DeleteAfterDays ({delete}) must be at least "
            f"{MIN_DAYS_IN_COLD} days after MoveToColdStorageAfterDays ({cold}), i.e. >= "
            f"{cold + MIN_DAYS_IN_COLD}, because backups stay in cold storage for at least "
            f"{MIN_DAYS_IN_COLD} days."
        )


@dataclass(frozen=True)
class CalculatedLifecycle:
    """The instants a lifecycle produces for one recovery point (AWS's ``CalculatedLifecycle``)."""

    move_to_cold_storage_at: datetime | None = None
    delete_at: datetime | None = None

    def is_due_for_cold(self, now: datetime) -> bool:
        """True once the point should be in cold storage (the caller checks it is still warm)."""
        return self.move_to_cold_storage_at is not None and _utc(now) >= self.move_to_cold_storage_at

    def is_expired(self, now: datetime) -> bool:
        """True once the point's retention has ended (legal holds are checked elsewhere)."""
        return self.delete_at is not None and _utc(now) >= self.delete_at

    def to_aws(self) -> dict[str, datetime]:
        """Return the AWS ``CalculatedLifecycle`` object (timestamps serialised by the API layer)."""
        body: dict[str, datetime] = {}
        if self.move_to_cold_storage_at is not None:
            body["MoveToColdStorageAt"] = self.move_to_cold_storage_at
        if self.delete_at is not None:
            body["DeleteAt"] = self.delete_at
        return body


def calculate_lifecycle(
    created: datetime, lifecycle: Lifecycle | None, *, supports_cold_storage: bool = True
) -> CalculatedLifecycle:
    """Return when a point created at ``created`` moves to cold storage and is deleted."""
    created = _utc(created)
    if lifecycle is None:
        return CalculatedLifecycle()
    cold_days = lifecycle.move_to_cold_storage_after_days if supports_cold_storage else None
    delete_days = lifecycle.delete_after_days
    return CalculatedLifecycle(
        move_to_cold_storage_at=None if cold_days is None else created + timedelta(days=cold_days),
        delete_at=None if delete_days is None else created + timedelta(days=delete_days),
    )


def _utc(moment: datetime) -> datetime:
    # Python adds and compares datetimes sharing a tzinfo on the wall clock; a lifecycle day is 24
    # real hours, so work in UTC.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {moment!r}.")
    return moment.astimezone(UTC)


def lifecycle_from_request(data: Mapping[str, Any] | None, where: str = "Lifecycle") -> Lifecycle | None:
    """Parse an optional AWS ``Lifecycle`` member (absent stays None)."""
    return None if data is None else Lifecycle.from_aws(data, where)


def validate_lifecycle_update(
    current: Lifecycle | None,
    new: Lifecycle,
    *,
    storage_class: StorageClass,
    supports_cold_storage: bool = True,
) -> Lifecycle:
    """Check an UpdateRecoveryPointLifecycle request against the point's state; return the new lifecycle."""
    new.validate()
    if storage_class == StorageClass.DELETED:
        raise InvalidResourceStateException(
            "The recovery point is deleted; its lifecycle can no longer be changed."
        )
    if storage_class == StorageClass.COLD and supports_cold_storage:
        current_cold = None if current is None else current.move_to_cold_storage_after_days
        keeps_forever = new.move_to_cold_storage_after_days is None and new.delete_after_days is None
        if new.move_to_cold_storage_after_days != current_cold and not keeps_forever:
            raise InvalidParameterValueException(
                "The recovery point is already in cold storage, so MoveToColdStorageAfterDays can't be "
                f"changed (it is {current_cold}, the request says {new.move_to_cold_storage_after_days}). "
                "Keep the current value; DeleteAfterDays may change as long as it stays at least "
                f"{MIN_DAYS_IN_COLD} days after it."
            )
    return new
