"""Opening a repository and reading from it: keys, config, index, snapshots, trees, chunks."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from backvault.repo import keys as keyfiles
from backvault.repo.blob import BlobCodec, BlobType
from backvault.repo.config import CONFIG_KEY, ChunkerParams, RepositoryConfig
from backvault.repo.crypto import MasterKey, Sealer, content_hash
from backvault.repo.errors import (
    DamagedDataError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    SnapshotNotFoundError,
    WrongPasswordError,
)
from backvault.repo.index import ChunkIndex, Location, decode_index
from backvault.repo.locks import RepositoryLock
from backvault.repo.pack import pack_key
from backvault.repo.snapshot import Snapshot
from backvault.repo.tree import Tree
from backvault.repo.writer import BackupWriter
from backvault.storage.base import ObjectNotFoundError, ObjectStore, StorageError

READ_THREADS = 3
DECODE_WINDOW = 6
INLINE_DECODE_BELOW = 256 * 1024


@dataclass
class LoadProblems:
    """Objects that could not be read while opening; check reports them, other commands warn."""

    damaged: dict[str, str] = field(default_factory=dict)  # object key -> reason


def verify_named_object(key: str, data: bytes) -> None:
    """Content-named objects must hash to their own name."""
    name = key.rsplit("/", 1)[-1]
    if content_hash(data) != name:
        raise DamagedDataError(key, "content does not match its name (changed or truncated)")


class Repository:
    """An open repository: the decrypted config and the chunk index, ready to read and write."""

    def __init__(
        self,
        store: ObjectStore,
        master: MasterKey,
        config: RepositoryConfig,
        key_id: str,
        *,
        load_index: bool = True,
    ) -> None:
        self.store = store
        self.master = master
        self.config = config
        self.key_id = key_id
        self.sealer = Sealer(master.encryption_key)
        self.codec = BlobCodec(self.sealer, master.chunk_id_key, config.compression_level)
        self._index: ChunkIndex | None = None  # None: not loaded yet (see the index property)
        self._index_mutex = threading.Lock()
        self.index_ids: set[str] = set()
        self.problems = LoadProblems()
        self.index_loaded_at = 0.0
        self._held_locks: list[RepositoryLock] = []
        if load_index:
            self.load_index()

    # --- creation and opening -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        store: ObjectStore,
        password: str,
        *,
        chunker: ChunkerParams | None = None,
        pack_size: int | None = None,
    ) -> Repository:
        """Create a new repository in an empty location (pack_size: tests use small packs)."""
        if store.exists(CONFIG_KEY) or next(iter(store.list("")), None) is not None:
            raise RepositoryExistsError(store.location)
        master = MasterKey.generate()
        config = RepositoryConfig.new(chunker, pack_size)
        key_object = keyfiles.make_key_object(master, password)
        key_id = content_hash(key_object)
        store.put_new(f"keys/{key_id}", key_object)
        store.put_new(CONFIG_KEY, config.to_object(Sealer(master.encryption_key)))
        return cls(store, master, config, key_id)

    @classmethod
    def open(cls, store: ObjectStore, password: str, *, load_index: bool = True) -> Repository:
        """Open with any key that the passphrase unlocks (load_index=False when a lock comes first)."""
        master, key_id = _unlocked_early(store, password) or unlock(store, password)
        config = RepositoryConfig.from_object(store.get(CONFIG_KEY), Sealer(master.encryption_key))
        return cls(store, master, config, key_id, load_index=load_index)

    # --- index ----------------------------------------------------------------------------

    @property
    def index(self) -> ChunkIndex:
        """The chunk index, loaded on first use: a backup that changed nothing never needs it."""
        index = self._index
        if index is None:
            with self._index_mutex:
                if self._index is None:
                    self.load_index()
                index = self._index
                assert index is not None
        return index

    @property
    def index_loaded(self) -> bool:
        """True once the index has been read (and not dropped by lock_and_refresh since)."""
        return self._index is not None

    def forget_index(self) -> None:
        """Drop the loaded index (another process added to the repository); the next use reads it."""
        with self._index_mutex:
            self._index = None

    def load_index(self) -> None:
        """(Re)load every index object and prune's deletion marks."""
        self.index_loaded_at = time.time()
        documents = {}
        for info in self.store.list("index/"):
            try:
                data = self.store.get(info.key)
                verify_named_object(info.key, data)
                documents[info.key.rsplit("/", 1)[1]] = decode_index(data, self.sealer)
            except ObjectNotFoundError:
                continue  # superseded and deleted by a concurrent prune
            except (DamagedDataError, ValueError) as error:
                self.problems.damaged[info.key] = str(getattr(error, "reason", error))
        superseded = {old for document in documents.values() for old in document.supersedes}
        index = ChunkIndex()
        for index_id, document in documents.items():
            if index_id in superseded:
                continue
            for pack_id, entries in document.packs.items():
                index.add_pack(pack_id, entries)
        index.condemned_packs = self._read_condemned_packs()
        self._index = index
        self.index_ids = set(documents) - superseded

    def _read_condemned_packs(self) -> set[str]:
        from backvault.repo.prune import read_deletion_marks  # prune imports this module

        return {pack for mark in read_deletion_marks(self) for pack in mark.packs}

    def has_chunk(self, chunk_id: str) -> bool:
        """True when the chunk is stored (in a pack that prune has not condemned)."""
        return self.index.has_live(bytes.fromhex(chunk_id))

    def chunk_size(self, chunk_id: str) -> int:
        """Plaintext size of a stored chunk."""
        location = self.index.lookup(bytes.fromhex(chunk_id))
        if location is None:
            raise DamagedDataError("index", "chunk is not in the index", chunk_id)
        return location.raw_length

    # --- reading --------------------------------------------------------------------------

    def read_blob(self, blob_id: bytes, blob_type: BlobType = BlobType.DATA) -> bytes:
        """Fetch, decrypt and verify one blob, trying every stored copy."""
        locations = self.index.locations(blob_id)
        if not locations:
            raise DamagedDataError("index", "no pack holds this blob (missing from the index)", blob_id.hex())
        last_error: DamagedDataError | None = None
        for location in locations:
            key = pack_key(location.pack_id)
            try:
                stored = self.store.get_range(key, location.offset, location.length)
                return self.codec.decode(blob_type, blob_id, stored)
            except (ObjectNotFoundError, ValueError) as error:
                last_error = DamagedDataError(key, str(error), blob_id.hex())
        assert last_error is not None
        raise last_error

    def load_tree(self, tree_id: str) -> Tree:
        """Read and parse one tree blob."""
        data = self.read_blob(bytes.fromhex(tree_id), BlobType.TREE)
        try:
            return Tree.deserialize(data)
        except (ValueError, KeyError, TypeError) as error:
            raise DamagedDataError("tree " + tree_id, f"tree does not parse ({error})", tree_id) from error

    def iter_chunks(self, chunk_ids: Iterable[str]) -> Iterator[tuple[str, bytes | DamagedDataError]]:
        """Yield each distinct chunk once, reading pack by pack; damaged chunks yield the error."""
        by_pack: dict[str, list[tuple[bytes, Location]]] = defaultdict(list)
        for chunk_id in dict.fromkeys(chunk_ids):
            blob_id = bytes.fromhex(chunk_id)
            location = self.index.lookup(blob_id)
            if location is None:
                yield chunk_id, DamagedDataError("index", "chunk is not in the index", chunk_id)
                continue
            by_pack[location.pack_id].append((blob_id, location))

        def read_region(pack_id: str) -> tuple[int, bytes]:
            wanted = by_pack[pack_id]
            start = min(loc.offset for _, loc in wanted)
            end = max(loc.offset + loc.length for _, loc in wanted)
            try:
                return start, self.store.get_range(pack_key(pack_id), start, end - start)
            except StorageError:
                return start, b""

        def decode(blob_id: bytes, location: Location, start: int, region: bytes) -> bytes | DamagedDataError:
            piece = region[location.offset - start : location.offset - start + location.length]
            try:
                if len(piece) != location.length:
                    raise ValueError("pack is missing or shorter than the index says")
                return self.codec.decode(BlobType.DATA, blob_id, piece)
            except ValueError:
                try:  # another copy of the blob may be intact
                    return self.read_blob(blob_id)
                except DamagedDataError as error:
                    return error

        # Memory stays bounded: one pack region is prefetched while the current one is decoded,
        # and at most DECODE_WINDOW decoded chunks wait to be consumed.
        pack_ids = list(by_pack)
        with ThreadPoolExecutor(READ_THREADS) as pool:
            next_region = pool.submit(read_region, pack_ids[0]) if pack_ids else None
            for number, pack_id in enumerate(pack_ids):
                assert next_region is not None
                start, region = next_region.result()
                next_region = (
                    pool.submit(read_region, pack_ids[number + 1]) if number + 1 < len(pack_ids) else None
                )
                in_flight: deque[tuple[bytes, Future[bytes | DamagedDataError]]] = deque()
                for blob_id, location in sorted(by_pack[pack_id], key=lambda item: item[1].offset):
                    if location.raw_length < INLINE_DECODE_BELOW and not in_flight:
                        # a hand-off costs more than decoding a small blob here
                        yield blob_id.hex(), decode(blob_id, location, start, region)
                        continue
                    in_flight.append((blob_id, pool.submit(decode, blob_id, location, start, region)))
                    if len(in_flight) >= DECODE_WINDOW:
                        done_id, done = in_flight.popleft()
                        yield done_id.hex(), done.result()
                while in_flight:
                    done_id, done = in_flight.popleft()
                    yield done_id.hex(), done.result()

    # --- snapshots ------------------------------------------------------------------------

    def list_snapshots(self) -> list[Snapshot]:
        """Every readable snapshot, oldest first; damaged ones are recorded in problems."""
        found: list[Snapshot] = []
        for info in self.store.list("snapshots/"):
            snapshot_id = info.key.rsplit("/", 1)[1]
            try:
                data = self.store.get(info.key)
                verify_named_object(info.key, data)
                found.append(Snapshot.decode(snapshot_id, data, self.sealer))
            except ObjectNotFoundError:
                continue  # forgotten meanwhile
            except (DamagedDataError, ValueError, KeyError, TypeError) as error:
                self.problems.damaged[info.key] = str(getattr(error, "reason", error))
        found.sort(key=lambda snapshot: (snapshot.time, snapshot.id))
        return found

    def find_snapshot(self, reference: str) -> Snapshot:
        """Resolve 'latest' or a unique id prefix."""
        snapshots = self.list_snapshots()
        if reference == "latest":
            if not snapshots:
                raise SnapshotNotFoundError(reference, "the repository has no snapshots")
            return snapshots[-1]
        matches = [snapshot for snapshot in snapshots if snapshot.id.startswith(reference.lower())]
        if len(matches) > 1:
            raise SnapshotNotFoundError(reference, f"the prefix is ambiguous ({len(matches)} snapshots)")
        if not matches:
            damaged = [
                key for key in self.problems.damaged if key.startswith("snapshots/" + reference.lower())
            ]
            if damaged:
                raise DamagedDataError(damaged[0], self.problems.damaged[damaged[0]])
            raise SnapshotNotFoundError(reference)
        return matches[0]

    # --- writing and locking --------------------------------------------------------------

    def lock(self, *, exclusive: bool = False) -> RepositoryLock:
        """Acquire a repository lock (release it when done)."""
        lock = RepositoryLock(self.store, self.sealer, exclusive=exclusive)
        lock.acquire()
        self._held_locks = [held for held in self._held_locks if held.key] + [lock]
        return lock

    def held_lock_keys(self) -> set[str]:
        """Keys of the locks this process holds through this repository object."""
        return {held.key for held in self._held_locks if held.key}

    def index_is_protected(self) -> bool:
        """True when the loaded index was read under a lock still held, so prune cannot sweep under it."""
        return any(held.key and held.created <= self.index_loaded_at for held in self._held_locks)

    def lock_and_refresh(self, *, exclusive: bool = False) -> RepositoryLock:
        """Lock, then make sure the index is (re)read under it (prune's sweep rule needs it).

        An index read before any held lock is dropped; the next use reads it again, now under
        the lock. Reading it lazily lets a backup that changes nothing skip it entirely.
        """
        lock = self.lock(exclusive=exclusive)
        if not self.index_is_protected():
            with self._index_mutex:
                self._index = None
        return lock

    def writer(self, *, threads: int = 2) -> BackupWriter:
        """A writer for one backup; use it as a context manager."""
        return BackupWriter(self, threads=threads)

    def save_snapshot(self, snapshot: Snapshot) -> Snapshot:
        """Store a snapshot object; its id is the hash of the stored bytes."""
        data = snapshot.encode(self.sealer)
        snapshot.id = content_hash(data)
        self.store.put_new(f"snapshots/{snapshot.id}", data)
        return snapshot

    def close(self) -> None:
        """Release resources (nothing is left pending by readers)."""


def unlock(store: ObjectStore, password: str) -> tuple[MasterKey, str]:
    """Find a key object the passphrase opens; clear errors for non-repositories and bad passphrases."""
    try:
        store.stat(CONFIG_KEY)
    except ObjectNotFoundError as error:
        raise RepositoryNotFoundError(store.location, "it has no config object") from error
    except StorageError as error:
        raise RepositoryNotFoundError(store.location, str(error)) from error
    key_objects = list(store.list("keys/"))
    if not key_objects:
        raise RepositoryNotFoundError(store.location, "it has no key objects")
    damaged: list[str] = []
    for info in sorted(key_objects, key=lambda item: item.modified):
        data = store.get(info.key)
        try:
            verify_named_object(info.key, data)
            master = keyfiles.unwrap_key_object(data, password)
        except (DamagedDataError, ValueError, KeyError, json.JSONDecodeError):
            damaged.append(info.key)
            continue
        if master is not None:
            return master, info.key.rsplit("/", 1)[1]
    raise WrongPasswordError(len(key_objects), damaged)


# Unlocks started by unlock_early(), by (store location, SHA-256 of the passphrase).
_early_unlocks: dict[tuple[str, bytes], Future[tuple[MasterKey, str]]] = {}
_early_mutex = threading.Lock()


def unlock_early(store: ObjectStore, password: str) -> None:
    """Start unlock() on a thread, for the next Repository.open of this store and passphrase.

    The key derivation (~0.3 s of Argon2id) releases the GIL, so a command can go on
    importing and parsing its arguments on one core while the key is derived on another.
    """
    future: Future[tuple[MasterKey, str]] = Future()

    def run() -> None:
        try:
            future.set_result(unlock(store, password))
        except BaseException as error:  # Repository.open unlocks again and reports it
            future.set_exception(error)

    with _early_mutex:
        _early_unlocks[(store.location, hashlib.sha256(password.encode()).digest())] = future
    threading.Thread(target=run, name="unlock", daemon=True).start()


def _unlocked_early(store: ObjectStore, password: str) -> tuple[MasterKey, str] | None:
    """The result of an early unlock of this store with this passphrase, if one succeeded.

    Every early unlock is used at most once, by the next open: keys may change later.
    """
    with _early_mutex:
        if not _early_unlocks:
            return None
        future = _early_unlocks.pop((store.location, hashlib.sha256(password.encode()).digest()), None)
        _early_unlocks.clear()
    if future is None:
        return None
    try:
        return future.result()
    except Exception:
        return None
