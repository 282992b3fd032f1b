"""Listing a snapshot's contents (for `ls`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from backvault.repo.repository import Repository
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Node


class PathNotFoundError(LookupError):
    """The requested path does not exist in the snapshot."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: not found in the snapshot")
        self.path = path


def _show(parts: list[bytes]) -> str:
    # surrogateescape keeps non-UTF-8 names printable and reversible with os.fsencode.
    return "/" + "/".join(os.fsdecode(part) for part in parts)


def _walk(repo: Repository, tree_id: str, parts: list[bytes]) -> Iterator[tuple[str, Node]]:
    for node in repo.load_tree(tree_id).nodes:
        child = [*parts, node.name]
        yield _show(child), node
        if node.type == "dir" and node.subtree is not None:
            yield from _walk(repo, node.subtree, child)


def walk_snapshot(repo: Repository, snapshot: Snapshot, path: str = "/") -> Iterator[tuple[str, Node]]:
    """Yield (display path, node) for path itself (unless "/") and everything below it, depth first."""
    parts = [part for part in os.fsencode(path).split(b"/") if part and part != b"."]
    tree_id: str | None = snapshot.tree
    node: Node | None = None
    for index, part in enumerate(parts):
        if tree_id is None:
            raise PathNotFoundError(path)
        node = repo.load_tree(tree_id).find(part)
        if node is None:
            raise PathNotFoundError(path)
        tree_id = node.subtree if node.type == "dir" else None
        if tree_id is None and index < len(parts) - 1:
            raise PathNotFoundError(path)
    if node is not None:
        yield _show(parts), node
    if tree_id is not None:
        yield from _walk(repo, tree_id, parts)
