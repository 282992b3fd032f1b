"""Crash safety: a backup killed with SIGKILL at any moment leaves a repository that checks clean.

One repository template is created; every trial copies it, starts `backvault repo backup`,
kills it at a moment drawn from a seeded RNG, then checks the repository, runs the backup
again and restores it. Packs whose index object was written before the kill must be reused.

The kill moments are spread over the measured duration of a whole backup. Start-up (the
interpreter, opening the repository) takes about half of it on a fast machine, so moments
after start-up are timed from the appearance of the backup's lock object rather than from
the process start: a slow or busy machine then shifts both phases alike.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from repo_helpers import (
    KIB,
    MIB,
    assert_check_clean,
    backup,
    check_json,
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
)

pytestmark = pytest.mark.slow

TRIALS = 24
SEED = 20261121


def _indexed_bytes(repo: Path) -> int:
    """Stored bytes of every blob the repository's index knows (what a new backup can reuse)."""
    repository = open_repository(repo)
    return sum(
        location.length
        for pack_id in repository.index.packs
        for _, location in repository.index.entries_of(pack_id)
    )


def _lock_appears(repo: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Wait until the backup wrote its lock (its work begins); False if it exited first."""
    locks = repo / "locks"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if locks.is_dir() and any(not name.startswith(".") for name in os.listdir(locks)):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("the backup did not take its lock within a minute")


def test_backup_killed_at_random_moments_leaves_a_clean_reusable_repository(tmp_path: Path) -> None:
    source = tmp_path / "src"
    make_tree(source, seed=7, small_files=300, big_files=8, big_size=(2 * MIB + 300 * KIB, 3 * MIB))
    expected = tree_digest(source)
    template = tmp_path / "template"
    init_repository(template)

    # One full, uninterrupted backup: its duration spreads the kill times, its size is the baseline.
    measured = tmp_path / "measured"
    shutil.copytree(template, measured)
    started = time.monotonic()
    process, stdout, stderr = start_cli(
        "backup", "--json", source, repo=measured, output_dir=tmp_path / "measured-run"
    )
    assert _lock_appears(measured, process)
    startup = time.monotonic() - started
    full = ok(finish_cli(process, stdout, stderr)).json()
    duration = time.monotonic() - started
    full_stored = full["summary"]["bytes_stored"]
    assert full_stored > 20 * MIB, full["summary"]
    assert len(object_keys(measured, "data/")) >= 10, "the tree should fill many packs"
    shutil.rmtree(measured)

    rng = random.Random(SEED)
    reuse_trials = 0
    outcomes: list[str] = []
    for trial in range(TRIALS):
        repo = tmp_path / f"repo{trial}"
        shutil.copytree(template, repo)
        # stratified: trial i is killed somewhere in the i-th slice of the backup's duration
        delay = duration * (trial + rng.random()) / TRIALS
        process, stdout, stderr = start_cli(
            "backup", "--json", source, repo=repo, output_dir=tmp_path / f"run{trial}"
        )
        try:
            if delay < startup:
                time.sleep(delay)
            elif _lock_appears(repo, process):
                time.sleep(delay - startup)
        finally:
            process.send_signal(signal.SIGKILL)
            killed = finish_cli(process, stdout, stderr)
        finished = killed.returncode == 0
        assert finished or killed.returncode == -signal.SIGKILL, killed.describe()

        reusable = _indexed_bytes(repo)
        packs_after_kill = len(object_keys(repo, "data/"))

        result, report = check_json(repo, "--read-data")
        assert result.returncode == 0 and report["ok"] and report["problems"] == [], (
            f"trial {trial} (killed after {delay:.3f}s): check failed\n{result.describe()}"
        )

        again = backup(repo, source)
        stored = again["summary"]["bytes_stored"]
        if reusable > 0:
            reuse_trials += 1
            assert again["summary"]["chunks_reused"] > 0, again["summary"]
            # everything the index knew is reused; only trees may differ (a little metadata)
            assert stored <= full_stored - reusable + 64 * KIB, (
                f"trial {trial}: {reusable} bytes were indexed before the kill, yet the next backup "
                f"stored {stored} of {full_stored}"
            )
        else:
            assert stored <= full_stored + 64 * KIB, again["summary"]
        restore_and_compare(repo, again["id"], expected, tmp_path / "restored", "src")

        # prune removes what the killed backup left unreferenced; the repository stays whole
        ok(run_cli("prune", "--grace", "0h", repo=repo))
        final = assert_check_clean(repo, "--read-data")
        assert final["notes"] == [], final
        outcomes.append(
            f"{delay:.2f}s of {duration:.2f}s (start-up {startup:.2f}s): "
            f"{'finished' if finished else 'killed'}, {packs_after_kill} packs, "
            f"{reusable // KIB} KiB reusable, next stored {stored // KIB} KiB"
        )
        shutil.rmtree(repo)

    print("\n".join(outcomes))  # shown with -s or -rP: where the kills landed
    # the kills must have hit uploads in progress, not only start-up or the very end
    assert reuse_trials >= TRIALS // 6, "\n".join(outcomes)
    assert sum("killed" in outcome for outcome in outcomes) >= TRIALS // 2, "\n".join(outcomes)
