"""Audit controls in the manner of AWS Backup Audit Manager: parameters, scopes and evaluation.

Each control takes AWS's parameter names and defaults, and is evaluated over plain facts the
control plane gathers from the catalog (resources, their recovery points, plans, vaults, restore
times), so the rules here stay pure and testable. An evaluation is per resource for the resource
controls, per plan for the plan-frequency control and per vault for the manual-deletion control,
as AWS does.

backvault's own mapping: a "region" is a storage location and an "account" is the account id in a
recovery point's ARN; every recovery point is encrypted (the repository encrypts everything).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from backvault.domain.errors import InvalidParameterValueException
from backvault.domain.schedule import parse_schedule
from backvault.domain.selection import wildcard_match


class ControlName(StrEnum):
    """The controls backvault evaluates (AWS Backup Audit Manager's names)."""

    PROTECTED_BY_BACKUP_PLAN = "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_PLAN"
    PLAN_MIN_FREQUENCY_AND_MIN_RETENTION = "BACKUP_PLAN_MIN_FREQUENCY_AND_MIN_RETENTION_CHECK"
    MANUAL_DELETION_DISABLED = "BACKUP_RECOVERY_POINT_MANUAL_DELETION_DISABLED"
    RECOVERY_POINT_ENCRYPTED = "BACKUP_RECOVERY_POINT_ENCRYPTED"
    RECOVERY_POINT_MINIMUM_RETENTION = "BACKUP_RECOVERY_POINT_MINIMUM_RETENTION_CHECK"
    PROTECTED_BY_CROSS_REGION = "BACKUP_RESOURCES_PROTECTED_BY_CROSS_REGION"
    PROTECTED_BY_CROSS_ACCOUNT = "BACKUP_RESOURCES_PROTECTED_BY_CROSS_ACCOUNT"
    PROTECTED_BY_VAULT_LOCK = "BACKUP_RESOURCES_PROTECTED_BY_BACKUP_VAULT_LOCK"
    LAST_RECOVERY_POINT_CREATED = "BACKUP_LAST_RECOVERY_POINT_CREATED"
    RESTORE_TIME_MEETS_TARGET = "RESTORE_TIME_FOR_RESOURCES_MEET_TARGET"


# AWS's parameter names and default values; None marks an optional parameter without a default.
CONTROL_PARAMETERS: dict[ControlName, dict[str, str | None]] = {
    ControlName.PROTECTED_BY_BACKUP_PLAN: {},
    ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION: {
        "requiredFrequencyUnit": "hours",
        "requiredFrequencyValue": "1",
        "requiredRetentionDays": "35",
    },
    ControlName.MANUAL_DELETION_DISABLED: {"principalArnList": None},
    ControlName.RECOVERY_POINT_ENCRYPTED: {},
    ControlName.RECOVERY_POINT_MINIMUM_RETENTION: {"requiredRetentionDays": "35"},
    ControlName.PROTECTED_BY_CROSS_REGION: {"crossRegionList": None},
    ControlName.PROTECTED_BY_CROSS_ACCOUNT: {"crossAccountList": None},
    ControlName.PROTECTED_BY_VAULT_LOCK: {"minRetentionDays": None, "maxRetentionDays": None},
    ControlName.LAST_RECOVERY_POINT_CREATED: {"recoveryPointAgeUnit": "days", "recoveryPointAgeValue": "1"},
    ControlName.RESTORE_TIME_MEETS_TARGET: {"maxRestoreTime": "720"},
}

PLAN_RESOURCE_TYPE = "BackupPlan"
VAULT_RESOURCE_TYPE = "BackupVault"
DELETION_ACTIONS = ("backup:DeleteRecoveryPoint", "backup:UpdateRecoveryPointLifecycle")


@dataclass(frozen=True)
class ControlScope:
    """Which resources a control looks at: types, ids (ARNs, trailing * allowed) and one tag."""

    resource_types: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    def covers(self, resource_arn: str, resource_type: str, tags: Mapping[str, str]) -> bool:
        """True when the resource is in scope (an empty scope covers everything)."""
        if self.resource_types and resource_type not in self.resource_types:
            return False
        if self.resource_ids and not any(
            wildcard_match(pattern, resource_arn) for pattern in self.resource_ids
        ):
            return False
        return all(tags.get(key) == value for key, value in self.tags.items())


@dataclass(frozen=True)
class PointFacts:
    """What the controls need to know of one recovery point."""

    arn: str
    vault_name: str
    region: str  # storage location
    account: str
    created: datetime
    delete_after_days: int | None  # None: kept until deleted by hand
    vault_locked: bool = False
    vault_min_retention_days: int | None = None
    vault_max_retention_days: int | None = None
    encrypted: bool = True


@dataclass(frozen=True)
class ResourceFacts:
    """A protected resource, the plans that select it, its recovery points and its last restore time."""

    arn: str
    resource_type: str
    tags: Mapping[str, str]
    home_region: str
    home_account: str
    selected_by_plans: tuple[str, ...] = ()
    points: tuple[PointFacts, ...] = ()
    last_restore_minutes: float | None = None


@dataclass(frozen=True)
class RuleFacts:
    """One rule of a plan: its schedule and how long its points are kept."""

    rule_name: str
    schedule_expression: str
    delete_after_days: int | None


@dataclass(frozen=True)
class PlanFacts:
    """A backup plan as the frequency-and-retention control sees it."""

    arn: str
    name: str
    rules: tuple[RuleFacts, ...]
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VaultFacts:
    """A vault as the manual-deletion control sees it."""

    arn: str
    name: str
    access_policy: Mapping[str, Any] | None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditFacts:
    """Everything a framework's controls are evaluated over."""

    resources: tuple[ResourceFacts, ...] = ()
    plans: tuple[PlanFacts, ...] = ()
    vaults: tuple[VaultFacts, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """The verdict of one control on one resource, with the reason in words."""

    control: ControlName
    resource_arn: str
    resource_type: str
    compliant: bool
    reason: str


def control_parameters(name: str, given: Sequence[Mapping[str, str]] | None) -> dict[str, str | None]:
    """Validate a control's ControlInputParameters and return them merged over AWS's defaults."""
    control = _control_name(name)
    allowed = CONTROL_PARAMETERS[control]
    result = dict(allowed)
    for entry in given or ():
        key, value = entry.get("ParameterName"), entry.get("ParameterValue")
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InvalidParameterValueException(
                f"Control {control.value} has no parameter {key!r}; its parameters: {known}."
            )
        if not isinstance(value, str):
            raise InvalidParameterValueException(f"Parameter {key} of {control.value} needs a string value.")
        result[key] = value
    _check_numbers(control, result)
    return result


def evaluate(
    name: str, parameters: Mapping[str, str | None], scope: ControlScope, facts: AuditFacts, now: datetime
) -> list[Evaluation]:
    """Evaluate one control over the facts in its scope."""
    control = _control_name(name)
    if control == ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION:
        return [
            _plan_frequency(plan, parameters)
            for plan in facts.plans
            if scope.covers(plan.arn, PLAN_RESOURCE_TYPE, plan.tags)
        ]
    if control == ControlName.MANUAL_DELETION_DISABLED:
        return [
            _manual_deletion(vault, parameters)
            for vault in facts.vaults
            if scope.covers(vault.arn, VAULT_RESOURCE_TYPE, vault.tags)
        ]
    check = _RESOURCE_CHECKS[control]
    results = []
    for resource in facts.resources:
        if scope.covers(resource.arn, resource.resource_type, resource.tags):
            compliant, reason = check(resource, parameters, now)
            results.append(Evaluation(control, resource.arn, resource.resource_type, compliant, reason))
    return results


# --- resource controls ---------------------------------------------------------------------------


def _protected_by_plan(
    resource: ResourceFacts, _p: Mapping[str, str | None], _now: datetime
) -> tuple[bool, str]:
    if resource.selected_by_plans:
        return True, f"selected by backup plan(s) {', '.join(sorted(resource.selected_by_plans))}"
    return False, "no backup plan selects this resource"


def _encrypted(resource: ResourceFacts, _p: Mapping[str, str | None], _now: datetime) -> tuple[bool, str]:
    clear = [point.arn for point in resource.points if not point.encrypted]
    if clear:
        return False, f"{len(clear)} recovery point(s) are not encrypted"
    return True, "every recovery point is encrypted"


def _minimum_retention(
    resource: ResourceFacts, parameters: Mapping[str, str | None], _now: datetime
) -> tuple[bool, str]:
    required = int(parameters["requiredRetentionDays"] or 35)
    short = [p for p in resource.points if p.delete_after_days is not None and p.delete_after_days < required]
    if short:
        shortest = min(p.delete_after_days or 0 for p in short)
        return False, f"{len(short)} recovery point(s) kept less than {required} days (shortest {shortest})"
    if not resource.points:
        return False, "no recovery points"
    return True, f"every recovery point is kept at least {required} days"


def _cross_region(
    resource: ResourceFacts, parameters: Mapping[str, str | None], _now: datetime
) -> tuple[bool, str]:
    wanted = _list(parameters.get("crossRegionList"))
    others = {p.region for p in resource.points if p.region != resource.home_region}
    matching = others & set(wanted) if wanted else others
    if matching:
        return True, f"copies in storage location(s) {', '.join(sorted(matching))}"
    where = f" in {', '.join(wanted)}" if wanted else ""
    return False, f"no recovery point in another storage location{where}"


def _cross_account(
    resource: ResourceFacts, parameters: Mapping[str, str | None], _now: datetime
) -> tuple[bool, str]:
    wanted = _list(parameters.get("crossAccountList"))
    others = {p.account for p in resource.points if p.account != resource.home_account}
    matching = others & set(wanted) if wanted else others
    if matching:
        return True, f"copies in account(s) {', '.join(sorted(matching))}"
    return False, "no recovery point in another account"


def _vault_lock(
    resource: ResourceFacts, parameters: Mapping[str, str | None], _now: datetime
) -> tuple[bool, str]:
    minimum, maximum = _int(parameters.get("minRetentionDays")), _int(parameters.get("maxRetentionDays"))
    for point in resource.points:
        if not point.vault_locked:
            continue
        if minimum is not None and (point.vault_min_retention_days or 0) < minimum:
            continue
        if maximum is not None and (
            point.vault_max_retention_days is None or point.vault_max_retention_days > maximum
        ):
            continue
        return True, f"recovery point in locked vault {point.vault_name}"
    return False, "no recovery point in a vault with a matching vault lock"


def _last_point(
    resource: ResourceFacts, parameters: Mapping[str, str | None], now: datetime
) -> tuple[bool, str]:
    unit = (parameters.get("recoveryPointAgeUnit") or "days").lower()
    value = int(parameters.get("recoveryPointAgeValue") or 1)
    window = timedelta(hours=value) if unit == "hours" else timedelta(days=value)
    if not resource.points:
        return False, "no recovery point was ever created"
    newest = max(point.created for point in resource.points)
    if now - newest <= window:
        return True, f"last recovery point created {newest.astimezone(UTC).isoformat()}"
    return False, f"last recovery point is older than {value} {unit} ({newest.astimezone(UTC).isoformat()})"


def _restore_time(
    resource: ResourceFacts, parameters: Mapping[str, str | None], _now: datetime
) -> tuple[bool, str]:
    target = float(parameters.get("maxRestoreTime") or 720)
    if resource.last_restore_minutes is None:
        return False, "never restored (no restore job or restore test)"
    if resource.last_restore_minutes <= target:
        return True, f"last restore took {resource.last_restore_minutes:.1f} min (target {target:g} min)"
    return False, f"last restore took {resource.last_restore_minutes:.1f} min, over the {target:g} min target"


_RESOURCE_CHECKS = {
    ControlName.PROTECTED_BY_BACKUP_PLAN: _protected_by_plan,
    ControlName.RECOVERY_POINT_ENCRYPTED: _encrypted,
    ControlName.RECOVERY_POINT_MINIMUM_RETENTION: _minimum_retention,
    ControlName.PROTECTED_BY_CROSS_REGION: _cross_region,
    ControlName.PROTECTED_BY_CROSS_ACCOUNT: _cross_account,
    ControlName.PROTECTED_BY_VAULT_LOCK: _vault_lock,
    ControlName.LAST_RECOVERY_POINT_CREATED: _last_point,
    ControlName.RESTORE_TIME_MEETS_TARGET: _restore_time,
}


# --- plan and vault controls ---------------------------------------------------------------------


def _plan_frequency(plan: PlanFacts, parameters: Mapping[str, str | None]) -> Evaluation:
    unit = (parameters.get("requiredFrequencyUnit") or "hours").lower()
    value = int(parameters.get("requiredFrequencyValue") or 1)
    required_interval = timedelta(hours=value) if unit == "hours" else timedelta(days=value)
    retention = int(parameters.get("requiredRetentionDays") or 35)
    for rule in plan.rules:
        interval = schedule_interval(rule.schedule_expression)
        kept = rule.delete_after_days is None or rule.delete_after_days >= retention
        if interval is not None and interval <= required_interval and kept:
            return Evaluation(
                ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION,
                plan.arn,
                PLAN_RESOURCE_TYPE,
                True,
                f"rule {rule.rule_name} runs every {value} {unit} or more often, keeping points "
                f"{retention}+ days",
            )
    return Evaluation(
        ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION,
        plan.arn,
        PLAN_RESOURCE_TYPE,
        False,
        f"no rule runs at least every {value} {unit} while keeping points {retention} days or more",
    )


def schedule_interval(expression: str) -> timedelta | None:
    """Return the longest gap between runs of a schedule over four weeks (None if it cannot run)."""
    try:
        schedule = parse_schedule(expression, enforce_min_interval=False)
    except InvalidParameterValueException:
        return None
    start = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday: weekly schedules see a whole week
    moment = schedule.next_after(start, anchor=start)
    longest: timedelta | None = None
    end = start + timedelta(days=28)
    while moment is not None and moment < end:
        following = schedule.next_after(moment, anchor=start)
        if following is None:
            break
        gap = following - moment
        longest = gap if longest is None or gap > longest else longest
        moment = following
    return longest


def _manual_deletion(vault: VaultFacts, parameters: Mapping[str, str | None]) -> Evaluation:
    exempt = set(_list(parameters.get("principalArnList")))
    denied = _denied_actions(vault.access_policy or {}, exempt)
    missing = [action for action in DELETION_ACTIONS if action not in denied]
    compliant = not missing
    reason = (
        "the vault access policy denies manual deletion of recovery points"
        if compliant
        else f"the vault access policy does not deny {', '.join(missing)} to everyone"
    )
    return Evaluation(ControlName.MANUAL_DELETION_DISABLED, vault.arn, VAULT_RESOURCE_TYPE, compliant, reason)


def _denied_actions(policy: Mapping[str, Any], exempt: set[str]) -> set[str]:
    """Actions a policy denies to every principal (a NotPrincipal may only list exempt ones)."""
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    denied: set[str] = set()
    for statement in statements:
        if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
            continue
        if not _covers_everyone(statement, exempt):
            continue
        actions = statement.get("Action", [])
        for action in [actions] if isinstance(actions, str) else actions:
            denied.update(
                target for target in DELETION_ACTIONS if wildcard_match(action.lower(), target.lower())
            )
    return denied


def _covers_everyone(statement: Mapping[str, Any], exempt: set[str]) -> bool:
    if "NotPrincipal" in statement:
        named = (
            statement["NotPrincipal"].get("AWS", []) if isinstance(statement["NotPrincipal"], dict) else []
        )
        named = [named] if isinstance(named, str) else named
        return set(named) <= exempt
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if isinstance(principal, dict):
        value = principal.get("AWS")
        return value == "*" or value == ["*"]
    return False


# --- parameter helpers ---------------------------------------------------------------------------


def _control_name(name: str) -> ControlName:
    try:
        return ControlName(name)
    except ValueError:
        known = ", ".join(control.value for control in ControlName)
        raise InvalidParameterValueException(
            f"Unknown control {name!r}; backvault evaluates: {known}."
        ) from None


def _check_numbers(control: ControlName, parameters: Mapping[str, str | None]) -> None:
    for key, value in parameters.items():
        if value is None or key.endswith(("List", "Unit")):
            continue
        try:
            number = float(value)
        except ValueError:
            raise InvalidParameterValueException(
                f"Parameter {key} of {control.value} must be a number, got {value!r}."
            ) from None
        if number <= 0:
            raise InvalidParameterValueException(f"Parameter {key} of {control.value} must be positive.")
    for key in ("requiredFrequencyUnit", "recoveryPointAgeUnit"):
        unit = parameters.get(key)
        if unit is not None and unit.lower() not in ("hours", "days"):
            raise InvalidParameterValueException(f"Parameter {key} must be hours or days, got {unit!r}.")


def _list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _int(value: str | None) -> int | None:
    return int(float(value)) if value else None
