"""Turning lstat results into tree nodes, and the small caches that keeps cheap."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

from backvault.repo.tree import Node, NodeType

# Errors that mean "this filesystem or object has no extended attributes for us".
_XATTR_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM, errno.EACCES})

_TYPES: dict[int, NodeType] = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

MODE_BITS: dict[NodeType, int] = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}


def node_type(mode: int) -> NodeType | None:
    """Return the node type for an st_mode, or None for something unknown (e.g. a door)."""
    return _TYPES.get(mode & FORMAT_BITS)


FORMAT_BITS = 0o170000  # stat.S_IFMT's mask
NODE_TYPES: dict[int, NodeType] = _TYPES  # st_mode & FORMAT_BITS -> type, for loops that inline node_type


class NameCache:
    """How one backup turns lstat results into node fields: names looked up once, atime or not.

    uid -> user name and gid -> group name are looked up once each. Access times are
    recorded only with record_atime (like restic's --with-atime): reading a file or listing
    a directory moves them, so recording them rewrites every tree after a `find` or a
    `grep -r`. Without it a node's atime is its mtime, and restore sets both to that.
    """

    def __init__(self, *, record_atime: bool = False) -> None:
        self.record_atime = record_atime
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def atime_ns(self, st: os.stat_result) -> int:
        """The access time a node gets from st."""
        return st.st_atime_ns if self.record_atime else st.st_mtime_ns

    def user(self, uid: int) -> str:
        """Return the local name of uid, or "" when it has none."""
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = ""
            self._users[uid] = name
        return name

    def group(self, gid: int) -> str:
        """Return the local name of gid, or "" when it has none."""
        name = self._groups.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = ""
            self._groups[gid] = name
        return name


def node_from_stat(name: bytes, kind: NodeType, st: os.stat_result, names: NameCache) -> Node:
    """Build the node for an entry from its lstat result (content and subtree left empty)."""
    # Positional, in Node's field order: one call per entry of the tree, keywords cost more.
    uid, gid, mtime_ns = st.st_uid, st.st_gid, st.st_mtime_ns
    return Node(
        name,
        kind,
        st.st_mode & 0o7777,  # stat.S_IMODE
        uid,
        gid,
        names.user(uid),
        names.group(gid),
        mtime_ns,
        st.st_atime_ns if names.record_atime else mtime_ns,  # see NameCache.atime_ns
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        # A directory's st_size is an allocation detail that changes with every entry.
        st.st_size if kind == "file" else 0,
        rdev=st.st_rdev if kind in ("chardev", "blockdev") else 0,
    )


def same_metadata(old: Node, st: os.stat_result, names: NameCache) -> bool:
    """Tell whether old describes exactly this lstat result (ignoring content and subtree).

    Any change to mode, owner, link count, size or extended attributes moves ctime,
    so when ctime and the inode match, the stored xattrs are still current too. A
    symlink's atime is not compared: the backup's own readlink moves it, and the
    value recorded before that first read is the meaningful one.
    """
    return (
        old.ctime_ns == st.st_ctime_ns
        and old.mtime_ns == st.st_mtime_ns
        and old.inode == st.st_ino
        and (old.atime_ns == names.atime_ns(st) or old.type == "symlink")
        and old.device_id == st.st_dev
        and old.mode == stat.S_IMODE(st.st_mode)
        and old.uid == st.st_uid
        and old.gid == st.st_gid
        and old.links == st.st_nlink
        and old.user == names.user(st.st_uid)
        and old.group == names.group(st.st_gid)
    )


def read_xattrs(target: int | bytes, follow_symlinks: bool = True) -> dict[str, bytes]:
    """Return the extended attributes of an fd or path, best effort ({} when unsupported)."""
    try:
        keys = os.listxattr(target, follow_symlinks=follow_symlinks)
    except OSError as error:
        if error.errno in _XATTR_UNSUPPORTED or error.errno == errno.ENAMETOOLONG:
            return {}
        raise
    result: dict[str, bytes] = {}
    for key in keys:
        try:
            result[key] = os.getxattr(target, key, follow_symlinks=follow_symlinks)
        except OSError as error:
            if error.errno not in _XATTR_UNSUPPORTED:
                raise
    return result


def write_xattrs(target: int | bytes, xattrs: dict[str, bytes], follow_symlinks: bool = True) -> list[str]:
    """Set extended attributes best effort; return messages for the ones that failed unexpectedly."""
    problems: list[str] = []
    for key, value in xattrs.items():
        try:
            os.setxattr(target, key, value, follow_symlinks=follow_symlinks)
        except OSError as error:
            # Unsupported filesystems and privileged namespaces are expected; say nothing.
            if error.errno not in _XATTR_UNSUPPORTED:
                problems.append(f"xattr {key}: {error.strerror}")
    return problems
