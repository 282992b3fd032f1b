"""Restore tests end to end: due plans restore into scratch directories, validate, and always clean up."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from control_helpers import ROLE, FakeClock
from point_helpers import back_up_point, read_files
from sqlalchemy import select

from backvault.control.backup_jobs import start_backup_job
from backvault.control.catalog import Event, Job
from backvault.control.catalog.restore_testing_models import RestoreTest
from backvault.control.context import ServiceContext
from backvault.control.discovery import discover_endpoint
from backvault.control.endpoints import register_source_endpoint
from backvault.control.job_handlers import HANDLERS
from backvault.control.restore_jobs import describe_restore_job, list_restore_jobs, start_restore_job
from backvault.control.restore_testing import (
    create_restore_testing_plan,
    create_restore_testing_selection,
    update_restore_testing_plan,
    update_restore_testing_selection,
)
from backvault.control.restore_testing_hooks import call_webhook, run_command
from backvault.control.restore_testing_results import describe_restore_test, list_restore_tests
from backvault.control.restore_testing_runs import (
    advance_restore_tests,
    choose_recovery_point,
    get_restore_testing_inferred_metadata,
    put_restore_validation_result,
    run_restore_test_now,
    run_restore_tests,
    run_restore_tests_forever,
)
from backvault.control.vaults import create_backup_vault
from backvault.control.worker import Worker
from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    ResourceNotFoundException,
)

PREFIX = "arn:aws:backvault:local:000000000000:filesystem:files"
PHOTOS = f"{PREFIX}/photos"
DOCS = f"{PREFIX}/docs"
MAIN_ARN = "arn:aws:backup:local:000000000000:backup-vault:main"
OTHER_ARN = "arn:aws:backup:local:000000000000:backup-vault:other"
# START is 2025-05-01 12:00 UTC; the plans below run at 05:00 UTC.
NEXT_RUN = datetime(2025, 5, 2, 5, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Private backup cache; no scratch directory from the caller's environment."""
    monkeypatch.setenv("BACKVAULT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BACKVAULT_RESTORE_TEST_DIR", raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with photos (tagged backup=daily) and docs."""
    path = tmp_path / "files"
    (path / "photos" / "2024").mkdir(parents=True)
    (path / "photos" / "2024" / "a.raw").write_bytes(os.urandom(300_000))
    (path / "photos" / "notes.txt").write_text("holiday\n")
    (path / "photos" / ".backvault-tags").write_text("backup=daily\n")
    (path / "docs").mkdir()
    (path / "docs" / "letter.txt").write_text("hello\n")
    return path


@pytest.fixture
def scratch(data_dir: Path) -> Path:
    """Where Filesystem restore tests put their copies: DATA_DIR/restore-tests."""
    return data_dir / "restore-tests"


@pytest.fixture
def setup(context: ServiceContext, root: Path) -> ServiceContext:
    """Vault "main", endpoint "files" (discovered), one completed backup of photos and of docs."""
    create_backup_vault(context, "main")
    register_source_endpoint(context, "files", "Filesystem", {"root": str(root)})
    discover_endpoint(context, "files")
    for arn in (PHOTOS, DOCS):
        start_backup_job(context, "main", arn, ROLE)
        assert worker(context).run_once()
    return context


def worker(context: ServiceContext) -> Worker:
    """A worker with the service's handlers."""
    return Worker(context, worker_id="test-worker", handlers=HANDLERS)


def make_plan(context: ServiceContext, name: str = "nightly", **choice: Any) -> None:
    """A daily 05:00 UTC plan over every vault (choice overrides RecoveryPointSelection members)."""
    selection = {
        "Algorithm": "LATEST_WITHIN_WINDOW",
        "IncludeVaults": ["*"],
        "RecoveryPointTypes": ["SNAPSHOT"],
    }
    selection.update(choice)
    create_restore_testing_plan(
        context,
        {
            "RestoreTestingPlanName": name,
            "ScheduleExpression": "cron(0 5 ? * * *)",
            "StartWindowHours": 2,
            "RecoveryPointSelection": selection,
        },
    )


def make_selection(context: ServiceContext, plan: str = "nightly", hook: Any = None, **members: Any) -> None:
    """A selection of the photos resource (members override)."""
    body: dict[str, Any] = {
        "RestoreTestingSelectionName": "photos",
        "ProtectedResourceType": "Filesystem",
        "IamRoleArn": ROLE,
        "ProtectedResourceArns": [PHOTOS],
    }
    body.update(members)
    create_restore_testing_selection(context, plan, body, validation_hook=hook)


def start_due_run(context: ServiceContext, clock: FakeClock) -> str:
    """Move the clock to the next run, run the runner, return the single restore job it started."""
    clock.current = NEXT_RUN + timedelta(minutes=1)
    report = run_restore_tests(context)
    assert report.errors == []
    assert len(report.restore_job_ids) == 1, report
    return report.restore_job_ids[0]


def scratch_path(context: ServiceContext, job_id: str) -> Path:
    """Where the test's restore job restores to."""
    with context.catalog.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return Path(job.parameters["Metadata"]["TargetPath"])


def events(context: ServiceContext, *kinds: str) -> list[Event]:
    """Events of the given types, oldest first."""
    with context.catalog.transaction() as session:
        return list(session.scalars(select(Event).where(Event.event_type.in_(kinds)).order_by(Event.id)))


def test_a_due_plan_restores_the_latest_point_validates_and_removes_the_scratch_copy(
    setup: ServiceContext, clock: FakeClock, root: Path, scratch: Path
) -> None:
    context = setup
    make_plan(context)
    make_selection(context)
    clock.current = NEXT_RUN - timedelta(minutes=1)
    assert run_restore_tests(context).started == []  # not due yet
    job_id = start_due_run(context, clock)
    target = scratch_path(context, job_id)
    assert target.parent == scratch and target.name.startswith("bvtest-")
    assert run_restore_tests(context).started == []  # the same run is not started twice
    job = describe_restore_job(context, job_id)
    assert job["Status"] == "PENDING"
    assert job["CreatedBy"]["RestoreTestingPlanArn"].startswith(
        "arn:aws:backup:local:000000000000:restore-testing-plan:nightly-"
    )
    assert (
        list_restore_jobs(context, by_restore_testing_plan_arn=job["CreatedBy"]["RestoreTestingPlanArn"])[
            "RestoreJobs"
        ][0]["RestoreJobId"]
        == job_id
    )

    assert worker(context).run_once()
    assert read_files(target) == read_files(root / "photos")  # the scratch copy is byte-identical
    assert advance_restore_tests(context).finished != []
    assert not target.exists()
    job = describe_restore_job(context, job_id)
    assert job["Status"] == "COMPLETED"
    assert job["ValidationStatus"] == "SUCCESSFUL", job["ValidationStatusMessage"]
    assert "match the snapshot" in job["ValidationStatusMessage"]
    assert job["DeletionStatus"] == "SUCCESSFUL"
    [test] = list_restore_tests(context)
    assert test["Status"] == "SUCCEEDED"
    assert test["ResourceArn"] == PHOTOS and test["RestoreDurationSeconds"] == 0
    [event] = events(context, "RESTORE_TEST_SUCCEEDED", "RESTORE_TEST_FAILED")
    assert event.event_type == "RESTORE_TEST_SUCCEEDED" and event.job_id == job_id
    assert event.detail["ValidationStatus"] == "SUCCESSFUL"
    plan_body = run_restore_tests(context)
    assert plan_body.started == [] and plan_body.finished == []

    # The next day's run starts a new test.
    clock.current = NEXT_RUN + timedelta(days=1, minutes=3)
    assert len(run_restore_tests(context).started) == 1


def test_a_tampered_copy_fails_validation_and_is_still_removed(
    setup: ServiceContext, clock: FakeClock, scratch: Path
) -> None:
    context = setup
    make_plan(context)
    make_selection(context)
    job_id = start_due_run(context, clock)
    assert worker(context).run_once()
    target = scratch_path(context, job_id)
    (target / "notes.txt").write_text("tampered\n")  # corrupt the copy between restore and validation
    advance_restore_tests(context)
    assert not target.exists()
    job = describe_restore_job(context, job_id)
    assert job["ValidationStatus"] == "FAILED"
    assert "notes.txt" in job["ValidationStatusMessage"]
    assert job["DeletionStatus"] == "SUCCESSFUL"
    assert [e.event_type for e in events(context, "RESTORE_TEST_SUCCEEDED", "RESTORE_TEST_FAILED")] == [
        "RESTORE_TEST_FAILED"
    ]
    assert list(scratch.iterdir()) == []


def test_hook_commands_get_the_restored_copy_and_decide(
    setup: ServiceContext, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = setup
    monkeypatch.setenv("BACKVAULT_MASTER_SECRET", "must-not-leak")
    seen = tmp_path / "seen.json"
    script = (
        "import json, os, sys\n"
        "path = os.environ['BACKVAULT_RESTORED_PATH']\n"
        "ok = open(os.path.join(path, 'notes.txt')).read() == 'holiday\\n'\n"
        f"json.dump(dict(os.environ), open({str(seen)!r}, 'w'))\n"
        "print('checked notes.txt')\n"
        "sys.exit(0 if ok and sys.argv[1] == 'pass' else 1)\n"
    )
    make_plan(context)
    make_selection(context, hook={"Command": [sys.executable, "-c", script, "pass"], "TimeoutSeconds": 60})
    job_id = start_due_run(context, clock)
    assert worker(context).run_once()
    advance_restore_tests(context)
    job = describe_restore_job(context, job_id)
    assert job["ValidationStatus"] == "SUCCESSFUL", job["ValidationStatusMessage"]
    assert "checked notes.txt" in job["ValidationStatusMessage"]
    environment = json.loads(seen.read_text())
    assert environment["BACKVAULT_RESTORE_JOB_ID"] == job_id
    assert environment["BACKVAULT_SOURCE_RESOURCE_ARN"] == PHOTOS
    assert environment["BACKVAULT_RESTORE_TESTING_PLAN_NAME"] == "nightly"
    assert "BACKVAULT_MASTER_SECRET" not in environment
    assert not Path(environment["BACKVAULT_RESTORED_PATH"]).exists()

    # The same hook told to fail: FAILED, and the copy is gone all the same.
    update_restore_testing_selection(
        context, "nightly", "photos", {}, validation_hook={"Command": [sys.executable, "-c", script, "fail"]}
    )
    clock.current = NEXT_RUN + timedelta(days=1, minutes=1)
    [failing] = run_restore_tests(context).restore_job_ids
    assert worker(context).run_once()
    advance_restore_tests(context)
    job = describe_restore_job(context, failing)
    assert job["ValidationStatus"] == "FAILED"
    assert "exited with status 1: checked notes.txt" in job["ValidationStatusMessage"]
    assert job["DeletionStatus"] == "SUCCESSFUL"
    assert not scratch_path(context, failing).exists()


class _Receiver:
    """A local webhook: records the JSON it receives and answers with ``answer``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.received.append(json.loads(self.rfile.read(length)))
                body = json.dumps(receiver.answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/validate?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    """A webhook receiver on 127.0.0.1."""
    server = _Receiver()
    try:
        yield server
    finally:
        server.close()


def test_a_webhook_defers_its_verdict_to_put_restore_validation_result(
    setup: ServiceContext, clock: FakeClock, receiver: _Receiver
) -> None:
    context = setup
    make_plan(context)
    make_selection(context, hook={"WebhookUrl": receiver.url}, ValidationWindowHours=2)
    job_id = start_due_run(context, clock)
    assert worker(context).run_once()
    target = scratch_path(context, job_id)
    advance_restore_tests(context)
    [posted] = receiver.received
    assert posted["RestoreJobId"] == job_id and posted["RestoredPath"] == str(target)
    assert describe_restore_job(context, job_id)["ValidationStatus"] == "VALIDATING"
    assert target.exists()  # kept for the external check
    put_restore_validation_result(context, job_id, "VALIDATING", "still looking")
    advance_restore_tests(context)
    assert target.exists()
    put_restore_validation_result(context, job_id, "FAILED", "row counts differ")
    advance_restore_tests(context)
    assert not target.exists()
    job = describe_restore_job(context, job_id)
    assert (job["ValidationStatus"], job["DeletionStatus"]) == ("FAILED", "SUCCESSFUL")
    assert "row counts differ" in job["ValidationStatusMessage"]
    with pytest.raises(InvalidRequestException, match="already ended"):
        put_restore_validation_result(context, job_id, "SUCCESSFUL")

    # A webhook that never reports times out at the end of the window; one that answers decides.
    clock.current = NEXT_RUN + timedelta(days=1, minutes=1)
    second = run_restore_tests(context).restore_job_ids
    assert worker(context).run_once()
    advance_restore_tests(context)
    clock.advance(timedelta(hours=2, minutes=1))
    advance_restore_tests(context)
    job = describe_restore_job(context, second[0])
    assert job["ValidationStatus"] == "TIMED_OUT" and job["DeletionStatus"] == "SUCCESSFUL"
    receiver.answer = {"ValidationStatus": "SUCCESSFUL", "ValidationStatusMessage": "all rows present"}
    clock.current = NEXT_RUN + timedelta(days=2, minutes=1)
    third = run_restore_tests(context).restore_job_ids
    assert worker(context).run_once()
    advance_restore_tests(context)
    job = describe_restore_job(context, third[0])
    assert job["ValidationStatus"] == "SUCCESSFUL" and "all rows present" in job["ValidationStatusMessage"]
    assert not scratch_path(context, third[0]).exists()
    # The webhook's URL (with its token) is nowhere in the job or the events.
    with context.catalog.engine.connect() as connection:
        dumped = repr(list(connection.exec_driver_sql("SELECT * FROM events"))) + repr(
            list(connection.exec_driver_sql("SELECT * FROM jobs"))
        )
    assert "token=abc" not in dumped


def test_a_failed_restore_is_still_cleaned_up(setup: ServiceContext, clock: FakeClock) -> None:
    context = setup
    make_plan(context)
    # The connector refuses unknown metadata: the restore job fails.
    make_selection(context, RestoreMetadataOverrides={"Bogus": "1"})
    job_id = start_due_run(context, clock)
    target = scratch_path(context, job_id)
    assert worker(context).run_once()
    assert describe_restore_job(context, job_id)["Status"] == "FAILED"
    target.mkdir(parents=True)  # as if the failed restore had left something behind
    (target / "partial").write_text("x")
    advance_restore_tests(context)
    assert not target.exists()
    [test] = list_restore_tests(context)
    assert test["Status"] == "FAILED"
    assert "Bogus" in test["ValidationStatusMessage"] and test["DeletionStatus"] == "SUCCESSFUL"
    assert "ValidationStatus" not in describe_restore_job(context, job_id)
    assert [e.event_type for e in events(context, "RESTORE_TEST_SUCCEEDED", "RESTORE_TEST_FAILED")] == [
        "RESTORE_TEST_FAILED"
    ]


def test_random_picks_among_points_in_the_window_and_excluded_vaults_are_skipped(
    setup: ServiceContext, clock: FakeClock, root: Path
) -> None:
    context = setup
    create_backup_vault(context, "other")
    # Points of photos in "other": three inside the 5-day window, one older.
    start = clock.current
    inside = {
        back_up_point(
            context, "other", root / "photos", created=start + timedelta(hours=hours), resource_arn=PHOTOS
        )
        for hours in (1, 2, 3)
    }
    old = back_up_point(
        context, "other", root / "photos", created=start - timedelta(days=6), resource_arn=PHOTOS
    )
    make_plan(
        context, "random", Algorithm="RANDOM_WITHIN_WINDOW", IncludeVaults=[OTHER_ARN], SelectionWindowDays=5
    )
    make_selection(context, "random")
    picked = []
    for _ in range(15):
        clock.advance(timedelta(minutes=1))
        report = run_restore_test_now(context, "random")
        [test_id] = report.started
        picked.append(describe_restore_test(context, test_id)["RecoveryPointArn"])
    assert set(picked) <= inside and old not in picked
    assert len(set(picked)) > 1

    # LATEST in "other": the newest point there.
    newest = back_up_point(
        context, "other", root / "photos", created=start + timedelta(hours=4), resource_arn=PHOTOS
    )
    make_plan(context, "newest", IncludeVaults=[OTHER_ARN])
    make_selection(context, "newest")
    [test_id] = run_restore_test_now(context, "newest").started
    assert describe_restore_test(context, test_id)["RecoveryPointArn"] == newest

    # LATEST over every vault but "other": the backup job's point in "main", though "other" has newer.
    make_plan(context, "latest", ExcludeVaults=["arn:aws:backup:local:000000000000:backup-vault:oth*"])
    make_selection(context, "latest")
    [test_id] = run_restore_test_now(context, "latest").started
    chosen = describe_restore_test(context, test_id)["RecoveryPointArn"]
    assert chosen not in inside | {old, newest}
    assert (
        describe_restore_job(context, describe_restore_test(context, test_id)["RestoreJobId"])[
            "BackupVaultArn"
        ]
        == MAIN_ARN
    )


def test_choose_recovery_point() -> None:
    first, second = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC)
    points = [(second, "b"), (first, "a")]
    assert choose_recovery_point(points, "LATEST_WITHIN_WINDOW") == "b"
    assert choose_recovery_point([], "RANDOM_WITHIN_WINDOW") is None
    drawn = {choose_recovery_point(points, "RANDOM_WITHIN_WINDOW", random.Random(seed)) for seed in range(20)}
    assert drawn == {"a", "b"}


def test_tag_conditions_start_window_and_types(setup: ServiceContext, clock: FakeClock) -> None:
    context = setup
    make_plan(context)
    # By tag: photos carries backup=daily, docs does not.
    make_selection(
        context,
        ProtectedResourceArns=["*"],
        ProtectedResourceConditions={"StringEquals": [{"Key": "aws:ResourceTag/backup", "Value": "daily"}]},
    )
    create_restore_testing_selection(
        context,
        "nightly",
        {
            "RestoreTestingSelectionName": "not_daily",
            "ProtectedResourceType": "Filesystem",
            "IamRoleArn": ROLE,
            "ProtectedResourceArns": ["*"],
            "ProtectedResourceConditions": {
                "StringNotEquals": [{"Key": "aws:ResourceTag/backup", "Value": "daily"}]
            },
        },
    )
    # The start window (2 hours) has passed: the run is skipped and recorded, not started late.
    clock.current = NEXT_RUN + timedelta(hours=3)
    report = run_restore_tests(context)
    assert report.started == [] and report.skipped[0]["Reason"] == "its start window had passed"
    clock.current = NEXT_RUN + timedelta(days=1, minutes=5)
    report = run_restore_tests(context)
    tested = {describe_restore_test(context, test_id)["ResourceArn"] for test_id in report.started}
    assert tested == {PHOTOS, DOCS}
    by_selection = {
        describe_restore_test(context, t)["RestoreTestingSelectionName"]: describe_restore_test(context, t)[
            "ResourceArn"
        ]
        for t in report.started
    }
    assert by_selection == {"photos": PHOTOS, "not_daily": DOCS}
    # CONTINUOUS points do not exist in backvault: such a plan finds nothing to test.
    update_restore_testing_plan(
        context,
        "nightly",
        {
            "RecoveryPointSelection": {
                "Algorithm": "LATEST_WITHIN_WINDOW",
                "IncludeVaults": ["*"],
                "RecoveryPointTypes": ["CONTINUOUS"],
            }
        },
    )
    clock.advance(timedelta(minutes=1))
    report = run_restore_test_now(context, "nightly")
    assert report.started == [] and "SNAPSHOT" in report.skipped[0]["Reason"]


def test_put_restore_validation_result_errors_and_inferred_metadata(
    setup: ServiceContext, clock: FakeClock, scratch: Path
) -> None:
    context = setup
    with context.catalog.transaction() as session:
        point_arn = session.scalars(select(Job.recovery_point_arn).where(Job.resource_arn == PHOTOS)).one()
    assert point_arn is not None
    inferred = get_restore_testing_inferred_metadata(context, "main", point_arn)["InferredMetadata"]
    assert inferred["EndpointName"] == "files" and inferred["Overwrite"] == "false"
    assert Path(inferred["TargetPath"]).parent == scratch
    with pytest.raises(ResourceNotFoundException):
        get_restore_testing_inferred_metadata(context, "other", point_arn)

    plain = start_restore_job(context, point_arn, {"TargetPath": "copy"})["RestoreJobId"]
    assert worker(context).run_once()
    with pytest.raises(InvalidRequestException, match="not started by a restore testing plan"):
        put_restore_validation_result(context, plain, "SUCCESSFUL")
    with pytest.raises(InvalidParameterValueException, match="ValidationStatus"):
        put_restore_validation_result(context, plain, "GREAT")
    with pytest.raises(ResourceNotFoundException):
        put_restore_validation_result(context, "NO-SUCH-JOB", "SUCCESSFUL")
    make_plan(context)
    make_selection(context)
    job_id = start_due_run(context, clock)
    with pytest.raises(InvalidRequestException, match="once it has completed"):
        put_restore_validation_result(context, job_id, "SUCCESSFUL")


def test_a_dead_runners_claim_expires_and_a_window_without_hook_keeps_the_copy(
    setup: ServiceContext, clock: FakeClock
) -> None:
    context = setup
    make_plan(context)
    make_selection(context, ValidationWindowHours=1)
    job_id = start_due_run(context, clock)
    assert worker(context).run_once()
    target = scratch_path(context, job_id)
    # A runner claimed the test and died while validating.
    with context.catalog.transaction() as session:
        test = session.scalars(select(RestoreTest).where(RestoreTest.restore_job_id == job_id)).one()
        test.state, test.claim_owner = "VALIDATING", "dead-runner"
        test.claim_expires_at = clock.current + timedelta(minutes=5)
    advance_restore_tests(context)
    assert list_restore_tests(context)[0]["State"] == "VALIDATING"
    clock.advance(timedelta(minutes=6))
    advance_restore_tests(context)
    # Validated; no hook, but a validation window: the copy waits for an external result.
    assert list_restore_tests(context)[0]["State"] == "AWAITING_RESULT"
    assert target.exists()
    clock.advance(timedelta(hours=1))
    advance_restore_tests(context)
    assert not target.exists()
    job = describe_restore_job(context, job_id)
    assert job["ValidationStatus"] == "SUCCESSFUL" and "No external result" in job["ValidationStatusMessage"]


def test_a_copy_that_cannot_be_deleted_is_retried_then_reported(
    setup: ServiceContext, clock: FakeClock
) -> None:
    context = setup
    make_plan(context)
    make_selection(context, RestoreMetadataOverrides={"Bogus": "1"})
    job_id = start_due_run(context, clock)
    assert worker(context).run_once()
    target = scratch_path(context, job_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("not a directory")  # the Filesystem connector refuses to delete a file
    advance_restore_tests(context)
    assert list_restore_tests(context)[0]["State"] == "CLEANING"
    assert describe_restore_job(context, job_id)["DeletionStatus"] == "DELETING"
    advance_restore_tests(context)
    advance_restore_tests(context)
    [test] = list_restore_tests(context)
    assert (test["State"], test["Status"], test["DeletionStatus"]) == ("COMPLETED", "FAILED", "FAILED")
    assert "not a directory" in test["DeletionStatusMessage"]
    [event] = events(context, "RESTORE_TEST_FAILED")
    assert event.detail["DeletionStatus"] == "FAILED"
    assert target.exists()


def test_the_runner_loop_starts_due_tests_and_stops_when_told(
    setup: ServiceContext, clock: FakeClock
) -> None:
    context = setup
    make_plan(context)
    make_selection(context)
    clock.current = NEXT_RUN + timedelta(minutes=1)
    stop = threading.Event()
    thread = threading.Thread(target=run_restore_tests_forever, args=(context, stop, 0.05))
    thread.start()
    try:
        for _ in range(200):
            if list_restore_tests(context):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(list_restore_tests(context)) == 1  # many rounds, one test for the run


def test_hooks_time_out_kill_their_process_group_and_report_unreachable_webhooks(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild-survived"
    grandchild = "import sys, time; time.sleep(1.5); open(sys.argv[1], 'w')"
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}, {str(marker)!r}])\n"
        "time.sleep(30)\n"
    )
    renewals: list[int] = []
    verdict = run_command(
        [sys.executable, "-c", script], {"RestoreJobId": "J"}, 0.5, lambda: renewals.append(1)
    )
    assert verdict.status == "TIMED_OUT" and "0.5 s" in verdict.message
    threading.Event().wait(2.0)
    assert not marker.exists()  # the whole process group was killed
    missing = run_command([str(tmp_path / "no-such-program")], {}, 5, lambda: None)
    assert missing.status == "FAILED" and "cannot start" in missing.message
    # Port 9 (discard) on 127.0.0.1 has no listener here: the webhook cannot be reached.
    unreachable = call_webhook("http://127.0.0.1:9/hook?token=s3cr3t", "http://127.0.0.1:9", {}, 2)
    assert unreachable.status == "FAILED" and "s3cr3t" not in unreachable.message
