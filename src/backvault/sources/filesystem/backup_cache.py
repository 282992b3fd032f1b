"""A local cache that lets unchanged directories keep their tree without loading the parent's.

Loading and parsing one parent tree per directory costs far more than the walk
itself. After each backup, this cache records for every directory a signature of
its entries (names and every stat-derived node field, see entry_signature) and the
resulting tree id. On the next backup with that snapshot as parent, a directory
whose freshly statted entries give the same signature, and whose subdirectories are
unchanged too, keeps its tree id: its nodes would be identical. Content, xattrs and
link targets cannot change without moving ctime or the inode, which the signature
covers; the chunks are still stored because the parent snapshot still exists and
references them.

The cache is only an accelerator: a missing, stale or damaged cache file just means
the parent's trees are loaded as usual. It lives in $BACKVAULT_CACHE_DIR, else
$XDG_CACHE_HOME/backvault, else ~/.cache/backvault.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import stat
import tempfile
from pathlib import Path

from backvault.repo.tree import Node, NodeType
from backvault.sources.filesystem.metadata import NameCache

_MAGIC = b"backvault directory cache 2\n"  # 2: signatures hold the atime a node records
_DIGEST_SIZE = 32

# One directory: (signature of its entries, tree id).
DirectoryCache = dict[bytes, tuple[bytes, str]]
Signature = tuple[bytes, str, int, int, int, str, str, int, int, int, int, int, int, int, int]


def entry_signature(name: bytes, kind: NodeType, st: os.stat_result, names: NameCache) -> Signature:
    """The node fields an entry would get from this lstat result, as one comparable tuple."""
    return (
        name,
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        names.user(st.st_uid),
        names.group(st.st_gid),
        st.st_mtime_ns,
        0 if kind == "symlink" else names.atime_ns(st),  # readlink moves it; the node keeps the old value
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_size if kind == "file" else 0,
        st.st_rdev if kind in ("chardev", "blockdev") else 0,
    )


def node_signature(node: Node) -> Signature:
    """The same tuple as entry_signature, computed from a stored node."""
    return (
        node.name,
        node.type,
        node.mode,
        node.uid,
        node.gid,
        node.user,
        node.group,
        node.mtime_ns,
        0 if node.type == "symlink" else node.atime_ns,
        node.ctime_ns,
        node.inode,
        node.device_id,
        node.links,
        node.size,
        node.rdev,
    )


def digest(signatures: list[Signature]) -> bytes:
    """Hash a directory's entry signatures (in name order) into 16 bytes."""
    # Format 2 has no back-references, so equal values give equal bytes whatever their identity.
    return hashlib.blake2b(marshal.dumps(signatures, 2), digest_size=16).digest()


def default_cache_dir() -> Path:
    """Return where backvault keeps local caches."""
    configured = os.environ.get("BACKVAULT_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "backvault"


def cache_path(cache_dir: Path, repository_id: str, hostname: str, paths: list[str]) -> Path:
    """Return the cache file for backups of paths from hostname into one repository."""
    key = hashlib.blake2b(
        "\0".join([hostname, *sorted(paths)]).encode("utf-8", "surrogateescape"), digest_size=16
    )
    return cache_dir / "filesystem" / repository_id / key.hexdigest()


def load_cache(path: Path, snapshot_id: str) -> DirectoryCache | None:
    """Return the directories cached for snapshot_id, or None when there is no usable cache."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    body = data[len(_MAGIC) + _DIGEST_SIZE :]
    checksum = data[len(_MAGIC) : len(_MAGIC) + _DIGEST_SIZE]
    if not data.startswith(_MAGIC) or hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest() != checksum:
        return None
    try:
        stored_snapshot, directories = marshal.loads(body)
    except (ValueError, EOFError, TypeError):
        return None
    if stored_snapshot != snapshot_id or not isinstance(directories, dict):
        return None
    return directories


def save_cache(path: Path, snapshot_id: str, directories: DirectoryCache) -> None:
    """Write the cache for snapshot_id atomically; failing to write it is not an error."""
    body = marshal.dumps((snapshot_id, directories))
    data = _MAGIC + hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest() + body
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            os.replace(temporary, path)
        except OSError:
            os.unlink(temporary)
            raise
