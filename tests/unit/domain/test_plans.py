"""BackupPlan parsing, defaults, AWS validation rules and error types."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from backvault.domain.errors import (
    BackupServiceError,
    InvalidParameterValueException,
    InvalidRequestException,
    MissingParameterValueException,
)
from backvault.domain.lifecycle import Lifecycle
from backvault.domain.plans import BackupPlan, BackupRule, CopyAction, parse_backup_plan

DR_VAULT = "arn:aws:backup:dr-site:000000000000:backup-vault:dr"


def rule(**members: Any) -> dict[str, Any]:
    return {"RuleName": "daily", "TargetBackupVaultName": "Default", **members}


def plan(*rules: dict[str, Any], **members: Any) -> dict[str, Any]:
    return {"BackupPlanName": "main-plan", "Rules": list(rules) or [rule()], **members}


def test_defaults_are_filled_as_aws_does() -> None:
    parsed = parse_backup_plan(plan())
    only = parsed.rules[0]
    assert only.schedule_expression == "cron(0 5 ? * * *)"
    assert only.schedule_expression_timezone == "Etc/UTC"
    assert (only.start_window_minutes, only.completion_window_minutes) == (480, 10080)
    assert only.lifecycle is None and only.copy_actions == () and not only.enable_continuous_backup
    assert parsed.to_aws() == {
        "BackupPlanName": "main-plan",
        "Rules": [
            {
                "RuleName": "daily",
                "TargetBackupVaultName": "Default",
                "ScheduleExpression": "cron(0 5 ? * * *)",
                "ScheduleExpressionTimezone": "Etc/UTC",
                "StartWindowMinutes": 480,
                "CompletionWindowMinutes": 10080,
                "CopyActions": [],
                "EnableContinuousBackup": False,
            }
        ],
    }


def test_full_plan_round_trips() -> None:
    body = plan(
        rule(
            ScheduleExpression="cron(0 2 ? * SUN *)",
            ScheduleExpressionTimezone="Europe/Berlin",
            StartWindowMinutes=60,
            CompletionWindowMinutes=120,
            Lifecycle={"MoveToColdStorageAfterDays": 30, "DeleteAfterDays": 365},
            RecoveryPointTags={"team": "db", "empty": ""},
            CopyActions=[{"DestinationBackupVaultArn": DR_VAULT, "Lifecycle": {"DeleteAfterDays": 30}}],
            RuleId="4c5e8b4f-rule",
        ),
        rule(RuleName="monthly", ScheduleExpression="cron(0 3 1 * ? *)"),
        AdvancedBackupSettings=[{"ResourceType": "PostgreSQL", "BackupOptions": {"format": "custom"}}],
    )
    parsed = parse_backup_plan(body)
    first = parsed.rules[0]
    assert first.lifecycle == Lifecycle(30, 365)
    assert first.copy_actions == (CopyAction(DR_VAULT, Lifecycle(None, 30)),)
    assert parsed.rule("monthly") is parsed.rules[1]
    assert parsed.rule("nope") is None
    assert parse_backup_plan(parsed.to_aws()) == parsed
    assert parsed.to_aws()["Rules"][0]["RuleId"] == "4c5e8b4f-rule"


def test_rule_schedules_in_its_time_zone() -> None:
    parsed = parse_backup_plan(
        plan(rule(ScheduleExpression="cron(0 2 ? * SUN *)", ScheduleExpressionTimezone="Europe/Berlin"))
    )
    now = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)  # a Tuesday
    following = parsed.rules[0].next_run_after(now)
    assert following is not None and following.astimezone(UTC) == datetime(2025, 7, 6, 0, 0, tzinfo=UTC)
    latest = parsed.rules[0].latest_run_at_or_before(now)
    assert latest is not None and latest.astimezone(UTC) == datetime(2025, 6, 29, 0, 0, tzinfo=UTC)


def test_rate_is_accepted_and_anchored() -> None:
    parsed = parse_backup_plan(plan(rule(ScheduleExpression="rate(6 hours)")))
    anchor = datetime(2025, 1, 1, 0, 0, tzinfo=UTC)
    assert parsed.rules[0].next_run_after(datetime(2025, 1, 1, 7, 0, tzinfo=UTC), anchor) == datetime(
        2025, 1, 1, 12, 0, tzinfo=UTC
    )


def test_lifecycle_minus_one_means_keep_forever() -> None:
    parsed = parse_backup_plan(
        plan(rule(Lifecycle={"MoveToColdStorageAfterDays": -1, "DeleteAfterDays": -1}))
    )
    lifecycle = parsed.rules[0].lifecycle
    assert lifecycle is not None and lifecycle.keeps_forever
    assert lifecycle.to_aws() == {}


def test_windows_at_their_minimums_are_accepted() -> None:
    parsed = parse_backup_plan(plan(rule(StartWindowMinutes=60, CompletionWindowMinutes=120)))
    assert parsed.rules[0].completion_window_minutes == 120
    parse_backup_plan(plan(rule(StartWindowMinutes=10020)))  # 10020 + 60 == default 10080


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    body = plan(rule(Lifecycle={"DeleteAfterDays": 35}))
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return copy.deepcopy(body)


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "error", "fragment"),
    [
        (["BackupPlanName"], "x" * 51, InvalidParameterValueException, "BackupPlanName"),
        (["BackupPlanName"], "my plan", InvalidParameterValueException, "1-50 characters"),
        (
            ["BackupPlanName"],
            _DELETE,
            MissingParameterValueException,
            "BackupPlan.BackupPlanName is required",
        ),
        (["Rules"], [], InvalidParameterValueException, "has no rules"),
        (["Rules"], _DELETE, MissingParameterValueException, "BackupPlan.Rules is required"),
        (["Rules"], [rule(), rule()], InvalidParameterValueException, "two rules named 'daily'"),
        (["Rules", 0, "RuleName"], _DELETE, MissingParameterValueException, "Rules[0].RuleName is required"),
        (["Rules", 0, "RuleName"], "a/b", InvalidParameterValueException, "RuleName 'a/b'"),
        (
            ["Rules", 0, "TargetBackupVaultName"],
            _DELETE,
            MissingParameterValueException,
            "TargetBackupVaultName",
        ),
        (["Rules", 0, "TargetBackupVaultName"], "a", InvalidParameterValueException, "2-50 characters"),
        (["Rules", 0, "StartWindowMinutes"], 59, InvalidParameterValueException, "at least 60"),
        (["Rules", 0, "StartWindowMinutes"], "60", InvalidRequestException, "must be an integer"),
        (["Rules", 0, "StartWindowMinutes"], 10030, InvalidParameterValueException, ">= 10090"),
        (
            ["Rules", 0, "CompletionWindowMinutes"],
            539,
            InvalidParameterValueException,
            "at least 60 minutes longer",
        ),
        (
            ["Rules", 0, "CompletionWindowMinutes"],
            52_560_001,
            InvalidParameterValueException,
            "at most 52560000",
        ),
        (
            ["Rules", 0, "ScheduleExpression"],
            "cron(0/30 * ? * * *)",
            InvalidParameterValueException,
            "60 minutes",
        ),
        (["Rules", 0, "ScheduleExpression"], "cron(0 5 * * * *)", InvalidParameterValueException, "'?'"),
        (["Rules", 0, "ScheduleExpressionTimezone"], "CET+1", InvalidParameterValueException, "IANA"),
        (
            ["Rules", 0, "Lifecycle"],
            {"MoveToColdStorageAfterDays": 30, "DeleteAfterDays": 100},
            InvalidParameterValueException,
            "DeleteAfterDays (100) must be at least 90 days after MoveToColdStorageAfterDays (30), "
            "i.e. >= 120",
        ),
        (
            ["Rules", 0, "Lifecycle"],
            {"DeleteAfterDays": 0},
            InvalidParameterValueException,
            "cannot be less than 1",
        ),
        (["Rules", 0, "Lifecycle"], {"DeleteAfterDays": 36501}, InvalidParameterValueException, "36500"),
        (["Rules", 0, "Lifecycle"], {"DeleteAfterDays": "30"}, InvalidRequestException, "must be an integer"),
        (
            ["Rules", 0, "Lifecycle"],
            {"DeleteAfter": 30},
            InvalidRequestException,
            "unknown member(s) DeleteAfter",
        ),
        (
            ["Rules", 0, "CopyActions"],
            [{"DestinationBackupVaultArn": "arn:aws:backup:local:000000000000:recovery-point:x"}],
            InvalidParameterValueException,
            "expected a backup-vault ARN",
        ),
        (
            ["Rules", 0, "CopyActions"],
            [{}],
            MissingParameterValueException,
            "CopyActions[0].DestinationBackupVaultArn",
        ),
        (
            ["Rules", 0, "CopyActions"],
            [
                {
                    "DestinationBackupVaultArn": DR_VAULT,
                    "Lifecycle": {"MoveToColdStorageAfterDays": 10, "DeleteAfterDays": 50},
                }
            ],
            InvalidParameterValueException,
            "BackupPlan.Rules[0].CopyActions[0].Lifecycle",
        ),
        (["Rules", 0, "RecoveryPointTags"], {"aws:owner": "x"}, InvalidParameterValueException, "reserved"),
        (["Rules", 0, "RecoveryPointTags"], {"k": 1}, InvalidRequestException, "must be a string"),
        (["Rules", 0, "RecoveryPointTags"], {"k" * 129: "v"}, InvalidParameterValueException, "1-128"),
        (["Rules", 0, "EnableContinuousBackup"], "yes", InvalidRequestException, "true or false"),
        (
            ["Rules", 0, "Schedule"],
            "cron(0 5 ? * * *)",
            InvalidRequestException,
            "unknown member(s) Schedule",
        ),
        (
            ["AdvancedBackupSettings"],
            [{"ResourceType": "EC2", "BackupOptions": {"WindowsVSS": "enabled"}}],
            InvalidParameterValueException,
            "'EC2' is not a resource type backvault protects",
        ),
        (["Rules", 0], "daily", InvalidRequestException, "must be an object"),
    ],
)
def test_validation_errors(
    path: list[Any], value: Any, error: type[BackupServiceError], fragment: str
) -> None:
    with pytest.raises(error) as info:
        parse_backup_plan(_with(path, value))
    assert info.value.code == error.code
    assert info.value.http_status == 400
    assert fragment in info.value.message


def test_continuous_backup_rules() -> None:
    ok = parse_backup_plan(plan(rule(EnableContinuousBackup=True, Lifecycle={"DeleteAfterDays": 35})))
    assert ok.rules[0].enable_continuous_backup
    with pytest.raises(InvalidParameterValueException, match="kept 1-35 days"):
        parse_backup_plan(plan(rule(EnableContinuousBackup=True, Lifecycle={"DeleteAfterDays": 36})))
    with pytest.raises(InvalidParameterValueException, match="kept 1-35 days"):
        parse_backup_plan(plan(rule(EnableContinuousBackup=True)))


def test_dataclasses_validate_when_built_directly() -> None:
    with pytest.raises(InvalidParameterValueException, match="StartWindowMinutes"):
        BackupRule("r", "Default", start_window_minutes=10)
    with pytest.raises(InvalidParameterValueException, match="has no rules"):
        BackupPlan("p", ())
    with pytest.raises(InvalidParameterValueException, match=r"i\.e\. >= 100"):
        Lifecycle(10, 99)
