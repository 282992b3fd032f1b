"""Backup vault rules: names, Vault Lock (governance and compliance) and legal holds.

Vault Lock, as AWS Backup defines it (PutBackupVaultLockConfiguration):

* no ``ChangeableForDays``: governance mode; authorised users may change or delete the lock at any
  time;
* ``ChangeableForDays`` (at least 3, AWS's 72-hour cooling-off period): compliance mode; the lock
  date is ``now + ChangeableForDays`` and on and after it the lock can be neither changed nor deleted
  (InvalidRequestException, as AWS answers);
* ``MinRetentionDays`` / ``MaxRetentionDays`` (1-36500, min <= max) bind future backup and copy jobs:
  a job whose lifecycle retains for fewer than min or more than max days fails, and so does a job
  without ``DeleteAfterDays`` (kept forever) when a maximum is set.

While any lock is in place, a recovery point younger than ``MinRetentionDays`` cannot be deleted, and
its lifecycle can be extended (up to ``MaxRetentionDays``) but not shortened: AWS documents that Vault
Lock "prevents attempts to update the lifecycle policy that controls the retention period"; refusing
only shortening keeps extensions, which cannot weaken the lock, possible.

Legal holds (CreateLegalHold) select recovery points by vault names, resource identifiers (resource
ARNs, or resource type names) and a creation-date range, inclusive at both ends. Criteria given are
AND'ed, values inside one criterion OR'ed. A hold protects every point it covers, including points
created after the hold, until it is CANCELED: erring on the side of keeping data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    InvalidResourceStateException,
    MissingParameterValueException,
    expect_int,
    expect_list,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)
from backvault.domain.lifecycle import MAX_LIFECYCLE_DAYS, Lifecycle

_VAULT_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_]{2,50}$")
MIN_CHANGEABLE_FOR_DAYS = 3


def validate_backup_vault_name(name: Any, where: str = "BackupVaultName") -> str:
    """Return ``name`` if it is a valid vault name (2-50 letters, digits, '-' or '_')."""
    text = expect_str(name, where)
    if not _VAULT_NAME_RE.match(text):
        raise InvalidParameterValueException(
            f"{where} {text!r} is not valid: a backup vault name is 2-50 characters, each a letter, digit, "
            "'-' or '_'."
        )
    return text


# --- Vault Lock ----------------------------------------------------------------------------------


class VaultLockMode(StrEnum):
    """Governance locks can be removed by authorised users; compliance locks become immutable."""

    GOVERNANCE = "GOVERNANCE"
    COMPLIANCE = "COMPLIANCE"


@dataclass(frozen=True)
class VaultLock:
    """A vault's lock configuration; ``lock_date`` is set only in compliance mode."""

    min_retention_days: int | None = None
    max_retention_days: int | None = None
    lock_date: datetime | None = None

    @property
    def mode(self) -> VaultLockMode:
        """The lock's mode, decided by whether it has a lock date."""
        return VaultLockMode.GOVERNANCE if self.lock_date is None else VaultLockMode.COMPLIANCE

    def is_immutable(self, now: datetime) -> bool:
        """True on and after the lock date: the lock can no longer be changed or deleted."""
        return self.lock_date is not None and _utc(now) >= self.lock_date

    def to_aws(self) -> dict[str, Any]:
        """Return the lock members of DescribeBackupVault (``Locked`` is true while a lock exists)."""
        body: dict[str, Any] = {"Locked": True}
        if self.min_retention_days is not None:
            body["MinRetentionDays"] = self.min_retention_days
        if self.max_retention_days is not None:
            body["MaxRetentionDays"] = self.max_retention_days
        if self.lock_date is not None:
            body["LockDate"] = self.lock_date
        return body


def new_vault_lock(
    *,
    min_retention_days: int | None,
    max_retention_days: int | None,
    changeable_for_days: int | None,
    now: datetime,
) -> VaultLock:
    """Validate PutBackupVaultLockConfiguration's parameters and return the lock they describe."""
    for name, value in (("MinRetentionDays", min_retention_days), ("MaxRetentionDays", max_retention_days)):
        if value is not None and not 1 <= expect_int(value, name) <= MAX_LIFECYCLE_DAYS:
            raise InvalidParameterValueException(
                f"{name} ({value}) must be between 1 and {MAX_LIFECYCLE_DAYS} days."
            )
    minimum, maximum = min_retention_days, max_retention_days
    if minimum is not None and maximum is not None and minimum > maximum:
        raise InvalidParameterValueException(
            f"MinRetentionDays ({minimum}) must not be greater than MaxRetentionDays ({maximum})."
        )
    lock_date = None
    if changeable_for_days is not None:
        days = expect_int(changeable_for_days, "ChangeableForDays")
        if not MIN_CHANGEABLE_FOR_DAYS <= days <= MAX_LIFECYCLE_DAYS:
            raise InvalidParameterValueException(
                f"ChangeableForDays ({days}) must be between {MIN_CHANGEABLE_FOR_DAYS} and "
                f"{MAX_LIFECYCLE_DAYS}: Vault Lock has a 72-hour cooling-off period before it becomes "
                "immutable. Leave it out for a governance-mode lock."
            )
        lock_date = _utc(now) + timedelta(days=days)
    return VaultLock(min_retention_days, max_retention_days, lock_date)


def vault_lock_from_request(data: Mapping[str, Any], now: datetime) -> VaultLock:
    """Parse a PutBackupVaultLockConfiguration body into a lock."""
    allowed = {"MinRetentionDays", "MaxRetentionDays", "ChangeableForDays", "BackupVaultName"}
    reject_unknown_members(data, allowed, "PutBackupVaultLockConfiguration")
    return new_vault_lock(
        min_retention_days=data.get("MinRetentionDays"),
        max_retention_days=data.get("MaxRetentionDays"),
        changeable_for_days=data.get("ChangeableForDays"),
        now=now,
    )


def validate_lock_change(current: VaultLock | None, now: datetime) -> None:
    """Refuse to change or delete a lock that reached its lock date (compliance mode)."""
    if current is not None and current.is_immutable(now):
        raise InvalidRequestException(
            f"The Vault Lock of this vault is in compliance mode and became immutable on "
            f"{current.lock_date:%Y-%m-%dT%H:%M:%SZ}; it can no longer be changed or deleted."
        )


def check_retention_for_new_point(lock: VaultLock | None, lifecycle: Lifecycle | None) -> None:
    """Fail a backup or copy job whose retention does not fit the vault's lock."""
    if lock is None:
        return
    retention = None if lifecycle is None else lifecycle.delete_after_days
    if lock.min_retention_days is not None and retention is not None and retention < lock.min_retention_days:
        raise InvalidParameterValueException(
            f"The lifecycle retains the recovery point for {retention} days, shorter than the vault lock's "
            f"MinRetentionDays ({lock.min_retention_days}); modify the lifecycle or use a different vault."
        )
    if lock.max_retention_days is not None:
        if retention is None:
            raise InvalidParameterValueException(
                "The lifecycle keeps the recovery point forever (no DeleteAfterDays), but the vault lock "
                f"allows at most {lock.max_retention_days} days; set DeleteAfterDays or use a different "
                "vault."
            )
        if retention > lock.max_retention_days:
            raise InvalidParameterValueException(
                f"The lifecycle retains the recovery point for {retention} days, longer than the vault "
                f"lock's MaxRetentionDays ({lock.max_retention_days}); modify the lifecycle or use a "
                "different vault."
            )


def check_can_delete_point(lock: VaultLock | None, point_created: datetime, now: datetime) -> None:
    """Refuse a manual deletion while the point is younger than the lock's minimum retention."""
    if lock is None or lock.min_retention_days is None:
        return
    deletable_from = _utc(point_created) + timedelta(days=lock.min_retention_days)
    if _utc(now) < deletable_from:
        raise InvalidRequestException(
            f"The recovery point is protected by the vault's Vault Lock ({lock.mode.lower()} mode, "
            f"MinRetentionDays={lock.min_retention_days}); it can be deleted from "
            f"{deletable_from:%Y-%m-%dT%H:%M:%SZ}."
        )


def check_lifecycle_update(
    lock: VaultLock | None, point_created: datetime, current_delete_at: datetime | None, new: Lifecycle
) -> None:
    """Refuse an UpdateRecoveryPointLifecycle that shortens retention or leaves the lock's bounds."""
    if lock is None:
        return
    check_retention_for_new_point(lock, new)
    days = new.delete_after_days
    new_delete_at = None if days is None else _utc(point_created) + timedelta(days=days)
    current = None if current_delete_at is None else _utc(current_delete_at)
    shortened = new_delete_at is not None and (current is None or new_delete_at < current)
    if shortened:
        raise InvalidRequestException(
            "The vault is protected by Vault Lock: a recovery point's retention can be extended but not "
            f"shortened (it ends {_when(current)}, the request would end it "
            f"{_when(new_delete_at)})."
        )


def _utc(moment: datetime) -> datetime:
    # Same-tzinfo datetimes add and compare on the wall clock in Python; retention is in real days.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {moment!r}.")
    return moment.astimezone(UTC)


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else f"on {moment:%Y-%m-%dT%H:%M:%SZ}"


# --- Legal holds ---------------------------------------------------------------------------------


class LegalHoldStatus(StrEnum):
    """AWS's legal hold states."""

    CREATING = "CREATING"
    ACTIVE = "ACTIVE"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"


_HOLD_TRANSITIONS = {
    LegalHoldStatus.CREATING: {LegalHoldStatus.ACTIVE, LegalHoldStatus.CANCELING},
    LegalHoldStatus.ACTIVE: {LegalHoldStatus.CANCELING},
    LegalHoldStatus.CANCELING: {LegalHoldStatus.CANCELED},
    LegalHoldStatus.CANCELED: set(),
}


class HeldPoint(Protocol):
    """What a legal hold needs to know about a recovery point."""

    @property
    def backup_vault_name(self) -> str: ...

    @property
    def resource_arn(self) -> str: ...

    @property
    def resource_type(self) -> str: ...

    @property
    def creation_date(self) -> datetime: ...


@dataclass(frozen=True)
class RecoveryPointRef:
    """A minimal recovery point description satisfying HeldPoint."""

    backup_vault_name: str
    resource_arn: str
    creation_date: datetime
    resource_type: str = ""


@dataclass(frozen=True)
class RecoveryPointSelection:
    """CreateLegalHold's criteria; empty tuples and None dates do not restrict."""

    vault_names: tuple[str, ...] = ()
    resource_identifiers: tuple[str, ...] = ()
    date_from: datetime | None = None
    date_to: datetime | None = None

    def matches(self, point: HeldPoint) -> bool:
        """True if the point meets every criterion given."""
        if self.vault_names and point.backup_vault_name not in self.vault_names:
            return False
        identifiers = self.resource_identifiers
        if identifiers and point.resource_arn not in identifiers and point.resource_type not in identifiers:
            return False
        created = _utc(point.creation_date)
        if self.date_from is not None and created < _utc(self.date_from):
            return False
        return self.date_to is None or created <= _utc(self.date_to)

    @classmethod
    def from_aws(cls, data: Any, where: str = "RecoveryPointSelection") -> RecoveryPointSelection:
        """Parse AWS's ``RecoveryPointSelection``; at least one criterion is required."""
        body = expect_mapping(data, where)
        reject_unknown_members(body, {"VaultNames", "ResourceIdentifiers", "DateRange"}, where)
        vaults = tuple(
            validate_backup_vault_name(v, f"{where}.VaultNames[]")
            for v in expect_list(body.get("VaultNames") or [], f"{where}.VaultNames")
        )
        resources = tuple(
            expect_str(r, f"{where}.ResourceIdentifiers[]")
            for r in expect_list(body.get("ResourceIdentifiers") or [], f"{where}.ResourceIdentifiers")
        )
        if any(not r for r in resources):
            raise InvalidParameterValueException(f"{where}.ResourceIdentifiers must not contain ''.")
        date_from = date_to = None
        if body.get("DateRange") is not None:
            date_range = expect_mapping(body["DateRange"], f"{where}.DateRange")
            reject_unknown_members(date_range, {"FromDate", "ToDate"}, f"{where}.DateRange")
            date_from = _aware(require_member(date_range, "FromDate", f"{where}.DateRange"), "FromDate")
            date_to = _aware(require_member(date_range, "ToDate", f"{where}.DateRange"), "ToDate")
            if date_from > date_to:
                raise InvalidParameterValueException(
                    f"{where}.DateRange: FromDate ({date_from.isoformat()}) is after ToDate "
                    f"({date_to.isoformat()})."
                )
        if not vaults and not resources and date_from is None:
            raise MissingParameterValueException(
                f"{where} needs at least one of VaultNames, ResourceIdentifiers or DateRange."
            )
        return cls(vaults, resources, date_from, date_to)

    def to_aws(self) -> dict[str, Any]:
        """Return AWS's ``RecoveryPointSelection`` (timestamps serialised by the API layer)."""
        body: dict[str, Any] = {}
        if self.vault_names:
            body["VaultNames"] = list(self.vault_names)
        if self.resource_identifiers:
            body["ResourceIdentifiers"] = list(self.resource_identifiers)
        if self.date_from is not None and self.date_to is not None:
            body["DateRange"] = {"FromDate": self.date_from, "ToDate": self.date_to}
        return body


def _aware(value: Any, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidRequestException(f"DateRange.{name} must be a timestamp with a time zone.")
    return value


@dataclass(frozen=True)
class LegalHold:
    """A legal hold and the recovery points it selects."""

    legal_hold_id: str
    title: str
    description: str
    status: LegalHoldStatus
    creation_date: datetime
    selection: RecoveryPointSelection
    cancellation_date: datetime | None = None
    cancel_description: str | None = None

    def covers(self, point: HeldPoint) -> bool:
        """True if the hold selects the point, whatever the hold's status."""
        return self.selection.matches(point)

    def protects(self, point: HeldPoint) -> bool:
        """True if the hold selects the point and has not been canceled."""
        return self.status != LegalHoldStatus.CANCELED and self.covers(point)

    def with_status(
        self, target: LegalHoldStatus, now: datetime, cancel_description: str | None = None
    ) -> LegalHold:
        """Return the hold moved to ``target``, raising InvalidResourceStateException if not allowed."""
        if target not in _HOLD_TRANSITIONS[self.status]:
            raise InvalidResourceStateException(
                f"Legal hold {self.legal_hold_id} is {self.status}; it cannot become {target}."
            )
        if target == LegalHoldStatus.CANCELING:
            if not cancel_description:
                raise MissingParameterValueException("CancelDescription is required to cancel a legal hold.")
            return replace(self, status=target, cancel_description=cancel_description)
        if target == LegalHoldStatus.CANCELED:
            return replace(self, status=target, cancellation_date=now)
        return replace(self, status=target)


def check_no_active_legal_hold(holds: Iterable[LegalHold], point: HeldPoint) -> None:
    """Refuse deleting (or shortening the life of) a point that an uncanceled legal hold covers."""
    held_by = sorted(hold.legal_hold_id for hold in holds if hold.protects(point))
    if held_by:
        raise InvalidRequestException(
            "The recovery point cannot be deleted because it has active legal hold(s): "
            f"{', '.join(held_by)}. Cancel the hold(s) first."
        )
