"""Copying a snapshot from one repository into another (copy jobs, the cold tier).

Chunk and tree ids are keyed per repository, so ids cannot be carried over: every chunk the
snapshot references is read (and verified) from the source, its id under the destination's key is
computed, and only chunks the destination lacks are encoded under the destination's keys and
uploaded. Trees are rewritten bottom-up with the new chunk and subtree ids. All writes go through
the destination's BackupWriter, so the order is packs -> index -> snapshot and a crash leaves only
unreferenced packs that the next copy reuses (or prune removes).

Both repositories stay locked for the whole copy: the source's shared lock keeps prune from
sweeping packs we still have to read, the writer's lock does the same for packs we dedup against.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node, Tree
from backvault.repo.writer import BackupWriter

HEARTBEAT_SECONDS = 1.0
# Chunk ids of several small files are read together, so one pack region serves many files.
BATCH_CHUNKS = 256

Heartbeat = Callable[[int], None]


def _no_heartbeat(_processed: int) -> None:
    """Default heartbeat: nobody is watching."""


@dataclass
class TransferStats:
    """What one copy did: bytes read from the source, and what the destination had to store."""

    bytes_read: int = 0
    chunks_read: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    packs_written: int = 0
    trees_copied: int = 0
    problems: list[str] = field(default_factory=list)


class _Copier:
    """Maps source ids to destination ids while writing missing blobs through one writer."""

    def __init__(self, source: Repository, writer: BackupWriter, heartbeat: Heartbeat) -> None:
        self.source = source
        self.writer = writer
        self.codec = writer.repository.codec
        self.heartbeat = heartbeat
        self.stats = TransferStats()
        self.chunk_map: dict[bytes, str] = {}  # source chunk id -> destination chunk id (hex)
        self.tree_map: dict[str, str] = {}  # source tree id -> destination tree id
        self._last_beat = time.monotonic()

    def beat(self, *, force: bool = False) -> None:
        """Report progress at most once per HEARTBEAT_SECONDS (it may raise to stop the copy)."""
        now = time.monotonic()
        if force or now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            self.heartbeat(self.stats.bytes_read)

    def copy_tree(self, tree_id: str) -> str:
        """Copy one tree (and everything below it); return its destination id."""
        done = self.tree_map.get(tree_id)
        if done is not None:
            return done
        tree = self.source.load_tree(tree_id)
        self.map_chunks(chunk for node in tree.nodes for chunk in node.content)
        nodes: list[Node] = []
        for node in tree.nodes:
            nodes.append(
                replace(
                    node,
                    content=[self.chunk_map[bytes.fromhex(chunk)] for chunk in node.content],
                    subtree=None if node.subtree is None else self.copy_tree(node.subtree),
                    xattrs=dict(node.xattrs),
                )
            )
        new_id = self.writer.save_tree(Tree(nodes))
        self.tree_map[tree_id] = new_id
        self.stats.trees_copied += 1
        return new_id

    def map_chunks(self, chunk_ids: Iterable[str]) -> None:
        """Read every chunk not mapped yet, compute its destination id and store it if missing."""
        wanted = [chunk for chunk in dict.fromkeys(chunk_ids) if bytes.fromhex(chunk) not in self.chunk_map]
        for start in range(0, len(wanted), BATCH_CHUNKS):
            futures: list[Future[None]] = []
            try:
                for chunk_id, data in self.source.iter_chunks(wanted[start : start + BATCH_CHUNKS]):
                    if isinstance(data, DamagedDataError):
                        # a copy must never look complete while it misses data
                        raise data
                    self.chunk_map[bytes.fromhex(chunk_id)] = self._store(data, futures)
                    self.stats.bytes_read += len(data)
                    self.stats.chunks_read += 1
                    self.beat()
            finally:
                for future in futures:
                    future.result()

    def _store(self, data: bytes, futures: list[Future[None]]) -> str:
        # Chunk boundaries are kept as they are (save_stream would re-chunk and could cut differently).
        return self.writer.save_chunk(data, futures)


def copy_snapshot(
    source: Repository,
    snapshot: Snapshot,
    destination: Repository,
    *,
    tags: list[str] | None = None,
    heartbeat: Heartbeat = _no_heartbeat,
    threads: int = 2,
    stats: TransferStats | None = None,
) -> Snapshot:
    """Copy ``snapshot`` from ``source`` into ``destination``; returns the destination's snapshot.

    ``tags`` replaces the snapshot's tags (None keeps them). ``stats``, if given, is filled in.
    """
    if source.config.id == destination.config.id:
        raise ValueError("source and destination are the same repository; nothing to copy")
    source_lock = source.lock_and_refresh()
    try:
        with destination.writer(threads=threads) as writer:
            copier = _Copier(source, writer, heartbeat)
            copier.beat(force=True)  # a job stopped before the copy starts sends nothing
            root = copier.copy_tree(snapshot.tree)
            copier.beat(force=True)  # the last chance to stop before the snapshot makes the copy real
            copied = Snapshot(
                tree=root,
                paths=list(snapshot.paths),
                hostname=snapshot.hostname,
                username=snapshot.username,
                time=snapshot.time,
                tags=list(snapshot.tags if tags is None else tags),
                parent=None,  # the parent is a snapshot of the source repository
                partial=snapshot.partial,
                errors=[dict(error) for error in snapshot.errors],
                summary=dict(snapshot.summary),
                source={
                    **snapshot.source,
                    "copied_from": {"repository": source.config.id, "snapshot": snapshot.id},
                },
            )
            saved = writer.commit(copied)
            written = writer.stats
            copier.stats.chunks_new = written.chunks_new
            copier.stats.chunks_reused = written.chunks_reused
            copier.stats.bytes_new = written.bytes_new
            copier.stats.bytes_stored = written.bytes_stored
            copier.stats.packs_written = written.packs_written
    finally:
        source_lock.release()
    if stats is not None:
        for name in TransferStats.__dataclass_fields__:
            setattr(stats, name, getattr(copier.stats, name))
    return saved


def find_snapshots_tagged(repository: Repository, tag: str) -> list[Snapshot]:
    """Snapshots carrying ``tag``, oldest first (copies mark themselves to be found after a crash)."""
    return [snapshot for snapshot in repository.list_snapshots() if tag in snapshot.tags]
