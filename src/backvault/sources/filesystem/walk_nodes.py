"""Building tree nodes for the directory walk: files (cached, queued, read), links, special files.

Walker (walker.py) holds the state these methods use; this base keeps walker.py short.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from backvault.repo.tree import Node, NodeType
from backvault.repo.writer import BackupWriter
from backvault.sources.filesystem import reading
from backvault.sources.filesystem.metadata import NameCache, node_from_stat, same_metadata
from backvault.sources.filesystem.reading import FileContent, describe

_PROGRESS_INTERVAL = 0.25  # seconds between progress callbacks


@dataclass
class ProgressInfo:
    """What the backup has done so far, passed to the progress callback."""

    files: int
    dirs: int
    bytes_read: int
    errors: int
    elapsed: float
    current: str = ""  # the directory just finished


@dataclass
class Descended:
    """A directory that was walked: its lstat, new tree id and whether that id is the old one."""

    stat: os.stat_result
    subtree: str
    unchanged: bool
    xattrs: dict[str, bytes] | None  # None: not read, take them from the old node


Entry = tuple[bytes, bytes, os.stat_result, NodeType]  # name, path, lstat, type


def same_inode(old: Node | None, st: os.stat_result) -> bool:
    """Tell whether old is the same, untouched inode (so its xattrs and link target still hold)."""
    return old is not None and old.inode == st.st_ino and old.ctime_ns == st.st_ctime_ns


class NodeMaker:
    """Node building and bookkeeping shared by the walk's phases (state set up by Walker)."""

    writer: BackupWriter
    progress: Callable[[ProgressInfo], None] | None
    names: NameCache
    files: reading.FileQueue
    errors: list[dict[str, str]]
    counts: dict[str, int]
    started: float
    last_progress: float

    def error(self, path: bytes, message: str) -> None:
        """Record an item that could not be backed up."""
        self.errors.append({"path": os.fsdecode(path) or "/", "error": message})

    def report(self, path: bytes, force: bool = False) -> None:
        """Call the progress callback, at most every _PROGRESS_INTERVAL seconds unless forced."""
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last_progress < _PROGRESS_INTERVAL:
            return
        self.last_progress = now
        counts = self.counts
        done = counts["files_new"] + counts["files_changed"] + counts["files_unmodified"]
        self.progress(
            ProgressInfo(
                done,
                counts["dirs"],
                counts["bytes_read"],
                len(self.errors),
                now - self.started,
                os.fsdecode(path),
            )
        )

    # --- files -----------------------------------------------------------------------------

    def cached_file(self, old: Node | None, st: os.stat_result) -> Node | None:
        """Return a node built from the parent snapshot when the file is unchanged, else None."""
        if (
            old is None
            or old.type != "file"
            or old.inode != st.st_ino
            or old.size != st.st_size
            or old.mtime_ns != st.st_mtime_ns
            or old.ctime_ns != st.st_ctime_ns
        ):
            return None
        has_chunk = self.writer.has_chunk
        for chunk_id in old.content:
            if not has_chunk(chunk_id):
                return None
        self.counts["files_unmodified"] += 1
        self.counts["total_bytes"] += old.size
        if same_metadata(old, st, self.names):
            return old
        node = node_from_stat(old.name, "file", st, self.names)
        node.content = old.content
        node.xattrs = old.xattrs  # same ctime: attributes cannot have changed
        return node

    def finish_file(
        self, name: bytes, path: bytes, future: Future[FileContent], old: Node | None
    ) -> Node | None:
        """Wait for a queued file and build its node; report it when it could not be read."""
        if not future.done():
            self.files.flush()  # it may still be in the batch being collected for the encoders
        try:
            content = future.result()
        except OSError as error:
            self.error(path, describe(error))
            return None
        node = node_from_stat(name, "file", content.stat, self.names)
        node.content = content.chunks
        # The size of what was actually stored, so a file growing during the read restores intact.
        node.size = content.size
        node.xattrs = content.xattrs
        self.counts["files_new" if old is None else "files_changed"] += 1
        if self.files.first_use(future):
            self.counts["bytes_read"] += content.size
        self.counts["total_bytes"] += content.size
        return node

    # --- entries ---------------------------------------------------------------------------

    def leaf(
        self,
        dir_fd: int | None,
        open_name: bytes,
        name: bytes,
        path: bytes,
        st: os.stat_result,
        kind: NodeType,
        old: Node | None,
    ) -> Node | Future[FileContent] | None:
        """Back up a file (from the cache or queued for reading), symlink, FIFO, socket or device."""
        if kind == "file":
            cached = self.cached_file(old, st)
            return cached if cached is not None else self.files.submit(dir_fd, open_name, st, path)
        self.counts["others"] += 1
        # Retargeting a symlink means recreating it: a new inode and ctime.
        if old is not None and old.type == kind and same_metadata(old, st, self.names):
            return old
        node = node_from_stat(name, kind, st, self.names)
        if kind != "symlink":
            return node
        if old is not None and old.type == kind and same_inode(old, st):
            # Only atime moved (readlink itself moves it): no need to read the target again.
            node.link_target = old.link_target
            return node
        try:
            node.link_target = os.readlink(open_name, dir_fd=dir_fd)
        except OSError as error:
            self.error(path, describe(error))
            return None
        return node

    def directory_node(self, name: bytes, walked: Descended, old: Node | None) -> Node:
        """Build a directory's node, reusing the parent snapshot's when nothing changed."""
        old_dir = old if old is not None and old.type == "dir" else None
        if (
            old_dir is not None
            and old_dir.subtree == walked.subtree
            and same_metadata(old_dir, walked.stat, self.names)
        ):
            return old_dir
        node = node_from_stat(name, "dir", walked.stat, self.names)
        node.subtree = walked.subtree
        if walked.xattrs is not None:
            node.xattrs = walked.xattrs
        elif old_dir is not None:
            node.xattrs = old_dir.xattrs
        return node
