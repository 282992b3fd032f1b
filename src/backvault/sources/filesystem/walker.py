"""The directory walk behind backup_paths: one run's state, counters and worker pools.

The walk works on raw byte names and opens everything relative to its parent
directory's file descriptor, so names that are not UTF-8 and paths longer than
PATH_MAX work, and nothing is ever followed through a symlink. Big files are read by a
small thread pool and, once the backup is big, small ones by encoder worker processes
(encoders.py); files whose metadata matches the parent snapshot are taken from it
without being opened (the "files cache"), and a directory whose entries are all
unchanged keeps its parent tree id without being re-serialised (and, with a matching
local directory cache, without the parent tree being loaded).

Each directory is walked in two phases so the walk runs ahead of the file reads. Its
open phase lists and lstats the entries, queues the files to be read and descends into
the subdirectories; it then waits in a FIFO. Its close phase builds the nodes, saves
the tree and records the directory cache entry, once its files are read or when the
window of outstanding work is full. The FIFO is in post-order (a directory is queued
after all of its subdirectories), so a directory closes after its children.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.tree import Node, Tree
from backvault.repo.writer import BackupWriter
from backvault.sources.filesystem import reading
from backvault.sources.filesystem.backup_cache import (
    DirectoryCache,
    Signature,
    digest,
    entry_signature,
    node_signature,
)
from backvault.sources.filesystem.encoders import EncoderPool
from backvault.sources.filesystem.excludes import ExcludeMatcher
from backvault.sources.filesystem.metadata import (
    FORMAT_BITS,
    NODE_TYPES,
    NameCache,
    node_type,
    read_xattrs,
)
from backvault.sources.filesystem.reading import DIRECTORY_FLAGS, FileContent, describe, open_noatime
from backvault.sources.filesystem.walk_nodes import (
    Descended,
    Entry,
    NodeMaker,
    ProgressInfo,
    same_inode,
)

__all__ = ["Descended", "ProgressInfo", "Walker"]

# Directories wait to be closed until one of these is reached (then the oldest is closed,
# waiting for its files): files still being read, directories queued, and directory fds
# held open (by trusted directories, which may have to read their files when closed).
WINDOW_FILES = 4096
WINDOW_DIRECTORIES = 8192
WINDOW_FDS = 256


@dataclass(eq=False)
class _Open:
    """A directory whose open phase is done: it waits in the FIFO to be closed."""

    path: bytes
    st: os.stat_result
    entries: list[Entry]
    old_tree_id: str | None
    old_tree: Tree | None
    old_nodes: dict[bytes, Node]
    trusted: bool
    xattrs: dict[str, bytes] | None
    results: list[_Result] = field(default_factory=list)
    waiting: list[Future[FileContent]] = field(default_factory=list)  # files not read yet
    counted: int = 0  # len(waiting) when queued, for the window
    fd: int | None = None  # held by a trusted directory until it is closed
    walked: Descended | None = None  # set when closed; None: not closed or failed (reported)


# None: skipped (reported) or not decided yet
_Result = Node | Future[FileContent] | Descended | _Open | None


class Walker(NodeMaker):
    """State of one backup run: counters, errors, the worker pools, the directory caches."""

    def __init__(
        self,
        repo: Repository,
        writer: BackupWriter,
        pool: ThreadPoolExecutor,
        threads: int,
        excludes: ExcludeMatcher,
        one_file_system: bool,
        progress: Callable[[ProgressInfo], None] | None,
        cached: DirectoryCache | None = None,
        encoders: EncoderPool | None = None,
        *,
        record_atime: bool = False,
    ) -> None:
        self.repo = repo
        self.writer = writer
        self.excludes = excludes
        self.one_file_system = one_file_system
        self.progress = progress
        self.cached: DirectoryCache = cached or {}
        self.new_cache: DirectoryCache = {}
        self.names = NameCache(record_atime=record_atime)
        self.files = reading.FileQueue(writer, pool, threads, encoders)
        self.errors: list[dict[str, str]] = []
        self.counts = dict.fromkeys(
            ("files_new", "files_changed", "files_unmodified", "dirs", "others", "bytes_read", "total_bytes"),
            0,
        )
        self.started = time.monotonic()
        self.last_progress = 0.0
        self.empty_tree: str | None = None
        self.root = b""
        self.closing: deque[_Open] = deque()  # the FIFO of directories to close, in post-order
        self.outstanding = 0  # files the queued directories wait for
        self.held_fds = 0

    # --- entries ---------------------------------------------------------------------------

    def directory(
        self,
        dir_fd: int | None,
        open_name: bytes,
        path: bytes,
        st: os.stat_result,
        old_subtree: str | None,
        root_dev: int,
        need_xattrs: bool,
    ) -> Descended | _Open | None:
        """Open a directory and everything below it, queued to be closed; None when unreadable (reported)."""
        if self.one_file_system and st.st_dev != root_dev:
            # A mount point: keep the directory itself, empty, like restic --one-file-system.
            if self.empty_tree is None:
                self.empty_tree = self.writer.save_tree(Tree())
            self.counts["dirs"] += 1
            self.new_cache[path] = (b"", self.empty_tree)
            return Descended(st, self.empty_tree, self.empty_tree == old_subtree, {} if need_xattrs else None)
        try:
            fd = open_noatime(open_name, DIRECTORY_FLAGS, dir_fd)
        except OSError as error:
            self.error(path, describe(error))
            return None
        record = None
        try:
            xattrs = read_xattrs(fd) if need_xattrs else None
            record = self.open_directory(fd, path, st, old_subtree, root_dev, xattrs)
        except OSError as error:
            self.error(path, describe(error))
        finally:
            if record is None or record.fd is None:
                os.close(fd)
        if record is not None:
            self.queue_close(record)
        return record

    def to_node(self, name: bytes, path: bytes, result: _Result, old: Node | None) -> Node | None:
        """Turn an entry's result into its node (waiting for file content if needed)."""
        if isinstance(result, Future):
            return self.finish_file(name, path, result, old)
        if isinstance(result, _Open):
            result = result.walked
        if isinstance(result, Descended):
            return self.directory_node(name, result, old)
        return result

    def root_entry(self, raw: bytes, name: bytes, old: Node | None) -> Node | None:
        """Back up one path given to the backup, as the root tree node called name."""
        # Children of "/" are "/etc", not "//etc"; error() shows the empty path as "/".
        self.root = b"" if raw == b"/" else raw
        try:
            st = os.lstat(raw)
        except OSError as error:
            self.error(raw, describe(error))
            return None
        kind = node_type(st.st_mode)
        if kind is None:
            self.error(raw, f"unsupported file type {stat.S_IFMT(st.st_mode):o}")
            return None
        result: _Result
        if kind == "dir":
            old_subtree = old.subtree if old is not None and old.type == "dir" else None
            result = self.directory(None, raw, self.root, st, old_subtree, st.st_dev, not same_inode(old, st))
            self.files.flush()
            self.close_ready(everything=True)
        else:
            result = self.leaf(None, raw, name, raw, st, kind, old)
        return self.to_node(name, raw, result, old)

    def close(self) -> None:
        """Release the fds of directories left queued (the backup failed)."""
        while self.closing:
            record = self.closing.popleft()
            if record.fd is not None:
                os.close(record.fd)
                record.fd = None

    # --- directories -----------------------------------------------------------------------

    def stat_entries(self, fd: int, path: bytes) -> list[Entry] | None:
        """List and lstat a directory's entries, leaving out excluded ones; None if unreadable."""
        try:
            names = reading.list_directory(fd)
        except OSError as error:
            self.error(path, describe(error))
            return None
        excludes = self.excludes
        full_paths = excludes.needs_paths
        root_length = len(self.root)
        entries: list[Entry] = []
        lstat, types = os.lstat, NODE_TYPES  # locals: this loop runs once per entry of the tree
        for name in names:
            child = path + b"/" + name
            if excludes and excludes.excluded(name, child, child[root_length:] if full_paths else b""):
                continue
            try:
                st = lstat(name, dir_fd=fd)
            except OSError as error:
                self.error(child, describe(error))
                continue
            kind = types.get(st.st_mode & FORMAT_BITS)
            if kind is None:
                self.error(child, f"unsupported file type {stat.S_IFMT(st.st_mode):o}")
                continue
            entries.append((name, child, st, kind))
        return entries

    def _trusted(self, path: bytes, entries: list[Entry], old_tree_id: str | None) -> bool:
        """Tell whether the directory cache vouches that every entry is as in the parent snapshot."""
        cached = self.cached.get(path)
        if cached is None or cached[1] != old_tree_id:
            return False
        names = self.names
        signatures: list[Signature] = [
            entry_signature(name, kind, st, names) for name, _, st, kind in entries
        ]
        return digest(signatures) == cached[0]

    def open_directory(
        self,
        fd: int,
        path: bytes,
        st: os.stat_result,
        old_tree_id: str | None,
        root_dev: int,
        xattrs: dict[str, bytes] | None,
    ) -> _Open | None:
        """Open phase: list the entries, queue their files, open the subdirectories; None if unreadable."""
        entries = self.stat_entries(fd, path)
        if entries is None:
            return None
        trusted = self._trusted(path, entries, old_tree_id)
        old_tree = None if trusted else self.load_old(old_tree_id)
        old_nodes = {node.name: node for node in old_tree.nodes} if old_tree is not None else {}
        record = _Open(path, st, entries, old_tree_id, old_tree, old_nodes, trusted, xattrs)
        results, waiting = record.results, record.waiting
        for name, child, child_st, kind in entries:
            old = old_nodes.get(name)
            result: _Result
            if kind == "dir":
                if trusted:
                    old_subtree, need_xattrs = self.cached.get(child, (b"", None))[1], False
                else:
                    old_subtree = old.subtree if old is not None and old.type == "dir" else None
                    need_xattrs = not same_inode(old, child_st)
                result = self.directory(fd, name, child, child_st, old_subtree, root_dev, need_xattrs)
            elif trusted:
                result = None  # files and links are only looked at if the directory must be rebuilt
            else:
                result = self.leaf(fd, name, name, child, child_st, kind, old)
                if isinstance(result, Future) and not result.done():
                    waiting.append(result)
            results.append(result)
        if trusted:
            record.fd = fd
        return record

    def queue_close(self, record: _Open) -> None:
        """Queue an opened directory, then close what is ready."""
        record.counted = len(record.waiting)
        self.outstanding += record.counted
        self.held_fds += record.fd is not None
        self.closing.append(record)
        self.close_ready()

    def close_ready(self, *, everything: bool = False) -> None:
        """Close directories from the FIFO's head while their files are read (or the window is full)."""
        closing = self.closing
        while closing:
            head = closing[0]
            waiting = head.waiting
            while waiting and waiting[-1].done():
                waiting.pop()
            if waiting and not everything and not self._window_full():
                return
            closing.popleft()
            self.outstanding -= head.counted
            self.held_fds -= head.fd is not None
            self.close_directory(head)

    def _window_full(self) -> bool:
        return (
            self.outstanding >= WINDOW_FILES
            or len(self.closing) >= WINDOW_DIRECTORIES
            or self.held_fds >= WINDOW_FDS
        )

    def close_directory(self, record: _Open) -> None:
        """Close phase: build the nodes and save the tree, setting record.walked."""
        try:
            tree_id = self._close(record)
        except OSError as error:
            self.error(record.path, describe(error))
            return
        finally:
            if record.fd is not None:
                os.close(record.fd)
                record.fd = None
        unchanged = tree_id == record.old_tree_id
        record.walked = Descended(record.st, tree_id, unchanged, record.xattrs)
        record.entries, record.results, record.old_tree, record.old_nodes = [], [], None, {}

    def _close(self, record: _Open) -> str:
        path, entries, results = record.path, record.entries, record.results
        old_tree, old_nodes, old_tree_id = record.old_tree, record.old_nodes, record.old_tree_id
        if record.trusted and old_tree_id is not None:
            if self._subdirectories_unchanged(record) and self.writer.has_chunk(old_tree_id):
                return self._keep(path, entries, old_tree_id)
            # A subdirectory changed: rebuild this level from the parent snapshot's tree.
            old_tree = self.load_old(old_tree_id)
            old_nodes = {node.name: node for node in old_tree.nodes} if old_tree is not None else {}
            for index, (name, child, st, kind) in enumerate(entries):
                if kind != "dir":
                    results[index] = self.leaf(record.fd, name, name, child, st, kind, old_nodes.get(name))
        nodes: list[Node] = []
        for (name, child, _, _), result in zip(entries, results, strict=True):
            node = self.to_node(name, child, result, old_nodes.get(name))
            if node is not None:
                nodes.append(node)
        self.counts["dirs"] += 1
        self.report(path)
        if (
            old_tree is not None
            and old_tree_id is not None
            and len(nodes) == len(old_tree.nodes)
            and all(new is old for new, old in zip(nodes, old_tree.nodes, strict=True))
        ):
            tree_id = old_tree_id
        else:
            tree_id = self.writer.save_tree(Tree(nodes))
        self.new_cache[path] = (digest([node_signature(node) for node in nodes]), tree_id)
        return tree_id

    @staticmethod
    def _subdirectories_unchanged(record: _Open) -> bool:
        for (_, _, _, kind), result in zip(record.entries, record.results, strict=True):
            if kind == "dir":
                walked = result.walked if isinstance(result, _Open) else result
                if not isinstance(walked, Descended) or not walked.unchanged:
                    return False
        return True

    def _keep(self, path: bytes, entries: list[Entry], tree_id: str) -> str:
        """Account for a directory kept whole from the parent snapshot."""
        counts = self.counts
        for _, _, st, kind in entries:
            if kind == "file":
                counts["files_unmodified"] += 1
                counts["total_bytes"] += st.st_size
            elif kind != "dir":
                counts["others"] += 1
        counts["dirs"] += 1
        self.new_cache[path] = self.cached[path]
        self.report(path)
        return tree_id

    def load_old(self, tree_id: str | None) -> Tree | None:
        """Load a directory of the parent snapshot; a damaged one only costs re-reading files."""
        if tree_id is None:
            return None
        try:
            return self.repo.load_tree(tree_id)
        except DamagedDataError:
            return None
