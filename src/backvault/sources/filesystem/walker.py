"""The directory walk behind backup_paths: one run's state, counters and worker pool.

The walk works on raw byte names and opens everything relative to its parent
directory's file descriptor, so names that are not UTF-8 and paths longer than
PATH_MAX work, and nothing is ever followed through a symlink. File contents are
read by a small thread pool; files whose metadata matches the parent snapshot are
taken from it without being opened (the "files cache"), and a directory whose
entries are all unchanged keeps its parent tree id without being re-serialised
(and, with a matching local directory cache, without the parent tree being loaded).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.tree import Node, NodeType, Tree
from backvault.repo.writer import BackupWriter
from backvault.sources.filesystem import reading
from backvault.sources.filesystem.backup_cache import (
    DirectoryCache,
    Signature,
    digest,
    entry_signature,
    node_signature,
)
from backvault.sources.filesystem.excludes import ExcludeMatcher
from backvault.sources.filesystem.metadata import (
    FORMAT_BITS,
    NODE_TYPES,
    NameCache,
    node_from_stat,
    node_type,
    read_xattrs,
    same_metadata,
)
from backvault.sources.filesystem.reading import DIRECTORY_FLAGS, FileRead, ReadDone, describe, open_noatime

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


@dataclass
class SubtreeResult:
    """What a worker process reports for one directory it backed up whole (see subtrees.py)."""

    subtree: str | None  # None: the directory could not be read (the reason is in errors)
    xattrs: dict[str, bytes] | None
    counts: dict[str, int]
    errors: list[dict[str, str]]
    new_cache: DirectoryCache


class PendingSubtree(Protocol):
    """A subtree being backed up elsewhere."""

    def result(self, timeout: float | None = None) -> SubtreeResult:
        """Wait for it (raises TimeoutError after timeout seconds)."""


class Handoff(Protocol):
    """Directories that other processes back up while this walker does the rest."""

    def take(self, root: bytes, path: bytes, old_subtree: str | None) -> PendingSubtree | None:
        """The pending result for path below root if handed off with this parent subtree, else None."""


_Entry = tuple[bytes, bytes, os.stat_result, NodeType]  # name, path, lstat, type
_Result = Node | FileRead | Descended | None  # None: skipped (reported) or not decided yet


def _same_inode(old: Node | None, st: os.stat_result) -> bool:
    """Tell whether old is the same, untouched inode (so its xattrs and link target still hold)."""
    return old is not None and old.inode == st.st_ino and old.ctime_ns == st.st_ctime_ns


class Walker:
    """State of one backup run: counters, errors, the worker pool, the directory caches."""

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
        self.files = reading.FileQueue(writer, pool, threads)
        self.errors: list[dict[str, str]] = []
        self.counts = dict.fromkeys(
            ("files_new", "files_changed", "files_unmodified", "dirs", "others", "bytes_read", "total_bytes"),
            0,
        )
        self.started = time.monotonic()
        self.last_progress = 0.0
        self.empty_tree: str | None = None
        self.root = b""
        self.handoff: Handoff | None = None

    # --- bookkeeping -----------------------------------------------------------------------

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

    def finish_file(self, name: bytes, path: bytes, future: FileRead, old: Node | None) -> Node | None:
        """Wait for a queued file and build its node; report it when it could not be read."""
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
    ) -> Node | FileRead | None:
        """Back up a file (from the cache or queued for reading), symlink, FIFO, socket or device."""
        if kind == "file":
            cached = self.cached_file(old, st)
            return cached if cached is not None else self.files.submit(dir_fd, open_name, st)
        self.counts["others"] += 1
        # Retargeting a symlink means recreating it: a new inode and ctime.
        if old is not None and old.type == kind and same_metadata(old, st, self.names):
            return old
        node = node_from_stat(name, kind, st, self.names)
        if kind != "symlink":
            return node
        if old is not None and old.type == kind and _same_inode(old, st):
            # Only atime moved (readlink itself moves it): no need to read the target again.
            node.link_target = old.link_target
            return node
        try:
            node.link_target = os.readlink(open_name, dir_fd=dir_fd)
        except OSError as error:
            self.error(path, describe(error))
            return None
        return node

    def directory(
        self,
        dir_fd: int | None,
        open_name: bytes,
        path: bytes,
        st: os.stat_result,
        old_subtree: str | None,
        root_dev: int,
        need_xattrs: bool,
    ) -> Descended | None:
        """Back up a directory and everything below it; None when it cannot be read (reported)."""
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
        try:
            xattrs = read_xattrs(fd) if need_xattrs else None
            tree_id = self.walk(fd, path, old_subtree, root_dev)
        except OSError as error:
            self.error(path, describe(error))
            return None
        finally:
            os.close(fd)
        if tree_id is None:
            return None
        return Descended(st, tree_id, tree_id == old_subtree, xattrs)

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

    def to_node(self, name: bytes, path: bytes, result: _Result, old: Node | None) -> Node | None:
        """Turn an entry's result into its node (waiting for file content if needed)."""
        if isinstance(result, (Future, ReadDone)):
            return self.finish_file(name, path, result, old)
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
            result = self.directory(
                None, raw, self.root, st, old_subtree, st.st_dev, not _same_inode(old, st)
            )
        else:
            result = self.leaf(None, raw, name, raw, st, kind, old)
        return self.to_node(name, raw, result, old)

    # --- subtrees walked in other processes ---------------------------------------------------

    def excluded(self, name: bytes, child: bytes, root: bytes) -> bool:
        """Tell whether an entry below the backed-up path root is excluded (as stat_entries would)."""
        relative = child[len(root) :] if self.excludes.needs_paths else b""
        return bool(self.excludes) and self.excludes.excluded(name, child, relative)

    def _handed_off(
        self, path: bytes, st: os.stat_result, old_subtree: str | None, root_dev: int
    ) -> PendingSubtree | None:
        if self.handoff is None or (self.one_file_system and st.st_dev != root_dev):
            return None
        return self.handoff.take(self.root, path, old_subtree)

    def _collect(
        self, pending: PendingSubtree, st: os.stat_result, old_subtree: str | None
    ) -> Descended | None:
        """Wait for a subtree walked elsewhere and take over its counts, errors and cache entries."""
        while True:
            try:
                result = pending.result(timeout=_PROGRESS_INTERVAL)
                break
            except TimeoutError:
                self.report(self.root)  # counts move as units finish; the clock moves meanwhile
        for key, value in result.counts.items():
            self.counts[key] += value
        self.errors.extend(result.errors)
        self.new_cache.update(result.new_cache)
        if result.subtree is None:
            return None
        return Descended(st, result.subtree, result.subtree == old_subtree, result.xattrs)

    def back_up_subtree(
        self, root: bytes, path: bytes, old_subtree: str | None, root_dev: int
    ) -> SubtreeResult:
        """Back up one handed-off directory (in a worker process) and hand over the bookkeeping."""
        self.root = root
        walked = None
        try:
            st = os.lstat(path)
        except OSError as error:
            self.error(path, describe(error))
        else:
            if stat.S_ISDIR(st.st_mode):
                # Attributes are always read: the walker that handed it off may not have the old ones.
                walked = self.directory(None, path, path, st, old_subtree, root_dev, True)
            else:
                self.error(path, "changed type during backup")
        result = SubtreeResult(
            walked.subtree if walked is not None else None,
            walked.xattrs if walked is not None else None,
            self.counts,
            self.errors,
            self.new_cache,
        )
        self.counts = dict.fromkeys(self.counts, 0)
        self.errors, self.new_cache = [], {}
        return result

    # --- directories -----------------------------------------------------------------------

    def stat_entries(self, fd: int, path: bytes) -> list[_Entry] | None:
        """List and lstat a directory's entries, leaving out excluded ones; None if unreadable."""
        try:
            names = reading.list_directory(fd)
        except OSError as error:
            self.error(path, describe(error))
            return None
        excludes = self.excludes if self.excludes else None  # asked once, not once per entry
        full_paths = self.excludes.needs_paths
        root_length = len(self.root)
        entries: list[_Entry] = []
        lstat, types = os.lstat, NODE_TYPES  # locals: this loop runs once per entry of the tree
        prefix = path + b"/"
        for name in names:
            child = prefix + name
            if excludes is not None and excludes.excluded(
                name, child, child[root_length:] if full_paths else b""
            ):
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

    def vouched(self, root: bytes, open_path: bytes, old_tree_id: str | None) -> bool:
        """Tell, before walking it, whether the directory cache vouches for a backed-up directory."""
        if old_tree_id is None or root not in self.cached:
            return False
        self.root, reported = root, len(self.errors)
        try:
            fd = open_noatime(open_path, DIRECTORY_FLAGS, None)
        except OSError:
            return False
        try:
            entries = self.stat_entries(fd, root)
        finally:
            os.close(fd)
        del self.errors[reported:]  # the walk reports them
        return entries is not None and self._trusted(root, entries, old_tree_id)

    def _trusted(self, path: bytes, entries: list[_Entry], old_tree_id: str | None) -> bool:
        """Tell whether the directory cache vouches that every entry is as in the parent snapshot."""
        cached = self.cached.get(path)
        if cached is None or cached[1] != old_tree_id:
            return False
        names = self.names
        signatures: list[Signature] = [
            entry_signature(name, kind, st, names) for name, _, st, kind in entries
        ]
        return digest(signatures) == cached[0]

    def walk(self, fd: int, path: bytes, old_tree_id: str | None, root_dev: int) -> str | None:
        """Back up the entries of the open directory fd; return its tree id, or None if unreadable."""
        entries = self.stat_entries(fd, path)
        if entries is None:
            return None
        trusted = self._trusted(path, entries, old_tree_id)
        old_tree = None if trusted else self.load_old(old_tree_id)
        old_nodes = {node.name: node for node in old_tree.nodes} if old_tree is not None else {}
        results: list[_Result] = []
        handed: list[tuple[int, PendingSubtree, os.stat_result, str | None]] = []
        for name, child, st, kind in entries:
            old = old_nodes.get(name)
            if kind == "dir":
                if trusted:
                    old_subtree, need_xattrs = self.cached.get(child, (b"", None))[1], False
                else:
                    old_subtree = old.subtree if old is not None and old.type == "dir" else None
                    need_xattrs = not _same_inode(old, st)
                future = self._handed_off(child, st, old_subtree, root_dev)
                if future is not None:
                    handed.append((len(results), future, st, old_subtree))
                    results.append(None)
                else:
                    results.append(self.directory(fd, name, child, st, old_subtree, root_dev, need_xattrs))
            else:
                # In a trusted directory, files and links are only looked at if it must be rebuilt.
                results.append(None if trusted else self.leaf(fd, name, name, child, st, kind, old))
        # Subtrees walked by worker processes meanwhile: collected after this level's own work.
        for index, future, st, old_subtree in handed:
            results[index] = self._collect(future, st, old_subtree)
        subdirectories_unchanged = all(
            isinstance(result, Descended) and result.unchanged
            for result, entry in zip(results, entries, strict=True)
            if entry[3] == "dir"
        )
        if trusted and old_tree_id is not None:
            if subdirectories_unchanged and self.writer.has_chunk(old_tree_id):
                return self._keep(path, entries, old_tree_id)
            # A subdirectory changed: rebuild this level from the parent snapshot's tree.
            old_tree = self.load_old(old_tree_id)
            old_nodes = {node.name: node for node in old_tree.nodes} if old_tree is not None else {}
            for index, (name, child, st, kind) in enumerate(entries):
                if kind != "dir":
                    results[index] = self.leaf(fd, name, name, child, st, kind, old_nodes.get(name))
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

    def _keep(self, path: bytes, entries: list[_Entry], tree_id: str) -> str:
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
