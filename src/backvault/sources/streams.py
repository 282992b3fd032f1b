"""Snapshots of named byte streams: what database dumps, bucket objects and table exports are saved as.

Connectors other than the filesystem have no directory to walk; they produce streams (a dump, an
object body, a page of items). ``StreamSnapshot`` stores each under a slash-separated path and builds
the directory trees, so the snapshot lists and restores like any other (``repo ls``, ``repo restore``).
``iter_files`` and ``read_file`` read them back for a connector's restore.
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node, Tree
from backvault.repo.writer import BackupWriter
from backvault.sources.base import Heartbeat, no_heartbeat

_FILE_MODE = 0o600
_DIRECTORY_MODE = 0o700
# Chunks read at once when streaming a file back in order (about 16 MiB at the default chunk size).
_ORDER_WINDOW = 16


class StreamSnapshot:
    """Build one snapshot from named streams; use as a context manager around ``commit``."""

    def __init__(self, repository: Repository, *, heartbeat: Heartbeat = no_heartbeat) -> None:
        self.repository = repository
        self.heartbeat = heartbeat
        self.bytes_read = 0
        self.errors: list[dict[str, str]] = []
        self._root: dict[str, Any] = {}  # name -> Node (file) or nested dict (directory)
        self._writer: BackupWriter | None = None
        self._started = datetime.now(UTC)

    def __enter__(self) -> StreamSnapshot:
        self._writer = self.repository.writer().__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._writer is not None
        self._writer.__exit__(*exc_info)  # type: ignore[arg-type]

    def add_stream(self, path: str, stream: BinaryIO, *, mtime: datetime | None = None) -> int:
        """Store everything read from ``stream`` as the file at ``path``; returns its size."""
        writer = self._require_writer()
        chunk_ids, size = writer.save_stream(stream)
        self._place(path, Node(name=b"", type="file", content=chunk_ids, size=size), mtime)
        self.bytes_read += size
        self.heartbeat(self.bytes_read)
        return size

    def add_bytes(self, path: str, data: bytes, *, mtime: datetime | None = None) -> int:
        """Store ``data`` as the file at ``path`` (small documents: schemas, manifests)."""
        return self.add_stream(path, io.BytesIO(data), mtime=mtime)

    def add_existing(
        self, path: str, chunk_ids: Sequence[str], size: int, *, mtime: datetime | None = None
    ) -> None:
        """Place a file whose chunks the repository already holds (an unchanged item of the parent)."""
        self._place(path, Node(name=b"", type="file", content=list(chunk_ids), size=size), mtime)

    def add_error(self, path: str, message: str) -> None:
        """Record an item that could not be saved; the snapshot will be marked partial."""
        self.errors.append({"path": path, "error": message})

    def commit(self, *, paths: Sequence[str], source: dict[str, Any], tags: Sequence[str] = ()) -> Snapshot:
        """Write the trees and the snapshot; ``source`` records what was backed up (type, names)."""
        writer = self._require_writer()
        root = self._save_directory(writer, self._root)
        snapshot = Snapshot(
            tree=root,
            paths=list(paths),
            hostname=socket.gethostname(),
            username=_username(),
            time=self._started,
            tags=list(tags),
            partial=bool(self.errors),
            errors=self.errors,
            summary={
                "bytes_read": self.bytes_read,
                "errors": len(self.errors),
                "chunks_new": writer.stats.chunks_new,
                "chunks_reused": writer.stats.chunks_reused,
                "bytes_stored": writer.stats.bytes_stored,
            },
            source=source,
        )
        return writer.commit(snapshot)

    def _require_writer(self) -> BackupWriter:
        if self._writer is None:
            raise RuntimeError("use StreamSnapshot as a context manager")
        return self._writer

    def _place(self, path: str, node: Node, mtime: datetime | None) -> None:
        parts = [part for part in path.split("/") if part]
        if not parts or any(part in (".", "..") for part in parts):
            raise ValueError(f"invalid stream path {path!r}: use a relative slash-separated path")
        directory = self._root
        for part in parts[:-1]:
            child = directory.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"stream path {path!r} goes through the file {part!r}")
            directory = child
        if parts[-1] in directory:
            raise ValueError(f"stream path {path!r} was added twice")
        node.name = os.fsencode(parts[-1])
        node.mode = _FILE_MODE
        node.mtime_ns = int((mtime or self._started).timestamp() * 1_000_000_000)
        directory[parts[-1]] = node

    def _save_directory(self, writer: BackupWriter, entries: dict[str, Any]) -> str:
        nodes: list[Node] = []
        mtime_ns = int(self._started.timestamp() * 1_000_000_000)
        for name, entry in entries.items():
            if isinstance(entry, Node):
                nodes.append(entry)
            else:
                subtree = self._save_directory(writer, entry)
                nodes.append(
                    Node(
                        name=os.fsencode(name),
                        type="dir",
                        mode=_DIRECTORY_MODE,
                        mtime_ns=mtime_ns,
                        subtree=subtree,
                    )
                )
        return writer.save_tree(Tree(nodes))


def iter_files(repository: Repository, snapshot: Snapshot) -> Iterator[tuple[str, Node]]:
    """Yield (slash-separated path, node) of every file in the snapshot, in name order."""
    yield from _walk(repository, snapshot.tree, "")


def _walk(repository: Repository, tree_id: str, prefix: str) -> Iterator[tuple[str, Node]]:
    for node in repository.load_tree(tree_id).nodes:
        path = prefix + os.fsdecode(node.name)
        if node.type == "dir" and node.subtree is not None:
            yield from _walk(repository, node.subtree, path + "/")
        elif node.type == "file":
            yield path, node


def find_file(repository: Repository, snapshot: Snapshot, path: str) -> Node:
    """Return the file node at ``path``; KeyError naming the path when the snapshot has no such file."""
    tree_id: str | None = snapshot.tree
    parts = [part for part in path.split("/") if part]
    for index, part in enumerate(parts):
        if tree_id is None:
            break
        wanted = os.fsencode(part)
        match = next((node for node in repository.load_tree(tree_id).nodes if node.name == wanted), None)
        if match is None:
            break
        if index == len(parts) - 1 and match.type == "file":
            return match
        tree_id = match.subtree
    raise KeyError(f"snapshot {snapshot.short_id} has no file {path!r}")


def iter_content(repository: Repository, node: Node) -> Iterator[bytes]:
    """Yield a file's content in order; raises DamagedDataError on a chunk that fails to verify."""
    # iter_chunks yields in pack order, not file order: read a window of chunks, then put it in order.
    for start in range(0, len(node.content), _ORDER_WINDOW):
        window = node.content[start : start + _ORDER_WINDOW]
        found: dict[str, bytes] = {}
        for chunk_id, data in repository.iter_chunks(window):
            if isinstance(data, DamagedDataError):
                raise data
            found[chunk_id] = data
        for chunk_id in window:
            yield found[chunk_id]


class ContentReader(io.RawIOBase):
    """A file's content as a readable binary stream (to pipe into psql, a Redis restore...)."""

    def __init__(self, repository: Repository, node: Node) -> None:
        super().__init__()
        self._chunks = iter_content(repository, node)
        self._buffer = b""

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the next chunks; 0 at the end."""
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._buffer))
        buffer[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def open_content(repository: Repository, node: Node) -> BinaryIO:
    """Return a buffered binary stream of a file's content."""
    return io.BufferedReader(ContentReader(repository, node), buffer_size=1 << 20)


def _username() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())
