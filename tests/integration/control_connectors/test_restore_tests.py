"""Issue 6: restore tests end to end for every resource type, against the real servers.

A restore testing plan and a tag-conditioned selection over a recovery point of the type run at
their scheduled time: the restore job (run by the worker) restores into a scratch target the test
owns (a ``bvtest-`` database, file, bucket or table; for Redis an empty database of the same
server), the connector validates the copy against the manifest saved at backup time, the duration is
recorded, and the scratch copy is deleted. On the next day the copy is tampered with between the
restore and the validation: the validation fails, and the copy is deleted all the same. Finally the
audit framework's RESTORE_TIME_FOR_RESOURCES_MEET_TARGET control sees the restores' duration.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_helpers import ROLE
from control_plane import VAULT, Installation
from source_kinds import SourceKind

from backvault.control.backup_jobs import describe_backup_job, start_backup_job
from backvault.control.frameworks import create_framework, describe_framework_compliance, evaluate_frameworks
from backvault.control.restore_jobs import describe_restore_job, restore_job_target
from backvault.control.restore_testing import create_restore_testing_plan, create_restore_testing_selection
from backvault.control.restore_testing_results import list_restore_tests
from backvault.control.restore_testing_runs import advance_restore_tests, run_restore_tests

RESTORE_TIME = "RESTORE_TIME_FOR_RESOURCES_MEET_TARGET"


@pytest.fixture
def timed_installation(tmp_path: Path) -> Iterator[Installation]:
    """An installation whose clock also runs in real time, so restores take their real duration."""
    created = Installation(tmp_path, moving_clock=True)
    try:
        yield created
    finally:
        created.close()


def _restore_time_verdict(
    inst: Installation, resource_arn: str, framework: str = "RestoreTargets"
) -> dict[str, Any]:
    answer = describe_framework_compliance(inst.context, framework)
    (control,) = answer["Controls"]
    (verdict,) = [item for item in control["Evaluations"] if item["ResourceArn"] == resource_arn]
    return dict(verdict)


def _run_due_test(inst: Installation, kind: SourceKind, day: int) -> tuple[str, str]:
    """Start the plan's run of ``day``, let the worker restore; return (restore job id, scratch copy)."""
    inst.at(day, 5, 1)
    report = run_restore_tests(inst.context)
    assert report.errors == [] and len(report.restore_job_ids) == 1, report
    (job_id,) = report.restore_job_ids
    assert inst.drain() == 1
    restored = describe_restore_job(inst.context, job_id)
    assert restored["Status"] == "COMPLETED", restored
    scratch = kind.track(str(restore_job_target(inst.context, job_id)["CreatedResourceName"]))
    assert kind.exists(scratch), f"the restore reported {scratch!r}, which does not exist"
    return job_id, scratch


def test_restore_tests_validate_the_scratch_copy_and_always_delete_it(
    timed_installation: Installation, kind: SourceKind
) -> None:
    inst = timed_installation
    tag = f"tested-{uuid.uuid4().hex[:8]}"
    inst.register("source", kind)
    resource = kind.make({"restore-test": tag})
    inst.at(1, 1)
    assert inst.tick().errors == []
    arn = inst.resource_arn("source", resource)
    backup = start_backup_job(inst.context, VAULT, arn, ROLE)["BackupJobId"]
    assert inst.drain() == 1
    assert describe_backup_job(inst.context, backup)["State"] == "COMPLETED"

    create_framework(inst.context, "RestoreTargets", [{"ControlName": RESTORE_TIME}])
    assert _restore_time_verdict(inst, arn)["ComplianceStatus"] == "NON_COMPLIANT"  # never restored yet
    create_restore_testing_plan(
        inst.context,
        {
            "RestoreTestingPlanName": "nightly",
            "ScheduleExpression": "cron(0 5 ? * * *)",
            "StartWindowHours": 2,
            "RecoveryPointSelection": {
                "Algorithm": "LATEST_WITHIN_WINDOW",
                "IncludeVaults": ["*"],
                "RecoveryPointTypes": ["SNAPSHOT"],
            },
        },
    )
    create_restore_testing_selection(
        inst.context,
        "nightly",
        {
            "RestoreTestingSelectionName": "tagged",
            "ProtectedResourceType": kind.endpoint_type,
            "IamRoleArn": ROLE,
            "ProtectedResourceArns": ["*"],
            "ProtectedResourceConditions": {
                "StringEquals": [{"Key": "aws:ResourceTag/restore-test", "Value": tag}]
            },
        },
    )

    # Day 2: restored into a scratch copy, validated against the manifest, and the copy is deleted.
    job_id, scratch = _run_due_test(inst, kind, day=2)
    assert scratch != resource
    # A name the test owns; Redis restores into an empty database of the same server instead.
    assert scratch.isdigit() if kind.key == "redis" else Path(scratch).name.startswith("bvtest-"), scratch
    assert advance_restore_tests(inst.context).errors == []
    job = describe_restore_job(inst.context, job_id)
    assert job["ValidationStatus"] == "SUCCESSFUL", job.get("ValidationStatusMessage")
    assert job["ValidationStatusMessage"].startswith("Built-in validation passed:")
    assert job["DeletionStatus"] == "SUCCESSFUL", job.get("DeletionStatusMessage")
    assert not kind.exists(scratch), f"the scratch copy {scratch!r} was left behind"
    (test,) = list_restore_tests(inst.context)
    assert test["Status"] == "SUCCEEDED" and test["ResourceArn"] == arn, test
    assert test["RestoreDurationSeconds"] > 0, test

    # Day 3: the copy is damaged before the validation runs: the test fails, the copy goes anyway.
    job_id, scratch = _run_due_test(inst, kind, day=3)
    kind.tamper(scratch)
    assert advance_restore_tests(inst.context).errors == []
    job = describe_restore_job(inst.context, job_id)
    assert job["ValidationStatus"] == "FAILED", job
    assert job["ValidationStatusMessage"].startswith("Built-in validation failed:"), job
    assert job["DeletionStatus"] == "SUCCESSFUL", job.get("DeletionStatusMessage")
    assert not kind.exists(scratch), f"the scratch copy {scratch!r} of a failed test was left behind"
    latest = list_restore_tests(inst.context)[0]
    assert latest["Status"] == "FAILED" and latest["RestoreDurationSeconds"] > 0, latest
    assert [event["ValidationStatus"] for event in inst.events("RESTORE_TEST_FAILED")] == ["FAILED"]

    # The audit control now sees how long the latest restore of the resource took.
    evaluate_frameworks(inst.context, framework_names=["RestoreTargets"], force=True)
    verdict = _restore_time_verdict(inst, arn)
    assert verdict["ComplianceStatus"] == "COMPLIANT", verdict
    assert "last restore took" in verdict["Reason"], verdict
    # A target of under a millisecond: the restore's real duration misses it.
    create_framework(
        inst.context,
        "InstantRestores",
        [
            {
                "ControlName": RESTORE_TIME,
                "ControlInputParameters": [{"ParameterName": "maxRestoreTime", "ParameterValue": "0.00001"}],
            }
        ],
    )
    verdict = _restore_time_verdict(inst, arn, "InstantRestores")
    assert verdict["ComplianceStatus"] == "NON_COMPLIANT" and "over the 1e-05 min target" in verdict["Reason"]
