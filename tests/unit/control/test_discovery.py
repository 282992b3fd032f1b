"""Discovery keeps the protected-resources table current: new, changed, vanished and shared resources."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import FakeClock
from sqlalchemy import select

from backvault.control.catalog import Event, Job, ProtectedResource
from backvault.control.catalog.restore_testing_models import RestoreTest
from backvault.control.context import ServiceContext
from backvault.control.discovery import (
    _reconcile,
    describe_protected_resource,
    discover_all,
    discover_endpoint,
    list_discovered_resources,
    list_protected_resources,
)
from backvault.control.endpoints import get_endpoint_row, register_source_endpoint
from backvault.domain.errors import (
    DependencyFailureException,
    InvalidRequestException,
    ResourceNotFoundException,
)
from backvault.sources.base import DiscoveredResource

PREFIX = "arn:aws:backvault:local:000000000000:filesystem:files"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with a tagged resource, an untagged one and a hidden directory."""
    path = tmp_path / "files"
    (path / "photos").mkdir(parents=True)
    (path / "photos" / ".backvault-tags").write_text("backup=daily\nowner = me\n")
    (path / "docs").mkdir()
    (path / ".cache").mkdir()
    return path


@pytest.fixture
def endpoint(context: ServiceContext, root: Path) -> str:
    """A registered filesystem endpoint over root with default tags."""
    register_source_endpoint(
        context, "files", "Filesystem", {"root": str(root)}, default_tags={"backup": "weekly", "site": "lab"}
    )
    return "files"


def resources(context: ServiceContext) -> dict[str, ProtectedResource]:
    """Every protected-resource row by ARN."""
    with context.catalog.transaction() as session:
        return {row.arn: row for row in session.scalars(select(ProtectedResource))}


def event_log(context: ServiceContext) -> list[tuple[str, str | None]]:
    """(type, resource ARN) of every discovery event, oldest first."""
    kinds = ("RESOURCE_DISCOVERED", "RESOURCE_VANISHED")
    with context.catalog.transaction() as session:
        rows = session.scalars(select(Event).where(Event.event_type.in_(kinds)).order_by(Event.id))
        return [(row.event_type, row.resource_arn) for row in rows]


def test_discovery_records_resources_with_tags(context: ServiceContext, endpoint: str) -> None:
    result = discover_endpoint(context, endpoint)
    assert result["NewResourceArns"] == [f"{PREFIX}/docs", f"{PREFIX}/photos"]
    rows = resources(context)
    assert set(rows) == {f"{PREFIX}/docs", f"{PREFIX}/photos"}
    photos = rows[f"{PREFIX}/photos"]
    assert photos.native_tags == {"backup": "daily", "site": "lab", "owner": "me"}
    assert photos.resource_name == "photos"
    assert photos.endpoint_name == "files"
    assert photos.resource_type == "Filesystem"
    assert photos.last_seen_date == context.now()
    assert rows[f"{PREFIX}/docs"].native_tags == {"backup": "weekly", "site": "lab"}
    assert event_log(context) == [
        ("RESOURCE_DISCOVERED", f"{PREFIX}/docs"),
        ("RESOURCE_DISCOVERED", f"{PREFIX}/photos"),
    ]


def test_rediscovery_adds_new_marks_vanished_and_updates_tags(
    context: ServiceContext, endpoint: str, root: Path, clock: FakeClock
) -> None:
    discover_endpoint(context, endpoint)
    clock.advance(timedelta(hours=1))
    (root / "music").mkdir()
    (root / "music" / ".backvault-tags").write_text("backup=daily\n")
    shutil.rmtree(root / "docs")
    (root / "photos" / ".backvault-tags").write_text("backup=never\n")
    result = discover_endpoint(context, endpoint)
    assert result["NewResourceArns"] == [f"{PREFIX}/music"]
    assert result["VanishedResourceArns"] == [f"{PREFIX}/docs"]
    rows = resources(context)
    assert rows[f"{PREFIX}/docs"].last_seen_date < rows[f"{PREFIX}/music"].last_seen_date  # kept, not deleted
    assert rows[f"{PREFIX}/photos"].native_tags == {"backup": "never", "site": "lab"}

    listed = {item["ResourceArn"]: item for item in list_discovered_resources(context)["Resources"]}
    assert listed[f"{PREFIX}/docs"]["Vanished"] is True
    assert listed[f"{PREFIX}/music"]["Vanished"] is False
    assert listed[f"{PREFIX}/music"]["NativeTags"] == {"backup": "daily", "site": "lab"}
    seen = list_discovered_resources(context, include_vanished=False)["Resources"]
    assert [item["ResourceArn"] for item in seen] == [f"{PREFIX}/music", f"{PREFIX}/photos"]

    # A vanished resource is reported once, and again as discovered when it comes back.
    discover_endpoint(context, endpoint)
    (root / "docs").mkdir()
    again = discover_endpoint(context, endpoint)
    assert again["NewResourceArns"] == [f"{PREFIX}/docs"]
    assert event_log(context)[2:] == [
        ("RESOURCE_DISCOVERED", f"{PREFIX}/music"),
        ("RESOURCE_VANISHED", f"{PREFIX}/docs"),
        ("RESOURCE_DISCOVERED", f"{PREFIX}/docs"),
    ]


def test_vanishing_is_seen_even_when_the_clock_stands_still(
    context: ServiceContext, endpoint: str, root: Path
) -> None:
    discover_endpoint(context, endpoint)
    shutil.rmtree(root / "docs")
    assert discover_endpoint(context, endpoint)["VanishedResourceArns"] == [f"{PREFIX}/docs"]


def test_aws_protected_resource_answers(context: ServiceContext, endpoint: str) -> None:
    discover_endpoint(context, endpoint)
    # As in AWS, a resource counts as protected once it has a recovery point.
    assert list_protected_resources(context) == {"Results": []}
    described = describe_protected_resource(context, f"{PREFIX}/photos")
    assert described == {
        "ResourceArn": f"{PREFIX}/photos",
        "ResourceType": "Filesystem",
        "ResourceName": "photos",
    }
    with context.catalog.transaction() as session:
        row = session.get(ProtectedResource, f"{PREFIX}/photos")
        assert row is not None
        row.last_backup_time = context.now()
        row.last_recovery_point_arn = "arn:aws:backup:local:000000000000:recovery-point:abc"
    [listed] = list_protected_resources(context)["Results"]
    assert listed["LastBackupTime"] == context.now()
    assert listed["LastRecoveryPointArn"].endswith(":abc")
    with pytest.raises(ResourceNotFoundException):
        describe_protected_resource(context, f"{PREFIX}/nothing")


def test_discover_all_reports_a_broken_endpoint_and_goes_on(
    context: ServiceContext, endpoint: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    register_source_endpoint(context, "a-broken", "Filesystem", {"root": str(broken)})
    shutil.rmtree(broken)
    with pytest.raises(DependencyFailureException, match="does not exist"):
        discover_endpoint(context, "a-broken")
    result = discover_all(context)
    assert [item["EndpointName"] for item in result["Endpoints"]] == ["files"]
    [error] = result["Errors"]
    assert error["EndpointName"] == "a-broken"
    assert error["ErrorCode"] == "DependencyFailureException"
    assert "does not exist" in error["Message"]
    assert len(resources(context)) == 2


def test_bad_tags_file_fails_discovery_with_file_and_line(
    context: ServiceContext, endpoint: str, root: Path
) -> None:
    (root / "docs" / ".backvault-tags").write_text("fine=yes\nnot a tag\n")
    with pytest.raises(DependencyFailureException, match=r"\.backvault-tags, line 2: expected KEY=VALUE"):
        discover_endpoint(context, endpoint)
    assert resources(context) == {}


def test_an_s3_bucket_behind_two_endpoints_is_refused(context: ServiceContext) -> None:
    # S3 ARNs do not name the endpoint; the reconciliation must keep the first owner.
    for name in ("s3-one", "s3-two"):
        register_source_endpoint(context, name, "S3", {"endpoint_url": "http://127.0.0.1:1"}, check=False)
    arn = "arn:aws:s3:::shared-bucket"
    found = {arn: DiscoveredResource(name="shared-bucket")}
    with context.catalog.transaction() as session:
        _reconcile(session, context, get_endpoint_row(session, "s3-one", for_update=True), found)
    with (
        pytest.raises(InvalidRequestException, match="already discovered behind endpoint 's3-one'"),
        context.catalog.transaction() as session,
    ):
        _reconcile(session, context, get_endpoint_row(session, "s3-two", for_update=True), found)
    assert resources(context)[arn].endpoint_name == "s3-one"
    # Once the first endpoint no longer sees the bucket, the second one may take it over.
    with context.catalog.transaction() as session:
        _reconcile(session, context, get_endpoint_row(session, "s3-one", for_update=True), {})
    with context.catalog.transaction() as session:
        _reconcile(session, context, get_endpoint_row(session, "s3-two", for_update=True), found)
    assert resources(context)[arn].endpoint_name == "s3-two"


def test_restore_test_scratch_copies_are_never_discovered(
    context: ServiceContext, endpoint: str, root: Path, clock: FakeClock
) -> None:
    # A copy named by a restore test carries the original's tags file: it must not become a resource.
    shutil.copytree(root / "photos", root / "bvtest-1a2b3c")
    # A copy under a name the restore chose is known by its restore job while its test is unfinished.
    (root / "restored-photos").mkdir()
    copy_arn = f"{PREFIX}/restored-photos"
    with context.catalog.transaction() as session:
        session.add(
            Job(
                id="job-1",
                job_type="RESTORE",
                state="COMPLETED",
                parameters={"CreatedResourceArn": copy_arn},
                creation_date=clock.current,
            )
        )
        session.add(
            RestoreTest(
                id="test-1",
                plan_id="plan-1",
                plan_name="plan",
                plan_arn="arn:aws:backup:local:000000000000:restore-testing-plan:plan-1",
                selection_name="selection",
                scheduled_time=clock.current,
                resource_arn=f"{PREFIX}/photos",
                resource_type="Filesystem",
                restore_job_id="job-1",
                state="VALIDATING",
                endpoint_name=endpoint,
                creation_time=clock.current,
            )
        )
    discover_endpoint(context, endpoint)
    assert sorted(resources(context)) == [f"{PREFIX}/docs", f"{PREFIX}/photos"]

    with context.catalog.transaction() as session:
        test = session.get(RestoreTest, "test-1")
        assert test is not None
        test.state = "COMPLETED"
    discover_endpoint(context, endpoint)  # a finished test's copy is an ordinary directory again
    assert sorted(resources(context)) == [f"{PREFIX}/docs", f"{PREFIX}/photos", copy_arn]
