"""forget + prune round trips: two-phase deletion (mark, then sweep after the grace period).

The grace period cannot be shorter than an hour on the command line (`--grace` takes
y/m/d/h), so "after the grace" is tested two ways: `--grace 0h`, and a mark back-dated by
two hours (rewritten with the repository key, exactly as prune writes marks) followed by a
plain `prune` with the default grace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from repo_helpers import (
    KIB,
    MIB,
    assert_check_clean,
    backup,
    init_repository,
    make_tree,
    object_keys,
    ok,
    open_repository,
    restore_and_compare,
    run_cli,
    tree_digest,
    write_file,
)

from backvault.repo.crypto import content_hash
from backvault.repo.prune import _MARK_AAD, read_deletion_marks

ROOT = "src"


def _stored_bytes(repo: Path) -> int:
    return sum((repo / key).stat().st_size for key in object_keys(repo, "data/"))


def _prune(repo: Path, *extra: str) -> dict[str, Any]:
    report: dict[str, Any] = ok(run_cli("prune", "--json", *extra, repo=repo)).json()
    return report


def _two_snapshots(tmp_path: Path) -> tuple[Path, Path, dict[str, Any], dict[str, Any], dict[str, str], Path]:
    """A repository with an old snapshot and a new one whose big files all changed.

    Returns (repo, source, old snapshot, new snapshot, digest of the new state, copy of the old
    big files)."""
    source = tmp_path / ROOT
    make_tree(source, seed=21, small_files=60, big_files=3)
    old_big = tmp_path / "old-big"
    shutil.copytree(source / "big", old_big)
    repo = tmp_path / "repo"
    init_repository(repo)
    old = backup(repo, source)
    for path in (source / "big").iterdir():
        write_file(path, path.read_bytes()[::-1])  # same size, entirely new chunks
    new = backup(repo, source)
    return repo, source, old, new, tree_digest(source), old_big


def test_forget_then_prune_marks_first_and_deletes_after_the_grace(tmp_path: Path) -> None:
    repo, _source, old, new, new_digest, old_big = _two_snapshots(tmp_path)
    packs_before = object_keys(repo, "data/")
    bytes_before = _stored_bytes(repo)

    forgotten = ok(run_cli("forget", "--keep-last", "1", "--json", repo=repo)).json()
    decisions = {item["id"]: item["keep"] for item in forgotten["decisions"]}
    assert decisions == {old["id"]: False, new["id"]: True}, forgotten
    listed = ok(run_cli("snapshots", "--json", repo=repo)).json()
    assert [snapshot["id"] for snapshot in listed] == [new["id"]]

    # default grace: the unused packs are only marked
    marked = _prune(repo)
    assert marked["packs_marked"] > 0, marked
    assert marked["packs_deleted"] == 0 and marked["bytes_freed"] == 0, marked
    # (partly used packs are repacked when marking: new packs may appear, none may go)
    assert set(packs_before) <= set(object_keys(repo, "data/")), "nothing may be deleted within the grace"
    assert len(object_keys(repo, "deletions/")) == 1
    assert_check_clean(repo, "--read-data")
    restore_and_compare(repo, new["id"], new_digest, tmp_path / "while-marked", ROOT)

    # a second prune within the grace period deletes nothing either (and marks nothing twice)
    again = _prune(repo)
    assert again["packs_deleted"] == 0 and again["packs_marked"] == 0, again
    assert set(packs_before) <= set(object_keys(repo, "data/"))

    # data that now lives only in marked packs is stored anew, not deduplicated against them
    revived = tmp_path / "revived"
    shutil.copytree(old_big, revived / "big")
    old_big_size = sum(path.stat().st_size for path in old_big.iterdir())
    revived_snapshot = backup(repo, revived)
    assert revived_snapshot["summary"]["bytes_stored"] >= old_big_size, revived_snapshot["summary"]
    revived_digest = tree_digest(revived)

    # grace 0h: the sweep deletes the marked packs; what the snapshots use stays
    swept = _prune(repo, "--grace", "0h")
    assert swept["packs_deleted"] > 0 and swept["bytes_freed"] >= old_big_size, swept
    assert swept["packs_resurrected"] == 0, swept
    assert object_keys(repo, "deletions/") == []
    packs_after = object_keys(repo, "data/")
    assert len(set(packs_before) - set(packs_after)) >= swept["packs_deleted"] > 0
    # the repository shrank by what the forgotten snapshot alone used (the revived copy is new)
    assert _stored_bytes(repo) <= bytes_before + revived_snapshot["summary"]["bytes_stored"] - old_big_size

    report = assert_check_clean(repo, "--read-data")
    assert report["notes"] == [], report
    restore_and_compare(repo, new["id"], new_digest, tmp_path / "after-new", ROOT)
    restore_and_compare(repo, revived_snapshot["id"], revived_digest, tmp_path / "after-revived", "revived")


def test_forget_keep_last_then_prune_grace_0h_shrinks_the_repository(tmp_path: Path) -> None:
    repo, _source, _old, new, new_digest, _ = _two_snapshots(tmp_path)
    packs_before = len(object_keys(repo, "data/"))
    bytes_before = _stored_bytes(repo)
    ok(run_cli("forget", "--keep-last", "1", repo=repo))
    text = ok(run_cli("prune", "--grace", "0h", repo=repo))
    assert "deleted" in text.stdout, text.describe()
    assert len(object_keys(repo, "data/")) < packs_before
    # three big files of at least 2.2 MiB each were only in the forgotten snapshot
    assert _stored_bytes(repo) <= bytes_before - 3 * (2 * MIB + 200 * KIB)
    report = assert_check_clean(repo, "--read-data")
    assert report["notes"] == [] and report["snapshots_checked"] == 1, report
    restore_and_compare(repo, new["id"], new_digest, tmp_path / "restored", ROOT)


def _back_date_marks(repo: Path, seconds: float) -> None:
    """Rewrite every deletion mark as if prune had written it `seconds` earlier."""
    repository = open_repository(repo)
    for mark in read_deletion_marks(repository):
        document = {"created": mark.created - seconds, "packs": sorted(mark.packs)}
        data = repository.sealer.seal(json.dumps(document).encode(), _MARK_AAD)
        repository.store.put_new(f"deletions/{content_hash(data)}", data)
        repository.store.delete(mark.key)


def test_default_grace_sweeps_a_mark_that_is_older_than_the_grace(tmp_path: Path) -> None:
    repo, _source, _old, new, new_digest, _ = _two_snapshots(tmp_path)
    ok(run_cli("forget", "--keep-last", "1", repo=repo))
    marked = _prune(repo)
    assert marked["packs_marked"] > 0 and marked["packs_deleted"] == 0, marked
    condemned = {pack for mark in read_deletion_marks(open_repository(repo)) for pack in mark.packs}

    _back_date_marks(repo, 2 * 3600)
    swept = _prune(repo)  # default grace (1h) has passed for the back-dated mark
    assert swept["packs_deleted"] == len(condemned) > 0, swept
    remaining = {key.rsplit("/", 1)[1] for key in object_keys(repo, "data/")}
    assert not condemned & remaining
    assert_check_clean(repo, "--read-data")
    restore_and_compare(repo, new["id"], new_digest, tmp_path / "restored", ROOT)


def test_sweep_is_deferred_while_an_older_lock_exists(tmp_path: Path) -> None:
    repo, _source, _old, new, new_digest, _ = _two_snapshots(tmp_path)
    ok(run_cli("forget", "--keep-last", "1", repo=repo))
    packs_before = object_keys(repo, "data/")

    repository = open_repository(repo)
    with repository.writer():  # a backup in progress: its lock is older than the mark to come
        assert len(object_keys(repo, "locks/")) == 1
        deferred = _prune(repo, "--grace", "0h")
        assert deferred["packs_marked"] > 0, deferred
        assert deferred["marks_deferred"] >= 1 and deferred["packs_deleted"] == 0, deferred
        assert any("deferred" in message for message in deferred["messages"]), deferred
        assert set(packs_before) <= set(object_keys(repo, "data/")), "nothing may go under an older lock"
        text = ok(run_cli("prune", "--grace", "0h", repo=repo))
        assert "deferred" in text.stdout, text.describe()
        assert set(packs_before) <= set(object_keys(repo, "data/")), text.describe()
    assert object_keys(repo, "locks/") == []

    swept = _prune(repo, "--grace", "0h")
    assert swept["packs_deleted"] > 0 and swept["marks_deferred"] == 0, swept
    assert not set(packs_before) <= set(object_keys(repo, "data/"))
    report = assert_check_clean(repo, "--read-data")
    assert report["notes"] == [], report
    restore_and_compare(repo, new["id"], new_digest, tmp_path / "restored", ROOT)
