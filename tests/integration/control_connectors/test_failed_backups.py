"""Issue 5: backups that cannot finish end as FAILED jobs that say why, and leave no recovery point.

- A dump killed on the server while it streams (pg_terminate_backend of pg_dump's COPY, KILL of the
  dump tool's MariaDB session, CLIENT KILL of Redis' SYNC connection): the job is FAILED with the
  tool's error in its StatusMessage, no recovery point row exists in any status, the vault's
  repository holds no snapshot and checks clean, and the next backup succeeds.
- Refused credentials and an unreachable server, for every type: the scheduled run still backs up
  the other endpoint's resources; the broken endpoint's known resource gets a FAILED job with the
  connector's reason (and no secret); its failed discovery is an error of the tick and one
  SOURCE_ENDPOINT_DISCOVERY_FAILED event per outage; once fixed, the next run succeeds.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from control_helpers import ROLE
from control_plane import VAULT, Installation
from database_kinds import SqliteKind
from source_kinds import SourceKind

from backvault.control.backup_jobs import describe_backup_job, list_backup_jobs, start_backup_job
from backvault.control.discovery import discover_all
from backvault.control.job_handlers import close_repository
from backvault.control.vaults import open_vault_repository
from backvault.repo.check import check


class DumpKiller(threading.Thread):
    """Runs ``kind.kill_dump`` beside the worker and keeps its answer (or its failure) for the test."""

    def __init__(self, kind: SourceKind, resource: str) -> None:
        super().__init__(name="dump-killer", daemon=True)
        self.kind, self.resource = kind, resource
        self.finished = threading.Event()
        self.killed: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.killed = self.kind.kill_dump(self.resource, self.finished)
        except BaseException as error:  # handed to the test's thread
            self.error = error

    def result(self) -> str:
        """What was killed; re-raises the killer's own failure."""
        self.finished.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error
        assert self.killed, "the killer never ran"
        return self.killed


def _assert_repository_clean_and_empty(inst: Installation) -> None:
    repository = open_vault_repository(inst.context, VAULT)
    try:
        assert repository.list_snapshots() == [], "the killed dump committed a snapshot"
        report = check(repository, read_data_fraction=1.0)
        assert report.ok, [problem.message for problem in report.problems]
    finally:
        close_repository(repository)


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "redis"], indirect=True)
def test_a_dump_killed_on_the_server_fails_the_job_and_leaves_no_recovery_point(
    installation: Installation, kind: SourceKind
) -> None:
    inst = installation
    inst.register("source", kind, kind.dump_connection())
    resource = kind.make_big()
    inst.at(1, 1)
    assert inst.tick().errors == []  # the first tick discovers the endpoint
    arn = inst.resource_arn("source", resource)

    job_id = start_backup_job(inst.context, VAULT, arn, ROLE)["BackupJobId"]
    killer = DumpKiller(kind, resource)
    killer.start()
    try:
        assert inst.drain() == 1
    finally:
        killed = killer.result()
    job = describe_backup_job(inst.context, job_id)
    assert job["State"] == "FAILED", f"killed {killed}, yet the job ended {job['State']}: {job}"
    assert kind.killed_reason in job["StatusMessage"], job["StatusMessage"]
    assert f"Backup of {arn} failed" in job["StatusMessage"]
    assert inst.point_rows_of(arn) == [], "a recovery point was recorded for the killed dump"
    assert inst.points() == []
    _assert_repository_clean_and_empty(inst)

    # The next run succeeds, and only its point exists.
    again = start_backup_job(inst.context, VAULT, arn, ROLE)["BackupJobId"]
    assert inst.drain() == 1
    done = describe_backup_job(inst.context, again)
    assert done["State"] == "COMPLETED", done
    assert [(point["RecoveryPointArn"], point["Status"]) for point in inst.points()] == [
        (done["RecoveryPointArn"], "COMPLETED")
    ]


def _jobs_by_resource(inst: Installation) -> dict[str, list[dict[str, Any]]]:
    """Backup jobs by resource ARN, oldest first."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for job in sorted(list_backup_jobs(inst.context)["BackupJobs"], key=lambda item: item["CreationDate"]):
        jobs.setdefault(job["ResourceArn"], []).append(job)
    return jobs


def test_refused_credentials_and_unreachable_servers_fail_the_job_with_the_reason(
    installation: Installation, kind: SourceKind, tmp_path: Path
) -> None:
    inst = installation
    tag = f"daily-{uuid.uuid4().hex[:8]}"
    inst.register("source", kind)
    resource = kind.make({"backup": tag})
    healthy = SqliteKind(tmp_path / "healthy-root")  # another endpoint, which keeps working
    inst.register("healthy", healthy)
    healthy_resource = healthy.make({"backup": tag})
    inst.daily_plan(tag)
    inst.at(1, 1)
    assert inst.tick().errors == []
    arn, healthy_arn = inst.resource_arn("source", resource), inst.resource_arn("healthy", healthy_resource)

    problems = kind.broken()
    for day, (problem, broken) in enumerate(problems.items(), start=1):
        inst.reconfigure("source", broken.connection, broken.credentials)
        inst.at(day, 5, 0, 10)
        run = inst.tick()
        assert run.discovery_ran
        assert any("discovery of endpoint source" in error for error in run.errors), (problem, run.errors)
        assert len(run.jobs_created) == 2, (problem, run)  # the broken endpoint does not stop the other
        assert inst.drain() == 2
        jobs = _jobs_by_resource(inst)
        failed, succeeded = jobs[arn][-1], jobs[healthy_arn][-1]
        assert failed["State"] == "FAILED", (problem, failed)
        message = failed["StatusMessage"]
        assert f"Backup of {arn} failed" in message and broken.reason in message, (problem, message)
        for secret in broken.credentials.values():
            if secret:
                assert secret not in message
        assert succeeded["State"] == "COMPLETED", (problem, succeeded)

    # One event for the whole outage, naming the endpoint and the first reason.
    (event,) = inst.events("SOURCE_ENDPOINT_DISCOVERY_FAILED")
    assert event["EndpointName"] == "source" and event["Message"], event
    secrets = [secret for broken in problems.values() for secret in broken.credentials.values() if secret]
    assert not [secret for secret in secrets if secret in str(event)], event
    assert inst.point_rows_of(arn) == []

    # The settings are fixed: the next run discovers the endpoint again and backs the resource up.
    inst.reconfigure("source", kind.connection(), kind.credentials())
    inst.at(len(problems) + 1, 5, 0, 10)
    run = inst.tick()
    assert run.errors == [] and len(run.jobs_created) == 2
    assert inst.drain() == 2
    assert _jobs_by_resource(inst)[arn][-1]["State"] == "COMPLETED"
    assert [status for status, _ in inst.point_rows_of(arn)] == ["COMPLETED"]

    # A later outage is a new one: it gets its own event.
    first = next(iter(problems.values()))
    inst.reconfigure("source", first.connection, first.credentials)
    inst.at(len(problems) + 1, 6)
    assert [failure["EndpointName"] for failure in discover_all(inst.context)["Errors"]] == ["source"]
    assert len(inst.events("SOURCE_ENDPOINT_DISCOVERY_FAILED")) == 2
