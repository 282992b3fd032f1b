"""Tree and node model: the directory listing a snapshot points at.

A tree is one directory level; it is serialised as canonical JSON and stored as a
blob of type TREE, so identical directories deduplicate like file content does.
Names and link targets are raw bytes on POSIX; valid UTF-8 is stored as a string,
anything else as base64 under a "*_b64" key so that every name round-trips exactly.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

from backvault.repo import canonical_json

NodeType = Literal["file", "dir", "symlink", "chardev", "blockdev", "fifo", "socket"]


def _encode_bytes(out: dict[str, Any], key: str, value: bytes) -> None:
    try:
        out[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(value).decode("ascii")


def _decode_bytes(data: dict[str, Any], key: str) -> bytes | None:
    if key in data:
        return str(data[key]).encode("utf-8")
    if key + "_b64" in data:
        return base64.b64decode(data[key + "_b64"])
    return None


@dataclass
class Node:
    """One directory entry with the metadata needed to restore it faithfully."""

    name: bytes
    type: NodeType
    mode: int = 0  # permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0  # informational; cannot be restored
    inode: int = 0
    device_id: int = 0  # st_dev of the filesystem the node lived on
    links: int = 1  # st_nlink; > 1 on files means hard links are restored by (device_id, inode)
    size: int = 0
    content: list[str] = field(default_factory=list)  # chunk ids (hex) for files
    subtree: str | None = None  # tree id (hex) for directories
    link_target: bytes | None = None  # for symlinks
    rdev: int = 0  # for device nodes
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the canonical JSON-able form, omitting defaults to keep trees small."""
        # One call per entry of every new directory: built in one literal (key order does not
        # matter, serialize sorts the keys).
        out: dict[str, Any] = {
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime_ns": self.mtime_ns,
            "atime_ns": self.atime_ns,
            "ctime_ns": self.ctime_ns,
            "inode": self.inode,
            "device_id": self.device_id,
            "size": self.size,
        }
        _encode_bytes(out, "name", self.name)
        if self.user:
            out["user"] = self.user
        if self.group:
            out["group"] = self.group
        if self.links != 1:
            out["links"] = self.links
        if self.content:
            out["content"] = self.content
        if self.subtree is not None:
            out["subtree"] = self.subtree
        if self.link_target is not None:
            _encode_bytes(out, "link_target", self.link_target)
        if self.rdev:
            out["rdev"] = self.rdev
        if self.xattrs:
            out["xattrs"] = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(self.xattrs.items())}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        """Parse a node written by to_json."""
        # Hot in restores and incremental backups (one call per entry): plain lookups, no helpers.
        get = data.get
        name = get("name")
        if name is not None:
            name = str(name).encode("utf-8")
        else:
            name = _decode_bytes(data, "name")
            if name is None:
                raise ValueError("tree node without a name")
        xattrs = get("xattrs")
        return cls(
            name,
            data["type"],
            int(get("mode", 0)),
            int(get("uid", 0)),
            int(get("gid", 0)),
            str(get("user", "")),
            str(get("group", "")),
            int(get("mtime_ns", 0)),
            int(get("atime_ns", 0)),
            int(get("ctime_ns", 0)),
            int(get("inode", 0)),
            int(get("device_id", 0)),
            int(get("links", 1)),
            int(get("size", 0)),
            list(get("content", ())),
            get("subtree"),
            _decode_bytes(data, "link_target"),
            int(get("rdev", 0)),
            {k: base64.b64decode(v) for k, v in xattrs.items()} if xattrs else {},
        )


@dataclass
class Tree:
    """The entries of one directory, kept sorted by raw name bytes."""

    nodes: list[Node] = field(default_factory=list)

    def serialize(self) -> bytes:
        """Return the canonical bytes (sorted nodes, sorted keys, no spaces)."""
        ordered = sorted(self.nodes, key=lambda node: node.name)
        document = {"nodes": [node.to_json() for node in ordered]}
        return canonical_json.dumps(document, sort_keys=True)

    @classmethod
    def deserialize(cls, data: bytes) -> Tree:
        """Parse bytes produced by serialize."""
        document = canonical_json.loads(data)
        return cls(nodes=[Node.from_json(item) for item in document["nodes"]])

    def find(self, name: bytes) -> Node | None:
        """Return the node called name, if any."""
        for node in self.nodes:
            if node.name == name:
                return node
        return None
