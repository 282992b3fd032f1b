"""Planning a restore: walk the snapshot's trees, create the skeleton, list chunk positions.

Directories, symlinks and special files are created during the walk; regular files
are only planned (created when their first chunk arrives or, without content, when
the walk reaches them). Paths are relative to the restore target and never start
with "/": b"" is the target itself, b"docs/a.txt" a file below it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from backvault.repo.errors import DamagedDataError
from backvault.repo.repository import Repository
from backvault.repo.tree import Node, Tree
from backvault.sources.filesystem.metadata import MODE_BITS, write_xattrs
from backvault.sources.filesystem.restore_direct import DirectFile
from backvault.sources.filesystem.restore_trees import TreeReader

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIRECTORIES = 64

# name -> what to restore below it; None means "the whole subtree".
Selection: TypeAlias = dict[bytes, "Selection | None"]
# The group an entry we create in a directory gets, or None when that cannot be told in
# advance (then ownership and mode are always set). A directory we create passes it on.
# It is trusted only once the first directory we create turned out as predicted.
NewGid: TypeAlias = int | None
_NO_ACL = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})


def display(relative: bytes) -> str:
    """Show a target-relative path the way `ls` shows snapshot paths ("/docs/a.txt")."""
    return "/" + os.fsdecode(relative)


def _join(directory: bytes, name: bytes) -> bytes:
    return directory + b"/" + name if directory else name


def valid_name(name: bytes) -> bool:
    """Tell whether a tree entry name is safe to create (no separator, no "." or "..")."""
    return bool(name) and b"/" not in name and b"\0" not in name and name not in (b".", b"..")


def _has_default_acl(fd: int) -> bool:
    """Tell whether a directory has a default ACL (which overrides the umask for new entries)."""
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except OSError as error:
        return error.errno not in _NO_ACL  # any other failure: assume one, to stay safe
    return True


def new_gid(fd: int) -> NewGid:
    """The group of entries created in the open directory fd, if it can be told in advance.

    A setgid directory hands its group down; otherwise a new entry gets our group, or the
    directory's on a filesystem mounted with grpid, so only a directory of our own group is
    certain. A default ACL makes the mode unpredictable: None then too. (Filesystems that
    give new entries another owner, such as NFS with root_squash, are caught by the check
    of the first directory created.)
    """
    found = os.fstat(fd)
    if _has_default_acl(fd):
        return None
    if found.st_mode & stat.S_ISGID or found.st_gid == os.getegid():
        return found.st_gid
    return None


@dataclass(eq=False)
class RestoredFile:
    """A regular file being restored: where it goes and how much of it is still to come."""

    directory: bytes
    node: Node
    display: str
    remaining: int = 0  # chunk positions not yet written
    new_gid: NewGid = None  # the group the file gets when created (None: unknown)
    created: bool = False
    mode_set: bool = False  # created with its final mode: no chmod needed
    data_end: int = 0  # end of the data written so far; the file is extended to its size at the end
    finished: bool = False
    failed: str | None = None
    aliases: list[tuple[bytes, bytes]] = field(default_factory=list)  # hard links: (directory, name)
    direct: DirectFile | None = None  # written around the page cache (restore_direct.py)


class Directories:
    """Descriptors of restored directories, opened relative to each other and cached (LRU)."""

    def __init__(self, target_fd: int) -> None:
        self.target_fd = target_fd
        self._cache: OrderedDict[bytes, int] = OrderedDict()

    def fd(self, relative: bytes) -> int:
        """Return a descriptor for the directory at relative (valid until the next call)."""
        if not relative:
            return self.target_fd
        fd = self._cache.get(relative)
        if fd is not None:
            self._cache.move_to_end(relative)
            return fd
        parent, _, name = relative.rpartition(b"/")
        fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd(parent))
        self._cache[relative] = fd
        if len(self._cache) > _OPEN_DIRECTORIES:
            os.close(self._cache.popitem(last=False)[1])
        return fd

    def remove(self, directory: bytes, name: bytes) -> None:
        """Remove an existing non-directory (or empty directory) in the way of a restored entry."""
        parent = self.fd(directory)
        try:
            os.unlink(name, dir_fd=parent)
        except IsADirectoryError:
            os.rmdir(name, dir_fd=parent)
        for key in [key for key in self._cache if key == _join(directory, name)]:
            os.close(self._cache.pop(key))

    def close(self) -> None:
        """Close every cached descriptor and the target's."""
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.target_fd)


class Planner:
    """Walks the trees once, creating the skeleton and collecting chunk positions."""

    def __init__(self, repo: Repository, directories: Directories, errors: list[tuple[str, str]]) -> None:
        self.repo = repo
        self.trees = TreeReader(repo)
        self.directories = directories
        self.errors = errors
        self.hard_links: dict[tuple[int, int], RestoredFile] = {}
        # In creation (pre-)order, with the owner each has now (None: unknown).
        self.created_directories: list[tuple[bytes, Node, tuple[int, int] | None]] = []
        # Receives every planned regular file; the restore writes them in batches.
        self.add_file: Callable[[RestoredFile], None] = lambda item: None
        # Asked before walking into a whole directory (tree id, path, what entries created in
        # it get): True when someone else (a worker process) walks it instead.
        self.hand_off: Callable[[str, bytes, NewGid], bool] = lambda tree_id, path, gid: False
        # Set in worker processes: receives files with hard links (directory, node, gid), which
        # only the main process can match up across subtrees.
        self.defer_linked: Callable[[bytes, Node, NewGid], None] | None = None
        self.euid = os.geteuid()
        self.as_root = self.euid == 0
        self.target_gid = new_gid(directories.target_fd)
        # None until the first directory we create shows whether new entries get the owner
        # predicted; only then are chown and chmod calls left out.
        self.owner_as_predicted: bool | None = None
        self.file_count = 0
        self.byte_count = 0
        self.others = 0
        self.linked = 0

    # --- selection -----------------------------------------------------------------------

    def _missing(self, tree_id: str, parts: list[bytes]) -> str | None:
        """Return why the path parts do not exist in the snapshot, or None when they do."""
        try:
            tree = self.trees.load(tree_id)
            for index, part in enumerate(parts):
                node = tree.find(part)
                if node is None:
                    return "not found in the snapshot"
                if index == len(parts) - 1:
                    return None
                if node.type != "dir" or node.subtree is None:
                    return "not found in the snapshot (a parent is not a directory)"
                tree = self.trees.load(node.subtree)
        except DamagedDataError as error:
            return str(error)
        return None

    def selection(self, tree_id: str, includes: Sequence[str]) -> Selection | None:
        """Turn include paths into a Selection (None: restore everything); report missing ones."""
        if not includes:
            return None
        selection: Selection = {}
        for include in includes:
            parts = [part for part in os.fsencode(include).split(b"/") if part and part != b"."]
            if not parts:
                return None
            problem = "'..' is not allowed" if b".." in parts else self._missing(tree_id, parts)
            if problem is not None:
                self.errors.append((include, problem))
                continue
            level: Selection | None = selection
            for part in parts[:-1]:
                assert level is not None
                if part not in level:
                    level[part] = {}
                level = level[part]
                if level is None:
                    break  # an include above this one already takes the whole subtree
            else:
                assert level is not None
                level[parts[-1]] = None
        return selection

    # --- walking -------------------------------------------------------------------------

    def plan(self, tree_id: str, includes: Sequence[str]) -> None:
        """Plan the restore of the snapshot tree tree_id (or only includes)."""
        self.walk(tree_id, b"", self.selection(tree_id, includes), self.target_gid)

    def walk(self, tree_id: str, directory: bytes, selection: Selection | None, gid: NewGid) -> None:
        """Plan one directory level and recurse (gid: what entries created in directory get)."""
        try:
            tree: Tree = self.trees.load(tree_id)
        except DamagedDataError as error:
            self.errors.append((display(directory), f"cannot read the directory listing: {error}"))
            return
        seen: set[bytes] = set()
        for node in tree.nodes:
            if not valid_name(node.name) or node.name in seen:
                shown = display(directory).rstrip("/") + "/" + repr(node.name)
                self.errors.append((shown, "damaged tree: invalid or repeated name"))
                continue
            seen.add(node.name)
            below: Selection | None = None
            if selection is not None:
                if node.name not in selection:
                    continue
                below = selection[node.name]
            path = _join(directory, node.name)
            try:
                self.entry(node, directory, path, below, gid)
            except OSError as error:
                self.errors.append((display(path), error.strerror or str(error)))

    def entry(self, node: Node, directory: bytes, path: bytes, below: Selection | None, gid: NewGid) -> None:
        """Create or plan one node (gid: what entries created in directory get)."""
        if node.type == "dir":
            inner = self._make_directory(directory, node, path, gid)
            if node.subtree is not None and not (below is None and self.hand_off(node.subtree, path, inner)):
                self.walk(node.subtree, path, below, inner)
            return
        if node.type == "file":
            self._plan_file(node, directory, path, gid)
            return
        parent = self.directories.fd(directory)
        self._create(node, directory, parent)
        if self.as_root and (node.uid, node.gid) != self._new_owner(gid):
            os.chown(node.name, node.uid, node.gid, dir_fd=parent, follow_symlinks=False)
        if node.type != "symlink":  # Linux cannot chmod a symlink; its mode is always 0777
            os.chmod(node.name, stat.S_IMODE(node.mode), dir_fd=parent)
        os.utime(node.name, ns=(node.atime_ns, node.mtime_ns), dir_fd=parent, follow_symlinks=False)
        self.others += 1

    def _create(self, node: Node, directory: bytes, parent: int) -> None:
        """Create a symlink, FIFO, socket or device node, replacing what is in the way."""
        for attempt in range(2):
            try:
                if node.type == "symlink":
                    os.symlink(node.link_target or b"", node.name, dir_fd=parent)
                elif node.type == "fifo":
                    os.mkfifo(node.name, 0o600, dir_fd=parent)
                else:
                    os.mknod(node.name, MODE_BITS[node.type] | 0o600, node.rdev, dir_fd=parent)
                return
            except FileExistsError:
                if attempt:
                    raise
                self.directories.remove(directory, node.name)

    def _make_directory(self, directory: bytes, node: Node, path: bytes, gid: NewGid) -> NewGid:
        """Create a directory (owner-writable until its metadata is applied) or reuse one.

        Return what entries created in it get: a directory we create passes on what it got
        from its parent (the setgid bit and a default ACL are inherited); one we reuse is asked.
        """
        name = node.name
        parent = self.directories.fd(directory)
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            found = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(found.st_mode):
                self.created_directories.append((path, node, (found.st_uid, found.st_gid)))
                return new_gid(self.directories.fd(path))
            self.directories.remove(directory, name)
            os.mkdir(name, 0o700, dir_fd=parent)
        if self.owner_as_predicted is None:
            found = os.fstat(self.directories.fd(path))
            self.owner_as_predicted = gid is not None and (found.st_uid, found.st_gid) == (self.euid, gid)
        self.created_directories.append((path, node, self._new_owner(gid)))
        return gid

    def _new_owner(self, gid: NewGid) -> tuple[int, int] | None:
        """The owner of an entry we create where entries get gid (None: not known)."""
        if gid is None or not self.owner_as_predicted:
            return None
        return self.euid, gid

    def _plan_file(self, node: Node, directory: bytes, path: bytes, gid: NewGid) -> None:
        """Note where each chunk of a file goes; hard links to a planned inode become aliases."""
        key = (node.device_id, node.inode)
        if node.links > 1:
            if self.defer_linked is not None:
                self.defer_linked(directory, node, gid)
                return
            primary = self.hard_links.get(key)
            if primary is not None:
                if primary.finished:
                    self.link(primary, directory, node.name)
                else:
                    primary.aliases.append((directory, node.name))
                return
        item = RestoredFile(directory, node, display(path), new_gid=gid if self.owner_as_predicted else None)
        if node.links > 1:
            self.hard_links[key] = item
        self.file_count += 1
        self.byte_count += node.size
        index = self.repo.index
        for chunk_id in node.content:
            if bytes.fromhex(chunk_id) not in index:
                item.failed = f"damaged chunk {chunk_id}: chunk is not in the index"
                item.finished = True
                self.errors.append((item.display, item.failed))
                return
        self.add_file(item)

    def plan_linked(self, directory: bytes, node: Node, gid: NewGid) -> None:
        """Plan a file with hard links that a worker process met (see defer_linked)."""
        self._plan_file(node, directory, _join(directory, node.name), gid)

    def link_all(self) -> None:
        """Create the hard links noted while planning, once every primary file is written."""
        for primary in self.hard_links.values():
            primary.finished = True
            aliases, primary.aliases = primary.aliases, []
            for directory, name in aliases:
                self.link(primary, directory, name)

    def link(self, primary: RestoredFile, directory: bytes, name: bytes) -> None:
        """Hard-link name in directory to an already restored file (or report why it cannot be)."""
        shown = display(_join(directory, name))
        if primary.failed is not None:
            self.errors.append((shown, primary.failed))
            return
        # dup: fetching the second descriptor may evict the first from the cache.
        source = os.dup(self.directories.fd(primary.directory))
        try:
            for attempt in range(2):
                try:
                    target = self.directories.fd(directory)
                    os.link(
                        primary.node.name, name, src_dir_fd=source, dst_dir_fd=target, follow_symlinks=False
                    )
                    break
                except FileExistsError:
                    if attempt:
                        raise
                    self.directories.remove(directory, name)
            self.linked += 1
        except OSError as error:
            self.errors.append((shown, f"cannot create hard link: {error.strerror}"))
        finally:
            os.close(source)

    def apply_directory_metadata(self) -> int:
        """Set owner, mode, xattrs and times of directories, deepest first; return how many."""
        count = 0
        for path, node, owner in reversed(self.created_directories):
            directory, _, name = path.rpartition(b"/")
            try:
                if node.xattrs:
                    for problem in write_xattrs(self.directories.fd(path), node.xattrs):
                        self.errors.append((display(path), problem))
                parent = self.directories.fd(directory)
                if self.as_root and owner != (node.uid, node.gid):
                    os.chown(name, node.uid, node.gid, dir_fd=parent, follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(node.mode), dir_fd=parent)
                os.utime(name, ns=(node.atime_ns, node.mtime_ns), dir_fd=parent, follow_symlinks=False)
                count += 1
            except OSError as error:
                self.errors.append((display(path), f"cannot restore metadata: {error.strerror}"))
        return count
