"""BackupPlan, BackupRule, CopyAction: AWS Backup's plan model, its JSON shapes and its validation rules.

Rules enforced (errors are AWS's exception types):

* BackupPlanName and RuleName: 1-50 letters, digits, '-', '_' or '.'; rule names unique in a plan;
  at least one rule; TargetBackupVaultName is a valid vault name;
* ScheduleExpression defaults to ``cron(0 5 ? * * *)`` and ScheduleExpressionTimezone to ``Etc/UTC``;
  the expression must not run more often than hourly; ``rate()`` is accepted as a backvault
  extension (AWS Backup plans take cron only), anchored by the scheduler;
* StartWindowMinutes defaults to 480 and must be at least 60; CompletionWindowMinutes defaults to
  10080; both at most 52,560,000 (100 years). The completion window counts from the scheduled time,
  not from the start, so it must leave at least 60 minutes after the start window closes;
* Lifecycle (also a copy action's) as in ``lifecycle``; EnableContinuousBackup allows 1-35 days of
  retention and no cold storage;
* RecoveryPointTags: keys 1-128 characters not starting with ``aws:``, values up to 256 characters;
* CopyActions need a backup-vault ARN as DestinationBackupVaultArn;
* AdvancedBackupSettings name a resource type backvault knows, with string options.

Wrong JSON types raise InvalidRequestException, missing members MissingParameterValueException and
bad values InvalidParameterValueException, as AWS does. Unknown members are refused so that typos
in configuration files surface; output-only members (RuleId) are accepted so a GetBackupPlan result
can be edited and sent back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from backvault.domain.arn import BackupArnKind, ResourceType, parse_backup_arn
from backvault.domain.errors import (
    InvalidParameterValueException,
    expect_bool,
    expect_int,
    expect_list,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)
from backvault.domain.lifecycle import Lifecycle
from backvault.domain.schedule import DEFAULT_TIMEZONE, Schedule, parse_schedule, zone_for
from backvault.domain.vault import validate_backup_vault_name

DEFAULT_SCHEDULE_EXPRESSION = "cron(0 5 ? * * *)"
DEFAULT_START_WINDOW_MINUTES = 480
DEFAULT_COMPLETION_WINDOW_MINUTES = 10080
MIN_START_WINDOW_MINUTES = 60
MIN_COMPLETION_AFTER_START_MINUTES = 60
MAX_WINDOW_MINUTES = 52_560_000
MAX_CONTINUOUS_RETENTION_DAYS = 35
_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]{1,50}$")


def validate_plan_or_rule_name(name: Any, where: str) -> str:
    """Return ``name`` if it is a valid BackupPlanName or RuleName."""
    text = expect_str(name, where)
    if not _NAME_RE.match(text):
        raise InvalidParameterValueException(
            f"{where} {text!r} is not valid: use 1-50 characters, each a letter, digit, '-', '_' or '.'."
        )
    return text


def validate_recovery_point_tags(tags: Any, where: str) -> dict[str, str]:
    """Return the tags as a dict after checking AWS's tag rules."""
    body = expect_mapping(tags, where)
    result: dict[str, str] = {}
    for key, value in body.items():
        expect_str(key, f"{where} key")
        expect_str(value, f"{where}[{key!r}]")
        if not 1 <= len(key) <= 128 or len(value) > 256:
            raise InvalidParameterValueException(
                f"{where}[{key!r}]: tag keys are 1-128 characters and values at most 256."
            )
        if key.lower().startswith("aws:"):
            raise InvalidParameterValueException(f"{where}[{key!r}]: the aws: prefix is reserved for AWS.")
        result[key] = value
    return result


@dataclass(frozen=True)
class CopyAction:
    """Copy each recovery point to another vault, with its own lifecycle (None: same as the source)."""

    destination_backup_vault_arn: str
    lifecycle: Lifecycle | None = None

    def __post_init__(self) -> None:
        parse_backup_arn(self.destination_backup_vault_arn, BackupArnKind.BACKUP_VAULT)

    @classmethod
    def from_aws(cls, data: Any, where: str) -> CopyAction:
        """Parse an AWS ``CopyAction`` object."""
        body = expect_mapping(data, where)
        reject_unknown_members(body, {"DestinationBackupVaultArn", "Lifecycle"}, where)
        arn_where = f"{where}.DestinationBackupVaultArn"
        arn = expect_str(require_member(body, "DestinationBackupVaultArn", where), arn_where)
        lifecycle = None
        if body.get("Lifecycle") is not None:
            lifecycle = Lifecycle.from_aws(body["Lifecycle"], f"{where}.Lifecycle")
        return cls(arn, lifecycle)

    def to_aws(self) -> dict[str, Any]:
        """Return the AWS ``CopyAction`` object."""
        body: dict[str, Any] = {"DestinationBackupVaultArn": self.destination_backup_vault_arn}
        if self.lifecycle is not None:
            body["Lifecycle"] = self.lifecycle.to_aws()
        return body


@dataclass(frozen=True)
class AdvancedBackupSetting:
    """Per-resource-type backup options (AWS: ``AdvancedBackupSettings`` entries)."""

    resource_type: ResourceType
    backup_options: Mapping[str, str]

    @classmethod
    def from_aws(cls, data: Any, where: str) -> AdvancedBackupSetting:
        """Parse an ``AdvancedBackupSettings`` entry."""
        body = expect_mapping(data, where)
        reject_unknown_members(body, {"ResourceType", "BackupOptions"}, where)
        type_name = expect_str(require_member(body, "ResourceType", where), f"{where}.ResourceType")
        try:
            resource_type = ResourceType(type_name)
        except ValueError:
            known = ", ".join(t.value for t in ResourceType)
            raise InvalidParameterValueException(
                f"{where}.ResourceType {type_name!r} is not a resource type backvault protects ({known})."
            ) from None
        options = expect_mapping(require_member(body, "BackupOptions", where), f"{where}.BackupOptions")
        for key, value in options.items():
            expect_str(value, f"{where}.BackupOptions[{key!r}]")
        return cls(resource_type, dict(options))

    def to_aws(self) -> dict[str, Any]:
        """Return the AWS ``AdvancedBackupSetting`` object."""
        return {"ResourceType": self.resource_type.value, "BackupOptions": dict(self.backup_options)}


@dataclass(frozen=True)
class BackupRule:
    """One scheduled task of a plan: when, into which vault, for how long, and copies."""

    rule_name: str
    target_backup_vault_name: str
    schedule_expression: str = DEFAULT_SCHEDULE_EXPRESSION
    schedule_expression_timezone: str = DEFAULT_TIMEZONE
    start_window_minutes: int = DEFAULT_START_WINDOW_MINUTES
    completion_window_minutes: int = DEFAULT_COMPLETION_WINDOW_MINUTES
    lifecycle: Lifecycle | None = None
    recovery_point_tags: Mapping[str, str] = field(default_factory=dict)
    copy_actions: tuple[CopyAction, ...] = ()
    enable_continuous_backup: bool = False
    rule_id: str | None = None

    def __post_init__(self) -> None:
        where = f"Rule {self.rule_name!r}"
        validate_plan_or_rule_name(self.rule_name, "RuleName")
        validate_backup_vault_name(self.target_backup_vault_name, f"{where}: TargetBackupVaultName")
        zone_for(self.schedule_expression_timezone)
        self.schedule  # noqa: B018 - parse now so an invalid expression fails at plan creation
        self._check_windows(where)
        if self.enable_continuous_backup:
            retention = None if self.lifecycle is None else self.lifecycle.delete_after_days
            if retention is None or retention > MAX_CONTINUOUS_RETENTION_DAYS:
                raise InvalidParameterValueException(
                    f"{where}: continuous backups are kept 1-{MAX_CONTINUOUS_RETENTION_DAYS} days; set "
                    f"Lifecycle.DeleteAfterDays to at most {MAX_CONTINUOUS_RETENTION_DAYS}."
                )
            if self.lifecycle is not None and self.lifecycle.move_to_cold_storage_after_days is not None:
                raise InvalidParameterValueException(
                    f"{where}: continuous backups cannot move to cold storage; remove "
                    "MoveToColdStorageAfterDays or disable EnableContinuousBackup."
                )
        validate_recovery_point_tags(self.recovery_point_tags, f"{where}: RecoveryPointTags")

    def _check_windows(self, where: str) -> None:
        start, completion = self.start_window_minutes, self.completion_window_minutes
        expect_int(start, f"{where}: StartWindowMinutes")
        expect_int(completion, f"{where}: CompletionWindowMinutes")
        if not MIN_START_WINDOW_MINUTES <= start <= MAX_WINDOW_MINUTES:
            raise InvalidParameterValueException(
                f"{where}: StartWindowMinutes ({start}) must be at least {MIN_START_WINDOW_MINUTES} and at "
                f"most {MAX_WINDOW_MINUTES}."
            )
        if completion > MAX_WINDOW_MINUTES or completion < start + MIN_COMPLETION_AFTER_START_MINUTES:
            raise InvalidParameterValueException(
                f"{where}: CompletionWindowMinutes ({completion}) must be at least "
                f"{MIN_COMPLETION_AFTER_START_MINUTES} minutes longer than StartWindowMinutes ({start}), "
                f"i.e. >= {start + MIN_COMPLETION_AFTER_START_MINUTES}, and at most {MAX_WINDOW_MINUTES}: "
                "it counts from the scheduled time, not from the start."
            )

    @cached_property
    def schedule(self) -> Schedule:
        """The parsed ScheduleExpression."""
        return parse_schedule(self.schedule_expression)

    def next_run_after(self, after: datetime, anchor: datetime | None = None) -> datetime | None:
        """Return the rule's first scheduled time strictly after ``after``, in its time zone."""
        return self.schedule.next_after(after, self.schedule_expression_timezone, anchor)

    def latest_run_at_or_before(self, at: datetime, anchor: datetime | None = None) -> datetime | None:
        """Return the rule's latest scheduled time at or before ``at`` (to catch up a missed run)."""
        return self.schedule.previous_at_or_before(at, self.schedule_expression_timezone, anchor)

    @classmethod
    def from_aws(cls, data: Any, where: str) -> BackupRule:
        """Parse an AWS ``BackupRuleInput`` (or ``BackupRule``) object, filling AWS's defaults."""
        body = expect_mapping(data, where)
        allowed = {
            "RuleName",
            "TargetBackupVaultName",
            "ScheduleExpression",
            "ScheduleExpressionTimezone",
            "StartWindowMinutes",
            "CompletionWindowMinutes",
            "Lifecycle",
            "RecoveryPointTags",
            "CopyActions",
            "EnableContinuousBackup",
            "RuleId",
        }
        reject_unknown_members(body, allowed, where)
        name = validate_plan_or_rule_name(require_member(body, "RuleName", where), f"{where}.RuleName")
        vault = validate_backup_vault_name(
            require_member(body, "TargetBackupVaultName", where), f"{where}.TargetBackupVaultName"
        )

        def optional(key: str, default: Any, check: Any) -> Any:
            return default if body.get(key) is None else check(body[key], f"{where}.{key}")

        lifecycle = None
        if body.get("Lifecycle") is not None:
            lifecycle = Lifecycle.from_aws(body["Lifecycle"], f"{where}.Lifecycle")
        copy_actions = tuple(
            CopyAction.from_aws(item, f"{where}.CopyActions[{index}]")
            for index, item in enumerate(expect_list(body.get("CopyActions") or [], f"{where}.CopyActions"))
        )
        return cls(
            rule_name=name,
            target_backup_vault_name=vault,
            schedule_expression=optional("ScheduleExpression", DEFAULT_SCHEDULE_EXPRESSION, expect_str),
            schedule_expression_timezone=optional("ScheduleExpressionTimezone", DEFAULT_TIMEZONE, expect_str),
            start_window_minutes=optional("StartWindowMinutes", DEFAULT_START_WINDOW_MINUTES, expect_int),
            completion_window_minutes=optional(
                "CompletionWindowMinutes", DEFAULT_COMPLETION_WINDOW_MINUTES, expect_int
            ),
            lifecycle=lifecycle,
            recovery_point_tags=optional("RecoveryPointTags", {}, validate_recovery_point_tags),
            copy_actions=copy_actions,
            enable_continuous_backup=optional("EnableContinuousBackup", False, expect_bool),
            rule_id=optional("RuleId", None, expect_str),
        )

    def to_aws(self) -> dict[str, Any]:
        """Return the AWS ``BackupRule`` object as GetBackupPlan shows it."""
        body: dict[str, Any] = {
            "RuleName": self.rule_name,
            "TargetBackupVaultName": self.target_backup_vault_name,
            "ScheduleExpression": self.schedule_expression,
            "ScheduleExpressionTimezone": self.schedule_expression_timezone,
            "StartWindowMinutes": self.start_window_minutes,
            "CompletionWindowMinutes": self.completion_window_minutes,
            "CopyActions": [action.to_aws() for action in self.copy_actions],
            "EnableContinuousBackup": self.enable_continuous_backup,
        }
        if self.lifecycle is not None:
            body["Lifecycle"] = self.lifecycle.to_aws()
        if self.recovery_point_tags:
            body["RecoveryPointTags"] = dict(self.recovery_point_tags)
        if self.rule_id is not None:
            body["RuleId"] = self.rule_id
        return body


@dataclass(frozen=True)
class BackupPlan:
    """A named set of backup rules plus advanced per-resource-type settings."""

    backup_plan_name: str
    rules: tuple[BackupRule, ...]
    advanced_backup_settings: tuple[AdvancedBackupSetting, ...] = ()

    def __post_init__(self) -> None:
        validate_plan_or_rule_name(self.backup_plan_name, "BackupPlanName")
        if not self.rules:
            raise InvalidParameterValueException(
                f"Backup plan {self.backup_plan_name!r} has no rules; add at least one rule."
            )
        seen: set[str] = set()
        for rule in self.rules:
            if rule.rule_name in seen:
                raise InvalidParameterValueException(
                    f"Backup plan {self.backup_plan_name!r} has two rules named {rule.rule_name!r}; rule "
                    "names must be unique within a plan."
                )
            seen.add(rule.rule_name)
        types = [setting.resource_type for setting in self.advanced_backup_settings]
        if len(types) != len(set(types)):
            raise InvalidParameterValueException(
                f"Backup plan {self.backup_plan_name!r} lists a resource type twice in "
                "AdvancedBackupSettings."
            )

    def rule(self, rule_name: str) -> BackupRule | None:
        """Return the rule of that name, if any."""
        return next((rule for rule in self.rules if rule.rule_name == rule_name), None)

    @classmethod
    def from_aws(cls, data: Any, where: str = "BackupPlan") -> BackupPlan:
        """Parse the ``BackupPlan`` object of CreateBackupPlan / UpdateBackupPlan."""
        body = expect_mapping(data, where)
        reject_unknown_members(body, {"BackupPlanName", "Rules", "AdvancedBackupSettings"}, where)
        name = validate_plan_or_rule_name(
            require_member(body, "BackupPlanName", where), f"{where}.BackupPlanName"
        )
        rules = tuple(
            BackupRule.from_aws(item, f"{where}.Rules[{index}]")
            for index, item in enumerate(expect_list(require_member(body, "Rules", where), f"{where}.Rules"))
        )
        settings = tuple(
            AdvancedBackupSetting.from_aws(item, f"{where}.AdvancedBackupSettings[{index}]")
            for index, item in enumerate(
                expect_list(body.get("AdvancedBackupSettings") or [], f"{where}.AdvancedBackupSettings")
            )
        )
        return cls(name, rules, settings)

    def to_aws(self) -> dict[str, Any]:
        """Return the ``BackupPlan`` object as GetBackupPlan shows it."""
        body: dict[str, Any] = {
            "BackupPlanName": self.backup_plan_name,
            "Rules": [rule.to_aws() for rule in self.rules],
        }
        if self.advanced_backup_settings:
            body["AdvancedBackupSettings"] = [setting.to_aws() for setting in self.advanced_backup_settings]
        return body


def parse_backup_plan(data: Any) -> BackupPlan:
    """Parse and validate a ``BackupPlan`` JSON object."""
    return BackupPlan.from_aws(data)
