"""Reading the trees a restore walks through a few windows of their packs.

A backup writes the trees of one walk next to each other, so the trees a restore walks
lie close together: one read of a window of a pack around the tree asked for serves the
hundreds of trees near it from memory, where reading each alone costs an open, a read
and a close of the pack (a request, on S3) per directory.
"""

from __future__ import annotations

from collections import OrderedDict

from backvault.repo.blob import BlobType
from backvault.repo.index import Location
from backvault.repo.pack import pack_key
from backvault.repo.repository import Repository
from backvault.repo.tree import Tree
from backvault.storage.base import StorageError

# Bytes of a pack read at once: hundreds of trees where a backup wrote them together, and
# little wasted where file data lies between them (then there is as much data to restore).
WINDOW = 256 * 1024
WINDOWS = 8  # windows kept (the trees of a walk may be spread over a few packs)


class TreeReader:
    """Loads trees like Repository.load_tree, reading their packs a window at a time."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._windows: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # (pack, start) -> bytes

    def load(self, tree_id: str) -> Tree:
        """Return the tree tree_id, or raise DamagedDataError exactly as repo.load_tree does."""
        tree = self._from_window(tree_id)
        # Anything unusual (not in the index, damaged, short) is left to load_tree, which
        # tries every copy and names the problem.
        return tree if tree is not None else self.repo.load_tree(tree_id)

    def _from_window(self, tree_id: str) -> Tree | None:
        blob_id = bytes.fromhex(tree_id)
        location = self.repo.index.lookup(blob_id)
        if location is None or location.length > WINDOW:
            return None
        found = self._window(location)
        if found is None:
            return None
        start, data = found
        piece = memoryview(data)[location.offset - start : location.offset - start + location.length]
        if len(piece) != location.length:
            return None
        try:
            return Tree.deserialize(self.repo.codec.decode(BlobType.TREE, blob_id, piece))
        except (ValueError, KeyError, TypeError):
            return None

    def _window(self, location: Location) -> tuple[int, bytes] | None:
        """The start and bytes of a window holding location (read now if none does)."""
        end = location.offset + location.length
        for (pack_id, start), data in self._windows.items():
            if pack_id == location.pack_id and start <= location.offset and end <= start + len(data):
                self._windows.move_to_end((pack_id, start))
                return start, data
        # Centred: the trees of a subtree come before it in the pack, the siblings' after.
        start = max(0, location.offset - WINDOW // 2)
        try:
            data = self.repo.store.get_range(pack_key(location.pack_id), start, WINDOW)
        except StorageError:
            return None
        self._windows[(location.pack_id, start)] = data
        if len(self._windows) > WINDOWS:
            self._windows.popitem(last=False)
        return start, data
