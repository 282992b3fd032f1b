"""Back up directory trees into the repository as one snapshot."""

from __future__ import annotations

import getpass
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from backvault.repo.claims import ClaimTable
from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node, Tree
from backvault.sources.filesystem.backup_cache import (
    DirectoryCache,
    cache_path,
    default_cache_dir,
    load_cache,
    save_cache,
)
from backvault.sources.filesystem.excludes import ExcludeMatcher
from backvault.sources.filesystem.subtrees import PlannedRoot, SubtreeWorkers, Unit, plan_units
from backvault.sources.filesystem.walker import ProgressInfo, Walker
from backvault.storage.local import LocalStore

__all__ = ["BackupError", "ProgressInfo", "backup_paths", "latest_parent", "root_names"]


class BackupError(Exception):
    """The backup cannot start (for example a given path does not exist)."""


def root_names(paths: Sequence[str]) -> list[bytes]:
    """Name each backed-up path by its basename, adding -1, -2... to repeats (like restic)."""
    seen: set[bytes] = set()
    result: list[bytes] = []
    for path in paths:
        base = os.path.basename(os.fsencode(path).rstrip(b"/")) or b"root"
        name, counter = base, 0
        while name in seen:
            counter += 1
            name = base + b"-%d" % counter
        seen.add(name)
        result.append(name)
    return result


def _absolute(paths: Sequence[str]) -> list[str]:
    """Make paths absolute (without resolving symlinks), drop repeats, check they exist."""
    result: list[str] = []
    for path in paths:
        absolute = os.path.abspath(path)
        if absolute in result:
            continue
        try:
            os.lstat(os.fsencode(absolute))
        except FileNotFoundError:
            raise BackupError(f"{path}: does not exist") from None
        except OSError as error:
            raise BackupError(f"{path}: {error.strerror}") from None
        result.append(absolute)
    if not result:
        raise BackupError("nothing to back up: no paths given")
    return result


def _parent_roots(repo: Repository, parent: Snapshot | None) -> dict[str, Node]:
    """Map each path of the parent snapshot to its root node, for the files cache."""
    if parent is None:
        return {}
    try:
        tree = repo.load_tree(parent.tree)
    except DamagedDataError:
        return {}
    roots: dict[str, Node] = {}
    for path, name in zip(parent.paths, root_names(parent.paths), strict=True):
        node = tree.find(name)
        if node is not None:
            roots[path] = node
    return roots


def _cached_roots(cached: DirectoryCache | None, paths: list[str]) -> dict[str, Node] | None:
    """Stand-in root nodes from the directory cache when it knows every path, else None.

    They carry only the subtree id, so the walk trusts the cache below each root without the
    parent's root tree being read (which would need the index); the root nodes themselves are
    rebuilt from lstat, giving the parent's tree id again when nothing changed.
    """
    if cached is None:
        return None
    roots: dict[str, Node] = {}
    for path, name in zip(paths, root_names(paths), strict=True):
        entry = cached.get(b"" if path == "/" else os.fsencode(path))
        if entry is None:
            return None
        roots[path] = Node(name, "dir", subtree=entry[1])
    return roots


def latest_parent(repo: Repository, paths: Sequence[str], hostname: str | None = None) -> Snapshot | None:
    """Return the newest snapshot of the same paths from this host, the usual parent (like restic)."""
    wanted = sorted(_absolute(paths))
    host = hostname if hostname is not None else os.uname().nodename
    for snapshot in reversed(repo.list_snapshots()):
        if (
            snapshot.hostname == host
            and sorted(snapshot.paths) == wanted
            and snapshot.source.get("type") == "filesystem"
        ):
            return snapshot
    return None


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _directory_cache(
    repo: Repository, parent: Snapshot | None, location: Path | None
) -> DirectoryCache | None:
    """Load the local directory cache written by the parent's backup, if it is still valid."""
    if parent is None or location is None or not parent.id:
        return None
    cached = load_cache(location, parent.id)
    # The cache may skip checking chunks only while the parent (which references them) exists.
    if cached is None or not repo.store.exists(f"snapshots/{parent.id}"):
        return None
    return cached


def default_processes() -> int:
    """One walking process per usable core (at most 4): the per-file work is bound by the GIL."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _start_workers(
    repo: Repository,
    walker: Walker,
    make_walker: Callable[[ThreadPoolExecutor], Walker],
    paths: list[str],
    old_roots: dict[str, Node],
    processes: int,
    threads: int,
) -> SubtreeWorkers | None:
    """Fork worker processes and hand them the directories planned a few levels down, if worth it."""
    # Workers share the repository by fork; an S3 client must not cross a fork.
    if processes < 2 or not isinstance(repo.store, LocalStore):
        return None
    roots: list[PlannedRoot] = []
    for path in paths:
        raw = os.fsencode(path)
        try:
            st = os.lstat(raw)
        except OSError:
            continue  # the walk reports it
        if stat.S_ISDIR(st.st_mode):
            old = old_roots.get(path)
            old_subtree = old.subtree if old is not None and old.type == "dir" else None
            roots.append(PlannedRoot(b"" if raw == b"/" else raw, raw, st.st_dev, old_subtree))
    if old_roots and not all(walker.vouched(root.root, root.open_path, root.old_subtree) for root in roots):
        # Something changed: every process will need the index. Read once here, the forked
        # workers share it instead of each reading it again.
        repo.index  # noqa: B018
    old_trees: dict[str, dict[bytes, str | None]] = {}

    def old_child(directory: Unit, name: bytes) -> str | None:
        # What Walker.walk will compute for the child: from the directory cache, else the old tree.
        if walker.cached:
            return walker.cached.get(directory.path + b"/" + name, (b"", None))[1]
        if directory.old_subtree is None:
            return None
        children = old_trees.get(directory.old_subtree)
        if children is None:
            tree = walker.load_old(directory.old_subtree)
            nodes = tree.nodes if tree is not None else []
            children = {node.name: node.subtree for node in nodes if node.type == "dir"}
            old_trees[directory.old_subtree] = children
        return children.get(name)

    units = plan_units(walker, roots, processes * 8, old_child)
    if len(units) < 2:
        return None
    walker.writer.claims = ClaimTable()
    workers = SubtreeWorkers(processes, make_walker, threads)
    workers.start(units)
    walker.handoff = workers
    return workers


def backup_paths(
    repo: Repository,
    paths: Sequence[str],
    *,
    tags: Sequence[str] = (),
    excludes: Sequence[str | bytes] = (),
    one_file_system: bool = False,
    parent: Snapshot | None = None,
    progress: Callable[[ProgressInfo], None] | None = None,
    threads: int = 2,
    cache_dir: str | None = None,
    use_cache: bool = True,
    with_atime: bool = False,
    processes: int | None = None,
) -> Snapshot:
    """Back up paths into repo and return the committed snapshot (partial=True if items were skipped).

    Unchanged files are taken from parent without being read; a local directory cache
    (in cache_dir, default: see backup_cache.default_cache_dir) makes that fast. threads
    read files of reading.INLINE_SIZE (512 KiB) and more: two keep up with the walking thread, and each
    holds a file (up to 16 MiB) in memory (docs/benchmarks.md). Access times are recorded only
    with with_atime (see metadata.NameCache). With a local repository, whole subtrees are
    backed up by `processes` forked workers (default: one per core, see subtrees.py).
    """
    if threads < 1:
        raise ValueError("threads must be at least 1")
    if processes is None:
        processes = default_processes()
    if processes < 1:
        raise ValueError("processes must be at least 1")
    absolute = _absolute(paths)
    started = datetime.now(UTC)
    hostname = os.uname().nodename
    matcher = ExcludeMatcher(excludes)
    location = None
    if use_cache:
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        location = cache_path(base, repo.config.id, hostname, absolute)
    cached = _directory_cache(repo, parent, location)
    old_roots = _cached_roots(cached, absolute)
    if old_roots is None:
        old_roots = _parent_roots(repo, parent)
    with repo.writer() as writer:
        if cached is not None and parent is not None:
            # The parent exists and references these trees, so they are stored: no index needed.
            writer.vouch_for([parent.tree, *(tree_id for _, tree_id in cached.values())])

        def make_walker(pool: ThreadPoolExecutor) -> Walker:
            return Walker(
                repo,
                writer,
                pool,
                threads,
                matcher,
                one_file_system,
                progress,
                cached,
                record_atime=with_atime,
            )

        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="backup")
        walker = make_walker(pool)
        workers = None
        try:
            # Forked before the walk starts its threads; only the lock refresher runs (subtrees.py).
            workers = _start_workers(repo, walker, make_walker, absolute, old_roots, processes, threads)
            walking = 1 if workers is None else 1 + processes
            nodes: list[Node] = []
            for path, name in zip(absolute, root_names(absolute), strict=True):
                node = walker.root_entry(os.fsencode(path), name, old_roots.get(path))
                if node is not None:
                    nodes.append(node)
            reports = workers.finish() if workers is not None else []
            workers = None
        finally:
            if workers is not None:
                workers.kill()
            pool.shutdown(wait=True, cancel_futures=True)
        root_tree = writer.save_tree(Tree(nodes))  # before adopting: the index is still loaded
        for report in reports:
            writer.adopt(report)
        walker.report(b"", force=True)
        stats = writer.stats
        summary = dict(walker.counts)
        summary.update(
            processes=walking,  # the backup process and the workers it forked
            errors=len(walker.errors),
            bytes_stored=stats.bytes_stored,
            chunks_new=stats.chunks_new,
            chunks_reused=stats.chunks_reused,
        )
        snapshot = Snapshot(
            tree=root_tree,
            paths=absolute,
            hostname=hostname,
            username=_username(),
            time=started,
            tags=list(tags),
            parent=parent.id if parent is not None else None,
            partial=bool(walker.errors),
            errors=walker.errors,
            summary=summary,
            source={"type": "filesystem"},
        )
        committed = writer.commit(snapshot)
    if location is not None:
        save_cache(location, committed.id, walker.new_cache)
    return committed
