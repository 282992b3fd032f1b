"""Key management, statistics, forgetting snapshots and rebuilding the index from packs."""

from __future__ import annotations

from dataclasses import dataclass

from backvault.repo import keys as keyfiles
from backvault.repo.crypto import content_hash
from backvault.repo.errors import RepositoryError
from backvault.repo.pack import PackEntry, parse_pack_header
from backvault.repo.repository import Repository, unlock
from backvault.repo.snapshot import Snapshot
from backvault.repo.writer import write_index


def add_key(repository: Repository, new_password: str) -> str:
    """Wrap the master key under another passphrase; returns the new key id."""
    data = keyfiles.make_key_object(repository.master, new_password)
    key_id = content_hash(data)
    repository.store.put_new(f"keys/{key_id}", data)
    return key_id


def list_keys(repository: Repository) -> list[keyfiles.KeyInfo]:
    """Public facts about every key object."""
    found = []
    for info in repository.store.list("keys/"):
        key_id = info.key.rsplit("/", 1)[1]
        try:
            found.append(keyfiles.parse_key_info(key_id, repository.store.get(info.key)))
        except (ValueError, KeyError):
            found.append(keyfiles.KeyInfo(key_id, "?", "?", "damaged"))
    return sorted(found, key=lambda key: key.created)


def remove_key(repository: Repository, key_prefix: str) -> str:
    """Delete a key object other than the one in use; returns its id."""
    matches = [key.id for key in list_keys(repository) if key.id.startswith(key_prefix)]
    if len(matches) != 1:
        raise RepositoryError(f"key '{key_prefix}' matches {len(matches)} keys; give a longer, unique prefix")
    if matches[0] == repository.key_id:
        raise RepositoryError("refusing to remove the key this session was opened with; use another key")
    repository.store.delete(f"keys/{matches[0]}")
    return matches[0]


def change_password(repository: Repository, new_password: str) -> str:
    """Replace the current key with one under a new passphrase; returns the new key id."""
    new_id = add_key(repository, new_password)
    unlock(repository.store, new_password)  # prove the new key opens before dropping the old one
    repository.store.delete(f"keys/{repository.key_id}")
    repository.key_id = new_id
    return new_id


def forget_snapshots(repository: Repository, snapshots: list[Snapshot]) -> None:
    """Delete snapshot objects (their data goes with the next prune)."""
    for snapshot in snapshots:
        repository.store.delete(f"snapshots/{snapshot.id}")


@dataclass
class RepositoryStats:
    """Sizes that tell how well dedup and compression work."""

    snapshots: int
    packs: int
    blobs: int
    restore_size: int  # what restoring every snapshot would write
    unique_size: int  # plaintext bytes of distinct blobs
    stored_size: int  # bytes of all pack objects

    @property
    def dedup_ratio(self) -> float:
        """restore size / unique size."""
        return self.restore_size / self.unique_size if self.unique_size else 1.0

    @property
    def compression_ratio(self) -> float:
        """unique size / stored size."""
        return self.unique_size / self.stored_size if self.stored_size else 1.0


def repository_stats(repository: Repository) -> RepositoryStats:
    """Walk all snapshots and sum the sizes."""
    snapshots = repository.list_snapshots()
    restore_size = 0
    for snapshot in snapshots:
        stack = [snapshot.tree]
        while stack:
            for node in repository.load_tree(stack.pop()).nodes:
                restore_size += node.size if node.type == "file" else 0
                if node.subtree:
                    stack.append(node.subtree)
    unique = 0
    blobs = 0
    for pack_id in repository.index.packs:
        for _, location in repository.index.entries_of(pack_id):
            unique += location.raw_length
            blobs += 1
    stored = sum(info.size for info in repository.store.list("data/"))
    return RepositoryStats(len(snapshots), len(repository.index.packs), blobs, restore_size, unique, stored)


def rebuild_index(repository: Repository) -> tuple[int, list[str]]:
    """Read every pack's own header and write a fresh index replacing all index objects.

    Returns (packs indexed, damaged pack keys). Holds an exclusive lock.
    """
    lock = repository.lock(exclusive=True)
    try:
        packs: dict[str, list[PackEntry]] = {}
        damaged: list[str] = []
        for info in repository.store.list("data/"):
            data = repository.store.get(info.key)
            pack_id = info.key.rsplit("/", 1)[1]
            try:
                if content_hash(data) != pack_id:
                    raise ValueError("content does not match its name")
                packs[pack_id] = parse_pack_header(data, repository.sealer)
            except ValueError as error:
                damaged.append(f"{info.key}: {error}")
        old = [info.key for info in repository.store.list("index/")]
        write_index(repository, packs, supersedes=[key.rsplit("/", 1)[1] for key in old])
        for key in old:
            repository.store.delete(key)
        repository.problems.damaged = {
            key: reason for key, reason in repository.problems.damaged.items() if not key.startswith("index/")
        }
        repository.load_index()
        return len(packs), damaged
    finally:
        lock.release()
