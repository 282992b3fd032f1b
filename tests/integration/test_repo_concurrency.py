"""Concurrency: several writers and prune on one repository at the same time.

The stress test runs two `backup` processes (different trees that share some identical
files) and a `prune --grace 0h` at once, a few rounds in a row, each round after forgetting
older snapshots so prune has packs to mark, repack and delete. Afterwards every snapshot
must restore byte-identically and `check --read-data` must be clean.

Two deterministic tests pin the ordering that makes this safe: a backup or a restore that
opened the repository (loaded the index) before prune marked a pack must not lose that pack.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from repo_helpers import (
    KIB,
    MIB,
    assert_check_clean,
    backup,
    finish_cli,
    init_repository,
    make_tree,
    object_keys,
    ok,
    open_repository,
    restore_and_compare,
    run_cli,
    start_cli,
    tree_digest,
    write_file,
)

from backvault.sources.filesystem.backup import backup_paths
from backvault.sources.filesystem.restore import restore_snapshot

ROUNDS = 3
SEED = 4242


def _add_shared(roots: list[Path], rng: random.Random, name: str, size: int) -> int:
    """Write the same random file into every root; returns its size."""
    data = rng.randbytes(size)
    for root in roots:
        write_file(root / "shared" / name, data)
    return size


def _mutate(root: Path, rng: random.Random) -> None:
    """Replace the big files, rewrite a few small ones, add one."""
    for path in sorted((root / "big").iterdir()):
        write_file(path, rng.randbytes(rng.randint(2 * MIB, 3 * MIB)))
    small = sorted(root.glob("dir*/sub*/*"))
    for path in rng.sample(small, 5):
        write_file(path, rng.randbytes(rng.randint(100, 20 * KIB)))
    write_file(root / "added" / f"file{rng.randrange(10**9)}.txt", rng.randbytes(5000))


@pytest.mark.slow
def test_two_backups_and_a_prune_at_the_same_time(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    make_tree(alpha, seed=1, small_files=80, big_files=2)
    make_tree(beta, seed=2, small_files=80, big_files=2)
    shared_bytes = _add_shared([alpha, beta], rng, "common.bin", 2 * MIB + 500 * KIB)
    for number in range(20):
        shared_bytes += _add_shared([alpha, beta], rng, f"small{number}.dat", rng.randint(1, 30 * KIB))
    repo = tmp_path / "repo"
    init_repository(repo)

    expected: dict[str, tuple[str, dict[str, str]]] = {}  # snapshot id -> (root name, digest)
    latest: dict[str, str] = {}  # root name -> newest snapshot id
    first = backup(repo, alpha)
    expected[first["id"]] = ("alpha", tree_digest(alpha))
    second = backup(repo, beta)
    expected[second["id"]] = ("beta", tree_digest(beta))
    latest.update(alpha=first["id"], beta=second["id"])
    # the second writer finds the shared files already stored (dedup across source trees)
    assert second["summary"]["chunks_reused"] > 0, second["summary"]
    beta_total = second["summary"]["total_bytes"]
    assert second["summary"]["bytes_stored"] <= beta_total - shared_bytes + 64 * KIB, second["summary"]

    forgotten: set[str] = set()
    prune_reports: list[dict[str, Any]] = []
    for round_number in range(ROUNDS):
        # files both trees gain at once: the two writers race to store the same chunks
        _add_shared([alpha, beta], rng, f"round{round_number}.bin", 2 * MIB + rng.randrange(MIB))
        _mutate(alpha, rng)
        _mutate(beta, rng)
        # forget the current snapshots (the new backups replace them): prune has work
        ok(run_cli("forget", latest["alpha"], latest["beta"], repo=repo))
        forgotten.update((latest["alpha"], latest["beta"]))

        runs = {}
        for name, args in (
            ("alpha", ("backup", "--json", alpha)),
            ("beta", ("backup", "--json", beta)),
            ("prune", ("prune", "--json", "--grace", "0h")),
        ):
            runs[name] = start_cli(*args, repo=repo, output_dir=tmp_path / f"round{round_number}-{name}")
            time.sleep(rng.uniform(0, 0.3))
        results = {name: finish_cli(*run) for name, run in runs.items()}
        for result in results.values():
            ok(result)
        for name in ("alpha", "beta"):
            snapshot = results[name].json()
            assert snapshot["partial"] is False, snapshot
            expected[snapshot["id"]] = (name, tree_digest(tmp_path / name))
            latest[name] = snapshot["id"]
        prune_reports.append(results["prune"].json())

    # one more prune with nothing running: marks deferred by the backups are carried out now
    prune_reports.append(ok(run_cli("prune", "--json", "--grace", "0h", repo=repo)).json())
    assert sum(report["packs_marked"] for report in prune_reports) > 0, prune_reports
    assert sum(report["packs_deleted"] for report in prune_reports) > 0, prune_reports
    assert object_keys(repo, "deletions/") == [], prune_reports

    listed = {item["id"] for item in ok(run_cli("snapshots", "--json", repo=repo)).json()}
    assert listed == set(expected) - forgotten
    for snapshot_id in sorted(listed):
        root_name, digest = expected[snapshot_id]
        restore_and_compare(repo, snapshot_id, digest, tmp_path / "restored", root_name)
    report = assert_check_clean(repo, "--read-data")
    assert report["notes"] == [], report


def test_backup_that_opened_the_repository_before_a_prune_keeps_its_data(tmp_path: Path) -> None:
    """A backup loads the index when it opens the repository and takes its lock only later
    (when its writer starts). A prune that marks and sweeps in between sees no lock older than
    its mark, so it deletes the packs, while the backup still deduplicates against them."""
    old = tmp_path / "old"
    write_file(old / "returning.bin", os.urandom(3 * MIB))
    kept = tmp_path / "kept"
    write_file(kept / "small.txt", b"kept\n")
    repo = tmp_path / "repo"
    init_repository(repo)
    old_snapshot = backup(repo, old)
    backup(repo, kept)
    ok(run_cli("forget", old_snapshot["id"], repo=repo))

    # `backvault repo backup` of `old` starts: it opens the repository (and loads the index) ...
    repository = open_repository(repo)
    # ... a prune marks and sweeps the forgotten data meanwhile ...
    swept = ok(run_cli("prune", "--json", "--grace", "0h", repo=repo)).json()
    assert swept["packs_deleted"] > 0, swept
    # ... and the backup goes on: returning.bin is back and must be stored again
    snapshot = backup_paths(repository, [str(old)])

    report = assert_check_clean(repo, "--read-data")
    assert report["notes"] == [], report
    restore_and_compare(repo, snapshot.id, tree_digest(old), tmp_path / "restored", "old")


def test_restore_that_opened_the_repository_before_a_prune_keeps_its_data(tmp_path: Path) -> None:
    """A restore reads packs named by the index it loaded at the start; a prune that repacks
    a partly used pack and sweeps it meanwhile must not pull that pack from under it (restore
    holds no lock, so nothing defers the sweep)."""
    source = tmp_path / "src"
    write_file(source / "kept.txt", b"this file is in both snapshots\n" * 100)
    write_file(source / "dropped.bin", os.urandom(100 * KIB))
    repo = tmp_path / "repo"
    init_repository(repo)
    first = backup(repo, source)
    (source / "dropped.bin").unlink()
    second = backup(repo, source)
    expected = tree_digest(source)
    ok(run_cli("forget", first["id"], repo=repo))

    # `backvault repo restore` of the second snapshot starts: it opens the repository ...
    repository = open_repository(repo)
    snapshot = repository.find_snapshot(second["id"])
    # ... a prune repacks kept.txt's pack (dropped.bin is garbage now) and deletes the old one ...
    swept = ok(run_cli("prune", "--json", "--grace", "0h", repo=repo)).json()
    assert swept["packs_repacked"] > 0 and swept["packs_deleted"] > 0, swept
    # ... and the restore goes on
    target = tmp_path / "restored"
    result = restore_snapshot(repository, snapshot, str(target))
    assert result.errors == [], result.errors
    assert tree_digest(target / "src") == expected
