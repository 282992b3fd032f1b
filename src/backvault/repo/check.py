"""Integrity check: structure always, and the data itself with --read-data[-subset].

Every problem names the damaged object; for damaged blobs, check also names the
snapshots and files that depend on them, so the operator knows what is at risk.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from backvault.repo.config import CONFIG_KEY, RepositoryConfig
from backvault.repo.crypto import content_hash
from backvault.repo.errors import DamagedDataError
from backvault.repo.pack import pack_key, parse_pack_header
from backvault.repo.repository import Repository, verify_named_object
from backvault.repo.snapshot import Snapshot
from backvault.storage.base import ObjectNotFoundError


@dataclass
class Affected:
    """A snapshot file (or directory) that depends on damaged data."""

    snapshot: str
    path: str


@dataclass
class Problem:
    """One integrity problem."""

    object_key: str
    message: str
    affected: list[Affected] = field(default_factory=list)


@dataclass
class CheckReport:
    """The outcome of a check: problems make it fail; notes do not."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshots_checked: int = 0
    trees_checked: int = 0
    packs_read: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is damaged or missing."""
        return not self.problems


def check(
    repository: Repository,
    *,
    read_data_fraction: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check structure, and decrypt-and-verify a fraction (0..1) of the packs."""
    report = CheckReport()
    lock = repository.lock()
    try:
        _check_static_objects(repository, report)
        repository.load_index()  # under the lock: always current for a check
        snapshots = repository.list_snapshots()
        for key, reason in repository.problems.damaged.items():
            report.problems.append(Problem(key, reason))
        report.snapshots_checked = len(snapshots)
        bad_blobs: dict[bytes, str] = {}
        _check_packs_exist(repository, report, bad_blobs)
        if read_data_fraction > 0:
            _read_packs(repository, report, read_data_fraction, bad_blobs, progress)
        _walk_snapshots(repository, snapshots, report, bad_blobs)
    finally:
        lock.release()
    return report


def _check_static_objects(repository: Repository, report: CheckReport) -> None:
    """Keys must match their names; the config must authenticate."""
    for info in repository.store.list("keys/"):
        try:
            verify_named_object(info.key, repository.store.get(info.key))
        except DamagedDataError as error:
            report.problems.append(Problem(info.key, error.reason))
    try:
        RepositoryConfig.from_object(repository.store.get(CONFIG_KEY), repository.sealer)
    except DamagedDataError as error:
        report.problems.append(Problem(CONFIG_KEY, error.reason))


def _check_packs_exist(repository: Repository, report: CheckReport, bad_blobs: dict[bytes, str]) -> None:
    """Indexed packs must exist with a plausible size; unindexed packs are only noted."""
    stored = {info.key.rsplit("/", 1)[1]: info.size for info in repository.store.list("data/")}
    for pack_id, blob_ids in repository.index.packs.items():
        if pack_id not in stored:
            report.problems.append(
                Problem(pack_key(pack_id), "pack is in the index but missing from storage")
            )
            for blob_id in blob_ids:
                bad_blobs.setdefault(blob_id, pack_key(pack_id))
            continue
        end = max((loc.offset + loc.length for _, loc in repository.index.entries_of(pack_id)), default=0)
        if stored[pack_id] < end:
            report.problems.append(Problem(pack_key(pack_id), "pack is shorter than its index entries"))
    unindexed = set(stored) - set(repository.index.packs)
    if unindexed:
        report.notes.append(
            f"{len(unindexed)} pack(s) are not in the index (left by an interrupted backup); "
            "'backvault repo prune' removes them"
        )


def _read_packs(
    repository: Repository,
    report: CheckReport,
    fraction: float,
    bad_blobs: dict[bytes, str],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Read whole packs: the name must match the content, and every blob must decrypt and verify."""
    pack_ids = sorted(repository.index.packs)
    if fraction < 1.0:
        count = max(1, round(len(pack_ids) * fraction)) if pack_ids else 0
        pack_ids = sorted(random.sample(pack_ids, count))
    for number, pack_id in enumerate(pack_ids, 1):
        if progress:
            progress(number, len(pack_ids))
        key = pack_key(pack_id)
        try:
            data = repository.store.get(key)
        except ObjectNotFoundError:
            continue  # already reported as missing
        report.packs_read += 1
        damage = list(_pack_damage(repository, pack_id, data))
        for blob_id, _reason in damage:
            bad_blobs.setdefault(blob_id, key)
        if damage:
            reasons = sorted({reason for _, reason in damage})
            report.problems.append(Problem(key, "; ".join(reasons)))


def _pack_damage(repository: Repository, pack_id: str, data: bytes) -> Iterator[tuple[bytes, str]]:
    """Yield (blob id, reason) for every indexed blob of the pack that does not verify."""
    if content_hash(data) != pack_id:
        yield b"", "pack content does not match its name"
    header: set[tuple[bytes, int, int]] = set()
    try:
        header = {
            (entry.id, entry.offset, entry.length) for entry in parse_pack_header(data, repository.sealer)
        }
    except ValueError as error:
        yield b"", f"pack header: {error}"
    for blob_id, location in repository.index.entries_of(pack_id):
        if header and (blob_id, location.offset, location.length) not in header:
            yield blob_id, "index entry disagrees with the pack header"
            continue
        stored = data[location.offset : location.offset + location.length]
        try:
            repository.codec.decode(location.type, blob_id, stored)
        except ValueError as error:
            yield blob_id, f"blob {blob_id.hex()[:16]}: {error}"


def _walk_snapshots(
    repository: Repository, snapshots: list[Snapshot], report: CheckReport, bad_blobs: dict[bytes, str]
) -> None:
    """Every tree must load and every referenced chunk must be indexed; name what damage affects."""
    problems_by_object: dict[str, Problem] = {p.object_key: p for p in report.problems}
    clean: set[str] = set()  # trees whose whole subtree verified intact: skipped when seen again
    blamed = 0

    def blame(object_key: str, snapshot: Snapshot, path: str, message: str) -> None:
        nonlocal blamed
        blamed += 1
        problem = problems_by_object.get(object_key)
        if problem is None:
            problem = Problem(object_key, message)
            problems_by_object[object_key] = problem
            report.problems.append(problem)
        problem.affected.append(Affected(snapshot.id, path))

    for snapshot in snapshots:
        # depth-first with an exit marker, so a tree is known clean once its whole subtree was seen
        stack: list[tuple[str, str, int]] = [(snapshot.tree, "/", -1)]
        while stack:
            tree_id, path, blamed_before = stack.pop()
            if blamed_before >= 0:
                if blamed == blamed_before:
                    clean.add(tree_id)
                continue
            if tree_id in clean:
                continue
            try:
                if bytes.fromhex(tree_id) in bad_blobs:
                    raise DamagedDataError(bad_blobs[bytes.fromhex(tree_id)], "tree blob is damaged", tree_id)
                tree = repository.load_tree(tree_id)
            except DamagedDataError as error:
                blame(error.object_key, snapshot, path, error.reason)
                continue
            report.trees_checked += 1
            stack.append((tree_id, path, blamed))
            for node in tree.nodes:
                child = path.rstrip("/") + "/" + node.name.decode("utf-8", "surrogateescape")
                for chunk in node.content:
                    chunk_id = bytes.fromhex(chunk)
                    if chunk_id in bad_blobs:
                        blame(bad_blobs[chunk_id], snapshot, child, "damaged chunk")
                        break
                    if chunk_id not in repository.index:
                        blame("index", snapshot, child, "chunks missing from the index")
                        break
                if node.subtree:
                    stack.append((node.subtree, child, -1))
