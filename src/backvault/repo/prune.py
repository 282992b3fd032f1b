"""Two-phase prune: mark unused packs now, delete them later, never under a running backup.

Phase 1 (mark): packs whose blobs no snapshot references are written into a deletion
mark (``deletions/<id>``); packs that are partly used have their live blobs copied into
new packs first. Writers that load the index after a mark never dedup against marked
packs. Phase 2 (sweep, in a later or the same run): a mark older than the grace period
is carried out only if no lock created before the mark still exists (such a lock's
holder may have loaded the index before the mark). References are recomputed after that
check, so a pack that a backup did reference is kept ("resurrected").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backvault.repo.crypto import AuthenticationError, content_hash
from backvault.repo.errors import DamagedDataError
from backvault.repo.index import Location
from backvault.repo.locks import read_locks
from backvault.repo.pack import PackBuilder, PackEntry, pack_key
from backvault.repo.writer import store_pack, write_index
from backvault.storage.base import ObjectNotFoundError

if TYPE_CHECKING:
    from backvault.repo.repository import Repository
    from backvault.repo.snapshot import Snapshot

_MARK_AAD = b"backvault deletion mark"
DEFAULT_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class DeletionMark:
    """Packs condemned by one prune run, and when."""

    key: str
    created: float
    packs: frozenset[str]


@dataclass
class PruneReport:
    """What one prune run did."""

    packs_marked: int = 0
    packs_repacked: int = 0
    packs_deleted: int = 0
    packs_resurrected: int = 0
    marks_deferred: int = 0
    bytes_freed: int = 0
    messages: list[str] = field(default_factory=list)


def read_deletion_marks(repository: Repository) -> list[DeletionMark]:
    """Every deletion mark in the repository."""
    marks: list[DeletionMark] = []
    for info in repository.store.list("deletions/"):
        try:
            document = json.loads(repository.sealer.open(repository.store.get(info.key), _MARK_AAD))
        except ObjectNotFoundError:
            continue
        except (AuthenticationError, ValueError) as error:
            raise DamagedDataError(info.key, "deletion mark unreadable") from error
        marks.append(DeletionMark(info.key, float(document["created"]), frozenset(document["packs"])))
    return marks


def referenced_blobs(repository: Repository, snapshots: list[Snapshot]) -> set[bytes]:
    """Ids of every tree and data blob reachable from the given snapshots."""
    seen_trees: set[str] = set()
    blobs: set[bytes] = set()
    stack = [snapshot.tree for snapshot in snapshots]
    while stack:
        tree_id = stack.pop()
        if tree_id in seen_trees:
            continue
        seen_trees.add(tree_id)
        blobs.add(bytes.fromhex(tree_id))
        for node in repository.load_tree(tree_id).nodes:
            blobs.update(bytes.fromhex(chunk) for chunk in node.content)
            if node.subtree:
                stack.append(node.subtree)
    return blobs


def stored_packs(repository: Repository) -> Iterator[tuple[str, int]]:
    """(pack id, size) of every pack object in storage."""
    for info in repository.store.list("data/"):
        yield info.key.rsplit("/", 1)[1], info.size


def prune(repository: Repository, *, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> PruneReport:
    """Run both phases under a shared lock."""
    report = PruneReport()
    lock = repository.lock()
    try:
        _sweep(repository, grace_seconds, report)
        _mark(repository, report)
        if grace_seconds <= 0:
            _sweep(repository, grace_seconds, report)
    finally:
        lock.release()
    return report


def _mark(repository: Repository, report: PruneReport) -> None:
    repository.load_index()
    used = referenced_blobs(repository, repository.list_snapshots())
    already = repository.index.condemned_packs
    sizes = dict(stored_packs(repository))
    condemned: set[str] = set()
    kept: set[bytes] = set()  # live blobs already stored in a pack that stays as it is
    partly_used: dict[str, list[tuple[bytes, Location]]] = {}
    for pack_id in sizes:
        if pack_id in already:
            continue
        entries = list(repository.index.entries_of(pack_id))
        live = [(blob_id, loc) for blob_id, loc in entries if blob_id in used]
        if not live:
            condemned.add(pack_id)  # entirely unused, or not indexed (an interrupted upload)
        elif len(live) < len(entries):
            partly_used[pack_id] = live
        else:
            kept.update(blob_id for blob_id, _ in entries)
    # copy each live blob once: concurrent writers may have stored the same blob in several packs
    to_repack: dict[str, list[PackEntry]] = {}
    for pack_id, live in partly_used.items():
        to_repack[pack_id] = []
        for blob_id, loc in live:
            if blob_id not in kept:
                kept.add(blob_id)
                to_repack[pack_id].append(
                    PackEntry(loc.type, blob_id, loc.offset, loc.length, loc.raw_length)
                )
    if to_repack:
        _repack(repository, to_repack, report)
        condemned.update(to_repack)
    if condemned:
        document = {"created": time.time(), "packs": sorted(condemned)}
        data = repository.sealer.seal(json.dumps(document).encode(), _MARK_AAD)
        repository.store.put_new(f"deletions/{content_hash(data)}", data)
        report.packs_marked += len(condemned)


def _repack(repository: Repository, packs: dict[str, list[PackEntry]], report: PruneReport) -> None:
    """Copy the live blobs of partly used packs into new packs (stored bytes are reused as they are)."""
    builder = PackBuilder()
    for pack_id, entries in packs.items():
        report.packs_repacked += 1
        if not entries:
            continue  # its live blobs are all stored in packs that stay
        data = repository.store.get(pack_key(pack_id))
        for entry in entries:
            stored = data[entry.offset : entry.offset + entry.length]
            repository.codec.decode(entry.type, entry.id, stored)  # never copy damage forward
            builder.add(entry.type, entry.id, stored, entry.raw_length)
            if builder.size >= repository.config.pack_size:
                _write_pack(repository, builder)
                builder = PackBuilder()
    if builder.entries:
        _write_pack(repository, builder)


def _write_pack(repository: Repository, builder: PackBuilder) -> None:
    repository.index.add_pack(store_pack(repository, builder), builder.entries)


def _sweep(repository: Repository, grace_seconds: float, report: PruneReport) -> None:
    now = time.time()
    marks = [mark for mark in read_deletion_marks(repository) if now - mark.created >= grace_seconds]
    if not marks:
        return
    own = repository.held_lock_keys()  # our own locks (the command's and prune's) never defer us
    locks = [lock for lock in read_locks(repository.store, repository.sealer) if lock.key not in own]
    ready: list[DeletionMark] = []
    for mark in marks:
        if any(lock.created <= mark.created and not lock.is_stale(now) for lock in locks):
            report.marks_deferred += 1
            report.messages.append(
                f"{mark.key}: deferred, an operation that started before it is still running"
            )
        else:
            ready.append(mark)
    if not ready:
        return
    # the lock check came first, so every backup that could use a marked pack has committed by now
    repository.load_index()
    used = referenced_blobs(repository, repository.list_snapshots())
    sizes = dict(stored_packs(repository))
    doomed = _packs_safe_to_delete(repository, {pack for mark in ready for pack in mark.packs}, used)
    report.packs_resurrected += len({pack for mark in ready for pack in mark.packs} - doomed)
    # new index first (without the doomed packs), then the packs, then the marks, then old indexes
    keep = {
        pack_id: [
            PackEntry(loc.type, blob_id, loc.offset, loc.length, loc.raw_length)
            for blob_id, loc in repository.index.entries_of(pack_id)
        ]
        for pack_id in repository.index.packs
        if pack_id not in doomed
    }
    old_indexes = sorted(repository.index_ids)
    write_index(repository, keep, supersedes=old_indexes)
    for pack_id in doomed:
        repository.store.delete(pack_key(pack_id))
        report.packs_deleted += 1
        report.bytes_freed += sizes.get(pack_id, 0)
    for mark in ready:
        repository.store.delete(mark.key)
    for index_id in old_indexes:
        repository.store.delete(f"index/{index_id}")
    repository.load_index()


def _packs_safe_to_delete(repository: Repository, candidates: set[str], used: set[bytes]) -> set[str]:
    """Drop candidates holding a used blob that has no copy outside the candidates ("resurrect")."""
    doomed = set(candidates)
    changed = True
    while changed:
        changed = False
        for pack_id in sorted(doomed):
            for blob_id in repository.index.packs.get(pack_id, []):
                if blob_id in used and all(
                    loc.pack_id in doomed for loc in repository.index.locations(blob_id)
                ):
                    doomed.discard(pack_id)
                    changed = True
                    break
    return doomed
