"""Issue 5: a resource created with the selected tag after the plan is backed up at the next scheduled run.

For every resource type, against its real server: the plan exists first; the periodic discovery runs
half a minute before the 05:00 run; a resource is then created with the tag, fifteen seconds before
the run. The run must rediscover (the last discovery started before its scheduled time) and back the
new resource up with the older one, without anyone touching the plan; a resource with another tag
value is never backed up.
"""

from __future__ import annotations

import uuid

from control_plane import Installation
from source_kinds import SourceKind

from backvault.control.backup_jobs import list_backup_jobs


def test_a_resource_created_with_the_tag_just_before_the_run_is_backed_up_by_it(
    installation: Installation, kind: SourceKind
) -> None:
    inst = installation
    tag = f"daily-{uuid.uuid4().hex[:8]}"
    inst.register("source", kind)
    older = kind.make({"backup": tag})
    other = kind.make({"backup": "weekly"})
    inst.daily_plan(tag)

    # 04:59:30: the scheduler's first tick discovers the endpoint; nothing is due yet.
    inst.at(1, 4, 59, 30)
    early = inst.tick()
    assert early.discovery_ran and early.jobs_created == [] and early.errors == []

    # 04:59:45: a resource appears with the selected tag (the plan is not touched).
    inst.at(1, 4, 59, 45)
    newer = kind.make({"backup": tag})

    # 05:00:10: the due run rediscovers first, so the new resource is in it.
    inst.at(1, 5, 0, 10)
    run = inst.tick()
    assert run.errors == []
    assert run.discovery_ran, "the due run acted on a discovery older than its scheduled time"
    assert len(run.jobs_created) == 2, run
    assert inst.drain() == 2

    older_arn, newer_arn = inst.resource_arn("source", older), inst.resource_arn("source", newer)
    points = {point["ResourceArn"]: point for point in inst.points()}
    assert set(points) == {older_arn, newer_arn}, "the backed-up resources are not the tagged ones"
    for point in points.values():
        assert point["Status"] == "COMPLETED", point
        assert point["BackupSizeInBytes"] > 0
    assert inst.resource_arn("source", other) not in points
    jobs = list_backup_jobs(inst.context)["BackupJobs"]
    assert sorted(job["State"] for job in jobs) == ["COMPLETED", "COMPLETED"], jobs
    assert {job["CreatedBy"]["BackupRuleId"] for job in jobs} != {None}

    # Ten seconds later nothing is due and discovery is not repeated: it stays cheap.
    inst.at(1, 5, 0, 20)
    again = inst.tick()
    assert not again.discovery_ran and again.jobs_created == []
