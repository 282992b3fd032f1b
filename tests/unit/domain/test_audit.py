"""Audit controls: AWS parameters and defaults, scopes, and the verdict of each control."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backvault.domain.audit import (
    AuditFacts,
    ControlName,
    ControlScope,
    PlanFacts,
    PointFacts,
    ResourceFacts,
    RuleFacts,
    VaultFacts,
    control_parameters,
    evaluate,
    schedule_interval,
)
from backvault.domain.errors import InvalidParameterValueException

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ACCOUNT = "000000000000"


def _point(
    days_old: float,
    *,
    region: str = "local",
    account: str = ACCOUNT,
    keep: int | None = 35,
    locked: bool = False,
    lock_min: int | None = None,
) -> PointFacts:
    return PointFacts(
        arn=f"arn:aws:backup:{region}:{account}:recovery-point:{days_old}",
        vault_name="main",
        region=region,
        account=account,
        created=NOW - timedelta(days=days_old),
        delete_after_days=keep,
        vault_locked=locked,
        vault_min_retention_days=lock_min,
    )


def _resource(
    name: str,
    *points: PointFacts,
    plans: tuple[str, ...] = (),
    tags: dict[str, str] | None = None,
    restore_minutes: float | None = None,
    resource_type: str = "Filesystem",
) -> ResourceFacts:
    return ResourceFacts(
        arn=f"arn:aws:backvault:local:{ACCOUNT}:filesystem:files/{name}",
        resource_type=resource_type,
        tags=tags or {},
        home_region="local",
        home_account=ACCOUNT,
        selected_by_plans=plans,
        points=points,
        last_restore_minutes=restore_minutes,
    )


def _verdicts(
    control: ControlName, facts: AuditFacts, scope: ControlScope | None = None, **params: str
) -> dict[str, bool]:
    given = [{"ParameterName": k, "ParameterValue": v} for k, v in params.items()]
    results = evaluate(control, control_parameters(control, given), scope or ControlScope(), facts, NOW)
    return {result.resource_arn.rsplit("/", 1)[-1].rsplit(":", 1)[-1]: result.compliant for result in results}


def test_protected_by_plan_and_scope_by_tag_and_type() -> None:
    facts = AuditFacts(
        resources=(
            _resource("a", plans=("daily",), tags={"team": "db"}),
            _resource("b", tags={"team": "db"}),
            _resource("c", tags={"team": "web"}, resource_type="PostgreSQL"),
        )
    )
    assert _verdicts(ControlName.PROTECTED_BY_BACKUP_PLAN, facts) == {"a": True, "b": False, "c": False}
    scoped = ControlScope(tags={"team": "db"})
    assert _verdicts(ControlName.PROTECTED_BY_BACKUP_PLAN, facts, scoped) == {"a": True, "b": False}
    by_type = ControlScope(resource_types=("PostgreSQL",))
    assert _verdicts(ControlName.PROTECTED_BY_BACKUP_PLAN, facts, by_type) == {"c": False}
    by_id = ControlScope(resource_ids=("arn:aws:backvault:local:000000000000:filesystem:files/a*",))
    assert _verdicts(ControlName.PROTECTED_BY_BACKUP_PLAN, facts, by_id) == {"a": True}


def test_last_recovery_point_uses_aws_default_of_one_day() -> None:
    facts = AuditFacts(
        resources=(_resource("fresh", _point(0.5)), _resource("stale", _point(2)), _resource("none"))
    )
    assert _verdicts(ControlName.LAST_RECOVERY_POINT_CREATED, facts) == {
        "fresh": True,
        "stale": False,
        "none": False,
    }
    hourly = _verdicts(
        ControlName.LAST_RECOVERY_POINT_CREATED,
        facts,
        recoveryPointAgeUnit="hours",
        recoveryPointAgeValue="6",
    )
    assert hourly == {"fresh": False, "stale": False, "none": False}


def test_minimum_retention_default_35_days_and_forever_is_fine() -> None:
    facts = AuditFacts(
        resources=(
            _resource("long", _point(1, keep=None), _point(2, keep=90)),
            _resource("short", _point(1, keep=7)),
        )
    )
    assert _verdicts(ControlName.RECOVERY_POINT_MINIMUM_RETENTION, facts) == {"long": True, "short": False}
    assert _verdicts(ControlName.RECOVERY_POINT_MINIMUM_RETENTION, facts, requiredRetentionDays="5") == {
        "long": True,
        "short": True,
    }


def test_cross_region_account_and_vault_lock() -> None:
    facts = AuditFacts(
        resources=(
            _resource("copied", _point(1), _point(1, region="dr")),
            _resource("home", _point(1)),
            _resource("other-account", _point(1, account="111111111111")),
            _resource("locked", _point(1, locked=True, lock_min=30)),
        )
    )
    assert _verdicts(ControlName.PROTECTED_BY_CROSS_REGION, facts)["copied"] is True
    assert _verdicts(ControlName.PROTECTED_BY_CROSS_REGION, facts)["home"] is False
    assert _verdicts(ControlName.PROTECTED_BY_CROSS_REGION, facts, crossRegionList="eu")["copied"] is False
    assert _verdicts(ControlName.PROTECTED_BY_CROSS_ACCOUNT, facts)["other-account"] is True
    assert _verdicts(ControlName.PROTECTED_BY_CROSS_ACCOUNT, facts)["copied"] is False
    lock = _verdicts(ControlName.PROTECTED_BY_VAULT_LOCK, facts)
    assert lock["locked"] is True and lock["home"] is False
    assert _verdicts(ControlName.PROTECTED_BY_VAULT_LOCK, facts, minRetentionDays="60")["locked"] is False


def test_restore_time_target_default_720_minutes() -> None:
    facts = AuditFacts(
        resources=(
            _resource("quick", restore_minutes=5),
            _resource("slow", restore_minutes=800),
            _resource("never"),
        )
    )
    assert _verdicts(ControlName.RESTORE_TIME_MEETS_TARGET, facts) == {
        "quick": True,
        "slow": False,
        "never": False,
    }
    assert _verdicts(ControlName.RESTORE_TIME_MEETS_TARGET, facts, maxRestoreTime="2")["quick"] is False


def test_plan_frequency_and_retention() -> None:
    plans = (
        PlanFacts(
            "arn:aws:backup:local:0:backup-plan:hourly", "hourly", (RuleFacts("r", "cron(0 * ? * * *)", 35),)
        ),
        PlanFacts(
            "arn:aws:backup:local:0:backup-plan:daily", "daily", (RuleFacts("r", "cron(0 5 ? * * *)", 365),)
        ),
        PlanFacts("arn:aws:backup:local:0:backup-plan:short", "short", (RuleFacts("r", "rate(1 hour)", 7),)),
    )
    facts = AuditFacts(plans=plans)
    assert _verdicts(ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION, facts) == {
        "hourly": True,
        "daily": False,
        "short": False,
    }
    daily = _verdicts(
        ControlName.PLAN_MIN_FREQUENCY_AND_MIN_RETENTION,
        facts,
        requiredFrequencyUnit="days",
        requiredFrequencyValue="1",
    )
    assert daily == {"hourly": True, "daily": True, "short": False}
    assert schedule_interval("cron(0 5 ? * MON *)") == timedelta(days=7)


def test_manual_deletion_disabled_needs_a_deny_for_everyone() -> None:
    deny = {
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["backup:DeleteRecoveryPoint", "backup:UpdateRecoveryPointLifecycle"],
                "Resource": "*",
            }
        ]
    }
    wildcard = {
        "Statement": [{"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "backup:*", "Resource": "*"}]
    }
    partial = {
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "backup:DeleteRecoveryPoint", "Resource": "*"}
        ]
    }
    vaults = (
        VaultFacts("arn:aws:backup:local:0:backup-vault:deny", "deny", deny),
        VaultFacts("arn:aws:backup:local:0:backup-vault:wild", "wild", wildcard),
        VaultFacts("arn:aws:backup:local:0:backup-vault:partial", "partial", partial),
        VaultFacts("arn:aws:backup:local:0:backup-vault:open", "open", None),
    )
    assert _verdicts(ControlName.MANUAL_DELETION_DISABLED, AuditFacts(vaults=vaults)) == {
        "deny": True,
        "wild": True,
        "partial": False,
        "open": False,
    }


def test_encrypted_points_and_bad_parameters() -> None:
    facts = AuditFacts(resources=(_resource("a", _point(1)),))
    assert _verdicts(ControlName.RECOVERY_POINT_ENCRYPTED, facts) == {"a": True}
    with pytest.raises(InvalidParameterValueException, match="no parameter 'days'"):
        control_parameters(
            ControlName.LAST_RECOVERY_POINT_CREATED, [{"ParameterName": "days", "ParameterValue": "1"}]
        )
    with pytest.raises(InvalidParameterValueException, match="must be a number"):
        control_parameters(
            ControlName.RESTORE_TIME_MEETS_TARGET,
            [{"ParameterName": "maxRestoreTime", "ParameterValue": "soon"}],
        )
    with pytest.raises(InvalidParameterValueException, match="hours or days"):
        control_parameters(
            ControlName.LAST_RECOVERY_POINT_CREATED,
            [{"ParameterName": "recoveryPointAgeUnit", "ParameterValue": "weeks"}],
        )
    with pytest.raises(InvalidParameterValueException, match="Unknown control"):
        control_parameters("BACKUP_EVERYTHING", None)
