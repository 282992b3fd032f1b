"""The filesystem connector: discovery with tags files, backup, restore through staging, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filesystem_helpers import assert_same_tree, new_repository

from backvault.domain.arn import ResourceType
from backvault.repo.check import check
from backvault.repo.repository import Repository
from backvault.sources.base import (
    BackupRequest,
    ConnectorError,
    ConnectorStopped,
    EndpointSpec,
    RestoreRequest,
    ValidationRequest,
    get_connector,
)
from backvault.sources.filesystem import connector as connector_module
from backvault.sources.filesystem.connector import FilesystemConnector, parse_tags


def endpoint(root: Path, **extra: object) -> EndpointSpec:
    """An endpoint over root with a default tag."""
    return EndpointSpec(
        name="files",
        endpoint_type=ResourceType.FILESYSTEM,
        connection={"root": str(root), **extra},
        default_tags={"backup": "weekly", "site": "home"},
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with two resources, a hidden directory, a file and a symlink to a directory."""
    base = tmp_path / "root"
    photos = base / "photos" / "2024"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(os.urandom(300_000))
    (base / "photos" / "big.raw").write_bytes(os.urandom(1_500_000) * 2)  # crosses chunk boundaries
    (base / "photos" / ".backvault-tags").write_text("# tags\nbackup = daily\n\nowner=me\n")
    (base / "photos" / "empty").write_bytes(b"")
    os.link(photos / "a.jpg", base / "photos" / "a-hardlink.jpg")
    (base / "photos" / "to-a").symlink_to("2024/a.jpg")
    (base / "docs").mkdir()
    (base / "docs" / "letter.txt").write_text("hello\n")
    (base / ".hidden").mkdir()
    (base / "notes.txt").write_text("not a resource")
    (base / "linked").symlink_to(base / "docs")
    return base


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    """An empty repository."""
    return new_repository(str(tmp_path / "repo"))


def test_registry_finds_the_filesystem_connector() -> None:
    assert isinstance(get_connector("Filesystem"), FilesystemConnector)


def test_discovery_lists_visible_subdirectories_with_tags_over_defaults(root: Path) -> None:
    found = FilesystemConnector().discover(endpoint(root))
    assert [resource.name for resource in found] == ["docs", "photos"]
    tags = {resource.name: dict(resource.tags) for resource in found}
    assert tags["docs"] == {"backup": "weekly", "site": "home"}
    assert tags["photos"] == {"backup": "daily", "site": "home", "owner": "me"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("backup daily\n", "line 1: expected KEY=VALUE"),
        ("a=1\n=2\n", "line 2: expected KEY=VALUE"),
        ("a=1\na=2\n", "line 2: tag 'a' is given twice"),
        ("aws:name=x\n", "reserved"),
        ("k=" + "v" * 300 + "\n", "at most"),
    ],
)
def test_bad_tags_file_names_file_and_line(root: Path, text: str, problem: str) -> None:
    tags_file = root / "docs" / ".backvault-tags"
    tags_file.write_text(text)
    with pytest.raises(ConnectorError, match=problem) as caught:
        FilesystemConnector().discover(endpoint(root))
    assert str(tags_file) in str(caught.value)


def test_parse_tags_strips_blanks_and_comments() -> None:
    assert parse_tags("  # c\n k = v w \nempty=\n", "f") == {"k": "v w", "empty": ""}


@pytest.mark.parametrize(
    ("connection", "problem"),
    [
        ({"root": "relative/dir"}, "absolute directory path"),
        ({"root": "/does/not/exist"}, "does not exist"),
        ({"root": "/", "colour": "blue"}, "unknown connection setting"),
        ({"root": "/", "excludes": "*.tmp"}, "list of patterns"),
        ({"root": "/", "processes": 0}, "'processes' must be a whole number from 1 to 64, got 0"),
        ({"root": "/", "processes": "2"}, "'processes' must be a whole number"),
        ({"root": "/", "processes": True}, "'processes' must be a whole number"),
    ],
)
def test_check_endpoint_refuses_bad_settings(connection: dict[str, object], problem: str) -> None:
    spec = EndpointSpec("files", ResourceType.FILESYSTEM, connection)
    with pytest.raises(ConnectorError, match=problem):
        FilesystemConnector().check_endpoint(spec)


def test_check_endpoint_refuses_a_file_as_root(root: Path) -> None:
    with pytest.raises(ConnectorError, match="not a directory"):
        FilesystemConnector().check_endpoint(endpoint(root / "notes.txt"))


def test_backup_restore_validate_round_trip(root: Path, repository: Repository, tmp_path: Path) -> None:
    connector = FilesystemConnector()
    spec = endpoint(root)
    beats: list[int] = []
    snapshot = connector.backup(
        BackupRequest(spec, "photos", repository, tags=["backup=daily"], heartbeat=beats.append)
    )
    assert snapshot.paths == [str(root / "photos")]
    assert snapshot.tags == ["backup=daily"]
    assert not snapshot.partial
    assert beats[0] == 0

    metadata = connector.restore_metadata(spec, "photos", snapshot)
    assert metadata["Overwrite"] == "false"
    assert metadata["TargetPath"].startswith(str(root / "photos-restored-"))

    outcome = connector.restore(
        RestoreRequest(spec, "photos", repository, snapshot, metadata={"TargetPath": "photos-copy"})
    )
    assert outcome.resource_name == "photos-copy"
    assert outcome.problems == []
    assert outcome.bytes_restored >= 3_300_000
    assert_same_tree(str(root / "photos"), str(root / "photos-copy"), atime=False)
    assert [name for name in os.listdir(root) if "restoring" in name] == []  # staging removed

    valid = connector.validate(ValidationRequest(spec, outcome.resource_name, repository, snapshot))
    assert valid.valid, valid.message
    assert valid.details["FilesCompared"] == 5

    (root / "photos-copy" / "2024" / "a.jpg").write_bytes(b"changed")
    (root / "photos-copy" / "stray").write_text("x")
    invalid = connector.validate(ValidationRequest(spec, "photos-copy", repository, snapshot))
    assert not invalid.valid
    assert "2024/a.jpg: size" in invalid.message
    assert "stray: not in the snapshot" in invalid.message

    connector.delete_restored(spec, "photos-copy")
    assert not (root / "photos-copy").exists()
    connector.delete_restored(spec, "photos-copy")  # already gone: fine


def test_restore_outside_the_root_is_named_by_absolute_path(
    root: Path, repository: Repository, tmp_path: Path
) -> None:
    connector = FilesystemConnector()
    spec = endpoint(root)
    snapshot = connector.backup(BackupRequest(spec, "docs", repository))
    target = tmp_path / "elsewhere" / "docs"
    outcome = connector.restore(
        RestoreRequest(spec, "docs", repository, snapshot, metadata={"TargetPath": str(target)})
    )
    assert outcome.resource_name == str(target)
    assert (target / "letter.txt").read_text() == "hello\n"


def test_restore_refuses_non_empty_target_unless_overwrite(root: Path, repository: Repository) -> None:
    connector = FilesystemConnector()
    spec = endpoint(root)
    snapshot = connector.backup(BackupRequest(spec, "docs", repository))
    target = root / "restored"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    (target / "letter.txt").write_text("old")
    request = RestoreRequest(spec, "docs", repository, snapshot, metadata={"TargetPath": str(target)})
    with pytest.raises(ConnectorError, match="not empty"):
        connector.restore(request)
    assert (target / "letter.txt").read_text() == "old"  # nothing was touched

    overwrite = RestoreRequest(
        spec, "docs", repository, snapshot, metadata={"TargetPath": str(target), "Overwrite": "true"}
    )
    connector.restore(overwrite)
    assert (target / "letter.txt").read_text() == "hello\n"
    assert (target / "keep.txt").read_text() == "mine"


def test_restore_into_an_existing_empty_directory(root: Path, repository: Repository) -> None:
    connector = FilesystemConnector()
    spec = endpoint(root)
    snapshot = connector.backup(BackupRequest(spec, "docs", repository))
    (root / "empty-target").mkdir()
    connector.restore(
        RestoreRequest(spec, "docs", repository, snapshot, metadata={"TargetPath": "empty-target"})
    )
    assert (root / "empty-target" / "letter.txt").read_text() == "hello\n"


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"TargetPath": "../escape"}, "'..'"),
        ({"Colour": "blue"}, "Unknown restore metadata"),
        ({"TargetPath": "x", "Overwrite": "maybe"}, "'true' or 'false'"),
    ],
)
def test_restore_refuses_bad_metadata(
    root: Path, repository: Repository, metadata: dict[str, str], problem: str
) -> None:
    connector = FilesystemConnector()
    spec = endpoint(root)
    snapshot = connector.backup(BackupRequest(spec, "docs", repository))
    with pytest.raises(ConnectorError, match=problem):
        connector.restore(RestoreRequest(spec, "docs", repository, snapshot, metadata=metadata))


@pytest.mark.parametrize("processes", [1, 2])
def test_second_backup_uses_the_first_as_parent(root: Path, repository: Repository, processes: int) -> None:
    connector = FilesystemConnector()
    (root / "photos" / "2025").mkdir()  # two subdirectories: enough to hand to two processes
    (root / "photos" / "2025" / "b.txt").write_text("b")
    spec = endpoint(root, processes=processes)
    first = connector.backup(BackupRequest(spec, "photos", repository))
    (root / "photos" / "new.txt").write_text("new file")
    second = connector.backup(BackupRequest(spec, "photos", repository))
    assert second.parent == first.id
    assert second.summary["files_unmodified"] == 6
    assert second.summary["files_new"] == 1
    assert first.summary["processes"] == second.summary["processes"] == (1 if processes == 1 else 3)


def test_backup_of_a_missing_resource_or_root_is_a_connector_error(
    root: Path, repository: Repository
) -> None:
    connector = FilesystemConnector()
    with pytest.raises(ConnectorError, match="does not exist"):
        connector.backup(BackupRequest(endpoint(root), "gone", repository))
    with pytest.raises(ConnectorError, match="relative path"):
        connector.backup(BackupRequest(endpoint(root), "../etc", repository))
    with pytest.raises(ConnectorError, match="BackupOptions"):
        connector.backup(BackupRequest(endpoint(root), "docs", repository, options={"WindowsVSS": "enabled"}))


def test_stopped_backup_commits_nothing_and_leaves_a_clean_repository(
    root: Path, repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connector_module, "_HEARTBEAT_INTERVAL", 0.0)  # pass every progress report on
    calls: list[int] = []

    def stop(processed: int) -> None:
        calls.append(processed)
        if len(calls) > 1:  # mid-way: after the walk has started writing
            raise ConnectorStopped("stop requested")

    with pytest.raises(ConnectorStopped):
        FilesystemConnector().backup(BackupRequest(endpoint(root), "photos", repository, heartbeat=stop))
    assert len(calls) == 2
    assert repository.list_snapshots() == []
    assert check(repository).ok


def test_delete_restored_never_removes_the_root(root: Path) -> None:
    connector = FilesystemConnector()
    with pytest.raises(ConnectorError, match="endpoint's root"):
        connector.delete_restored(endpoint(root / "docs"), "/")
    with pytest.raises(ConnectorError, match="not a directory"):
        connector.delete_restored(endpoint(root), "notes.txt")
    assert (root / "docs" / "letter.txt").exists()


def test_excludes_from_the_endpoint_apply(root: Path, repository: Repository) -> None:
    connector = FilesystemConnector()
    spec = endpoint(root, excludes=["*.raw"])
    snapshot = connector.backup(BackupRequest(spec, "photos", repository))
    outcome = connector.restore(
        RestoreRequest(spec, "photos", repository, snapshot, metadata={"TargetPath": "p2"})
    )
    assert not (root / outcome.resource_name / "big.raw").exists()
    assert (root / "p2" / "2024" / "a.jpg").exists()
