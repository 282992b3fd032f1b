"""Corruption: one flipped byte in any stored object is found, named, and never restored as data.

A pristine repository (two snapshots of a few MB of mixed files, 1 MiB packs) is built once;
every test damages a copy of it and drives the real CLI: `check` must fail and name the
damaged object (and for data, the snapshots and files it affects), `restore` must fail for
the affected files, write no wrong bytes, and restore everything else byte-identically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from repo_helpers import (
    MIB,
    PASSWORD,
    SECOND_PASSWORD,
    CliResult,
    assert_check_clean,
    backup,
    check_json,
    files_by_snapshot,
    flip_byte,
    init_repository,
    make_tree,
    object_keys,
    ok,
    open_repository,
    restore_and_compare,
    run_cli,
    tree_blob_ids,
    tree_digest,
    write_file,
)

from backvault.repo.blob import BlobType
from backvault.repo.index import decode_index
from backvault.repo.pack import pack_key

ROOT = "src"  # the backed-up directory's name: check shows "/src/...", restore creates target/src


@dataclass
class Pristine:
    """An undamaged repository and what each of its snapshots holds."""

    repo: Path
    snapshots: dict[str, dict[str, str]]  # snapshot id -> tree_digest of the source at that time
    order: list[str]  # snapshot ids, oldest first

    def copy(self, tmp_path: Path) -> Path:
        """A private copy to damage."""
        repo = tmp_path / "repo"
        shutil.copytree(self.repo, repo)
        return repo


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """Two snapshots of one tree (the second after a few changes) in a repository with 1 MiB packs."""
    base = tmp_path_factory.mktemp("pristine")
    source = base / ROOT
    make_tree(source, seed=11, small_files=150, big_files=3)
    repo = base / "repo"
    init_repository(repo)
    first = backup(repo, source)["id"]
    first_digest = tree_digest(source)
    write_file(source / "dir0" / "sub0" / "blob000.dat", os.urandom(30_000))
    with open(source / "logs" / "app.log", "ab") as log:
        log.write(b"one more line\n" * 1000)
    write_file(source / "added" / "new.txt", b"added between the snapshots\n")
    (source / "dir1" / "sub1" / "note001.txt").unlink()
    second = backup(repo, source)["id"]
    assert first != second
    assert len(object_keys(repo, "data/")) >= 6, "the tree should fill several packs"
    return Pristine(repo, {first: first_digest, second: tree_digest(source)}, [first, second])


# --- helpers --------------------------------------------------------------------------------


def _affected_by(repo: Path, chunk_ids: set[str]) -> set[tuple[str, str]]:
    """(snapshot id, "/src/path") of every file that uses one of the chunks."""
    return {
        (snapshot_id, path)
        for snapshot_id, files in files_by_snapshot(repo).items()
        for path, chunks in files.items()
        if chunk_ids & set(chunks)
    }


def _reported_affected(report: Mapping[str, object]) -> set[tuple[str, str]]:
    problems = report["problems"]
    assert isinstance(problems, list)
    return {(item["snapshot"], item["path"]) for problem in problems for item in problem["affected"]}


def _relative(path: str) -> str:
    """Path relative to the restored root: "/src/big/big0.bin" -> "big/big0.bin"."""
    prefix = f"/{ROOT}/"
    assert path.startswith(prefix), path
    return path[len(prefix) :]


def _assert_restore_fails_only_for(
    repo: Path,
    snapshot_id: str,
    expected: Mapping[str, str],
    damaged: set[str],
    target: Path,
    *,
    password: str = PASSWORD,
) -> CliResult:
    """restore must exit non-zero naming exactly the damaged files, write none of them, and
    restore every other file byte-identically."""
    result = run_cli("restore", snapshot_id, "--target", target, "--json", repo=repo, password=password)
    assert result.returncode != 0, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    reported = {item["path"] for item in result.json()["errors"]}
    assert reported == damaged, result.describe()
    for path in damaged:
        assert path in result.stderr, f"stderr does not name {path}\n{result.describe()}"
    root = target / ROOT
    for path in damaged:
        restored = root / _relative(path)
        # no wrong bytes: the damaged file is absent (an identical copy would also be acceptable)
        if restored.exists():
            content = hashlib.sha256(restored.read_bytes()).hexdigest()
            assert content == expected[_relative(path)], f"{path} was restored with wrong content"
    got = tree_digest(root)
    wanted = {path: digest for path, digest in expected.items() if f"/{ROOT}/{path}" not in damaged}
    different = sorted(path for path, digest in wanted.items() if got.get(path) != digest)
    assert not different, f"files restored wrongly or not at all: {different[:10]}\n{result.describe()}"
    return result


@dataclass
class PackDamage:
    """Where a byte was flipped and which snapshot files that damages."""

    key: str
    offset: int
    chunk: str
    affected: set[tuple[str, str]]


def _damage_a_pack(repo: Path, part_of: str = "/big/") -> PackDamage:
    """Flip the middle byte of a pack whose middle lies in a data chunk of a file whose path
    contains part_of (big files: one chunk belongs to one file)."""
    repository = open_repository(repo)
    trees = tree_blob_ids(repository)
    for pack_id in sorted(repository.index.packs):
        key = pack_key(pack_id)
        middle = (repo / key).stat().st_size // 2
        for blob_id, location in repository.index.entries_of(pack_id):
            inside = location.offset <= middle < location.offset + location.length
            if inside and location.type == BlobType.DATA and blob_id not in trees:
                affected = _affected_by(repo, {blob_id.hex()})
                if affected and all(part_of in path for _, path in affected):
                    flip_byte(repo / key, middle)
                    return PackDamage(key, middle, blob_id.hex(), affected)
    raise AssertionError(f"no pack has a chunk of a {part_of} file in its middle")


# --- packs ----------------------------------------------------------------------------------


def test_damaged_pack_is_named_with_its_snapshots_and_files(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    damage = _damage_a_pack(repo)
    # the big files did not change between the snapshots: both are affected
    assert {snapshot for snapshot, _ in damage.affected} == set(pristine.order)

    text = run_cli("check", "--read-data", repo=repo)
    assert text.returncode != 0, text.describe()
    assert "Traceback" not in text.stderr
    assert damage.key in text.output, text.describe()
    for snapshot_id, path in damage.affected:
        assert f"affects snapshot {snapshot_id[:8]}: {path}" in text.stderr, text.describe()

    result, report = check_json(repo, "--read-data")
    assert result.returncode != 0 and report["ok"] is False, result.describe()
    assert [problem["object"] for problem in report["problems"]] == [damage.key], result.describe()
    assert _reported_affected(report) == damage.affected, result.describe()


def test_damaged_pack_is_found_by_read_data_subset_100(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    damage = _damage_a_pack(repo)
    result, report = check_json(repo, "--read-data-subset", "100%")
    assert result.returncode != 0, result.describe()
    assert report["packs_read"] == len(object_keys(repo, "data/")), report
    assert [problem["object"] for problem in report["problems"]] == [damage.key], result.describe()
    assert _reported_affected(report) == damage.affected


def test_restore_with_a_damaged_pack_fails_only_for_the_affected_files(
    pristine: Pristine, tmp_path: Path
) -> None:
    repo = pristine.copy(tmp_path)
    damage = _damage_a_pack(repo)
    for snapshot_id in pristine.order:
        damaged = {path for snapshot, path in damage.affected if snapshot == snapshot_id}
        assert damaged, "the damaged chunk belongs to a file of every snapshot"
        _assert_restore_fails_only_for(
            repo, snapshot_id, pristine.snapshots[snapshot_id], damaged, tmp_path / f"out-{snapshot_id[:8]}"
        )


def test_restore_text_output_names_the_damaged_file(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    damage = _damage_a_pack(repo)
    snapshot_id = pristine.order[0]
    text = run_cli("restore", snapshot_id, "--target", tmp_path / "out", repo=repo)
    assert text.returncode != 0 and "Traceback" not in text.stderr, text.describe()
    for damaged_snapshot, path in damage.affected:
        if damaged_snapshot == snapshot_id:
            assert f"not restored: {path}: " in text.stderr, text.describe()


def test_long_paths_are_printed_whole(tmp_path: Path) -> None:
    """Names in check and restore output must survive copy-paste and grep: no line wrapping."""
    source = tmp_path / ROOT
    deep = source / ("a_rather_long_directory_name_" * 3) / ("and_another_long_one_" * 3)
    write_file(deep / "the_damaged_file_with_a_long_name.bin", os.urandom(2 * MIB + 12345))
    write_file(source / "small.txt", b"small\n")
    repo = tmp_path / "repo"
    init_repository(repo)
    snapshot_id = backup(repo, source)["id"]
    damage = _damage_a_pack(repo, "the_damaged_file")
    ((_, path),) = damage.affected
    assert len(f"    affects snapshot {snapshot_id[:8]}: {path}") > 120

    check = run_cli("check", "--read-data", repo=repo)
    assert check.returncode != 0
    assert f"affects snapshot {snapshot_id[:8]}: {path}\n" in check.stderr, check.describe()
    restore = run_cli("restore", snapshot_id, "--target", tmp_path / "out", repo=repo)
    assert restore.returncode != 0
    assert f"not restored: {path}: " in restore.stderr, restore.describe()


def test_missing_pack_is_named_without_reading_data(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    repository = open_repository(repo)
    trees = tree_blob_ids(repository)
    for pack_id in sorted(repository.index.packs):
        chunks = {blob_id for blob_id, _ in repository.index.entries_of(pack_id)}
        affected = _affected_by(repo, {chunk.hex() for chunk in chunks})
        if affected and not chunks & trees:
            break
    else:
        raise AssertionError("no pack holds only file data")
    key = pack_key(pack_id)
    (repo / key).unlink()

    result, report = check_json(repo)
    assert result.returncode != 0, result.describe()
    assert [problem["object"] for problem in report["problems"]] == [key], result.describe()
    assert _reported_affected(report) == affected, result.describe()
    for snapshot_id in pristine.order:
        damaged = {path for snapshot, path in affected if snapshot == snapshot_id}
        if damaged:
            _assert_restore_fails_only_for(
                repo, snapshot_id, pristine.snapshots[snapshot_id], damaged, tmp_path / snapshot_id[:8]
            )


# --- index ----------------------------------------------------------------------------------


def _damage_an_index(repo: Path) -> tuple[str, set[tuple[str, str]]]:
    """Flip the middle byte of an index object that lists only data chunks; return its key and
    the (snapshot, path) of every file with a chunk in its packs."""
    repository = open_repository(repo)
    trees = tree_blob_ids(repository)
    for key in object_keys(repo, "index/"):
        document = decode_index((repo / key).read_bytes(), repository.sealer)
        chunks = {entry.id for entries in document.packs.values() for entry in entries}
        if chunks and not chunks & trees:
            affected = _affected_by(repo, {chunk.hex() for chunk in chunks})
            if affected:
                flip_byte(repo / key)
                return key, affected
    raise AssertionError("no index object lists only data chunks")


def test_damaged_index_is_named_and_restore_fails_only_for_its_files(
    pristine: Pristine, tmp_path: Path
) -> None:
    repo = pristine.copy(tmp_path)
    key, affected = _damage_an_index(repo)

    text = run_cli("check", repo=repo)
    assert text.returncode != 0 and "Traceback" not in text.stderr, text.describe()
    assert key in text.output, text.describe()
    result, report = check_json(repo)
    assert result.returncode != 0
    assert key in {problem["object"] for problem in report["problems"]}, result.describe()
    assert _reported_affected(report) == affected, result.describe()

    for snapshot_id in pristine.order:
        damaged = {path for snapshot, path in affected if snapshot == snapshot_id}
        if damaged:
            _assert_restore_fails_only_for(
                repo, snapshot_id, pristine.snapshots[snapshot_id], damaged, tmp_path / snapshot_id[:8]
            )

    # the packs are intact: rebuilding the index from them repairs the repository
    ok(run_cli("repair-index", repo=repo))
    report = assert_check_clean(repo, "--read-data")
    assert report["notes"] == [], report
    for snapshot_id in pristine.order:
        restore_and_compare(
            repo, snapshot_id, pristine.snapshots[snapshot_id], tmp_path / f"fixed-{snapshot_id[:8]}", ROOT
        )


def test_repair_index_after_losing_every_index_object(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    for key in object_keys(repo, "index/"):
        (repo / key).unlink()

    result, report = check_json(repo)
    assert result.returncode != 0, "a repository without an index must not check clean"
    assert report["problems"], report

    repaired = ok(run_cli("repair-index", repo=repo))
    packs = len(object_keys(repo, "data/"))
    assert f"index rebuilt from {packs} pack(s)" in repaired.stdout, repaired.describe()
    report = assert_check_clean(repo, "--read-data")
    assert report["notes"] == [] and report["packs_read"] == packs, report
    for snapshot_id in pristine.order:
        restore_and_compare(
            repo, snapshot_id, pristine.snapshots[snapshot_id], tmp_path / snapshot_id[:8], ROOT
        )


# --- snapshots ------------------------------------------------------------------------------


def test_damaged_snapshot_is_named_and_not_restored(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    damaged_id, intact_id = pristine.order
    key = f"snapshots/{damaged_id}"
    flip_byte(repo / key)

    text = run_cli("check", repo=repo)
    assert text.returncode != 0 and "Traceback" not in text.stderr, text.describe()
    assert key in text.output, text.describe()
    result, report = check_json(repo)
    assert [problem["object"] for problem in report["problems"]] == [key], result.describe()

    restore_and_compare(repo, intact_id, pristine.snapshots[intact_id], tmp_path / "intact", ROOT)

    target = tmp_path / "out"
    restore = run_cli("restore", damaged_id, "--target", target, repo=repo)
    assert restore.returncode != 0 and "Traceback" not in restore.stderr, restore.describe()
    assert not target.exists() or not any(target.iterdir()), "nothing may be restored from it"
    # the snapshot exists but is damaged: say so (and which object), not "no snapshot matches"
    assert "damaged" in restore.stderr and key in restore.stderr, restore.describe()


# --- keys -----------------------------------------------------------------------------------


def test_damaged_only_key_is_named(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    (key,) = object_keys(repo, "keys/")
    flip_byte(repo / key)

    check = run_cli("check", repo=repo)
    assert check.returncode != 0 and "Traceback" not in check.stderr, check.describe()
    assert key in check.stderr, check.describe()
    target = tmp_path / "out"
    restore = run_cli("restore", pristine.order[0], "--target", target, repo=repo)
    assert restore.returncode != 0 and key in restore.stderr, restore.describe()
    assert not target.exists()


@pytest.mark.parametrize("damaged_key", ["first", "second"])
def test_damaged_key_with_an_intact_second_key(pristine: Pristine, tmp_path: Path, damaged_key: str) -> None:
    repo = pristine.copy(tmp_path)
    (first,) = object_keys(repo, "keys/")
    ok(run_cli("key", "add", repo=repo, env={"BACKVAULT_NEW_PASSWORD": SECOND_PASSWORD}))
    (second,) = set(object_keys(repo, "keys/")) - {first}
    damaged, damaged_password, intact_password = (
        (first, PASSWORD, SECOND_PASSWORD) if damaged_key == "first" else (second, SECOND_PASSWORD, PASSWORD)
    )
    flip_byte(repo / damaged)

    # the other key still opens the repository, and check names the damaged key
    result, report = check_json(repo, "--read-data", password=intact_password)
    assert result.returncode != 0, result.describe()
    assert [problem["object"] for problem in report["problems"]] == [damaged], result.describe()
    text = run_cli("check", repo=repo, password=intact_password)
    assert text.returncode != 0 and damaged in text.output, text.describe()
    snapshot_id = pristine.order[0]
    target = tmp_path / "out"
    ok(run_cli("restore", snapshot_id, "--target", target, repo=repo, password=intact_password))
    assert tree_digest(target / ROOT) == pristine.snapshots[snapshot_id]

    # the damaged key's passphrase no longer opens it; the error says which key is damaged
    denied = run_cli("snapshots", repo=repo, password=damaged_password)
    assert denied.returncode != 0 and "Traceback" not in denied.stderr, denied.describe()
    assert damaged in denied.stderr, denied.describe()


# --- config ---------------------------------------------------------------------------------


def test_damaged_config_is_named_and_nothing_is_restored(pristine: Pristine, tmp_path: Path) -> None:
    repo = pristine.copy(tmp_path)
    flip_byte(repo / "config")

    check = run_cli("check", "--read-data", repo=repo)
    assert check.returncode != 0 and "Traceback" not in check.stderr, check.describe()
    assert "damaged data: config" in check.stderr, check.describe()
    target = tmp_path / "out"
    restore = run_cli("restore", pristine.order[-1], "--target", target, repo=repo)
    assert restore.returncode != 0 and "Traceback" not in restore.stderr, restore.describe()
    assert "damaged data: config" in restore.stderr, restore.describe()
    assert not target.exists()
