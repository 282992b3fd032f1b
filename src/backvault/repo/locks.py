"""Repository locks: shared for backup/restore/check/prune-mark, exclusive for index repair.

A lock is a sealed object under locks/. It is refreshed periodically; one not refreshed
for STALE_AFTER seconds (or whose process is gone, on the same host) is stale and ignored.
Prune's sweep also uses locks: it deletes nothing while a lock older than the deletion
mark exists, because that lock's holder may have loaded the index before the mark.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass

from backvault.repo.crypto import AuthenticationError, Sealer
from backvault.repo.errors import LockConflictError
from backvault.storage.base import ObjectNotFoundError, ObjectStore

STALE_AFTER = 30 * 60.0
REFRESH_EVERY = 5 * 60.0
_AAD = b"backvault lock"


@dataclass(frozen=True)
class LockInfo:
    """A lock as read back from storage."""

    key: str
    created: float
    refreshed: float
    hostname: str
    pid: int
    exclusive: bool

    def is_stale(self, now: float) -> bool:
        """True when its holder is evidently gone."""
        if now - self.refreshed > STALE_AFTER:
            return True
        if self.hostname == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False


def read_locks(store: ObjectStore, sealer: Sealer) -> list[LockInfo]:
    """All lock objects that can be read; unreadable ones count as stale."""
    found: list[LockInfo] = []
    for info in store.list("locks/"):
        try:
            document = json.loads(sealer.open(store.get(info.key), _AAD))
        except (ObjectNotFoundError, AuthenticationError, ValueError):
            continue
        found.append(
            LockInfo(
                info.key,
                float(document["created"]),
                float(document["refreshed"]),
                str(document["hostname"]),
                int(document["pid"]),
                bool(document["exclusive"]),
            )
        )
    return found


class RepositoryLock:
    """A held lock, refreshed in the background until released."""

    def __init__(self, store: ObjectStore, sealer: Sealer, *, exclusive: bool) -> None:
        self._store = store
        self._sealer = sealer
        self.exclusive = exclusive
        self.created = time.time()
        self.last_refresh = self.created
        self.key = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> str:
        now = time.time()
        document = {
            "created": self.created,
            "refreshed": now,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "exclusive": self.exclusive,
        }
        key = f"locks/{os.urandom(16).hex()}"
        self._store.put(key, self._sealer.seal(json.dumps(document).encode(), _AAD))
        self.last_refresh = now
        return key

    def acquire(self) -> None:
        """Write the lock, then make sure no conflicting lock exists (else remove ours and fail)."""
        self.key = self._write()
        now = time.time()
        for other in read_locks(self._store, self._sealer):
            if other.key == self.key or other.is_stale(now):
                continue
            if self.exclusive or other.exclusive:
                self._store.delete(self.key)
                kind = "an exclusive" if other.exclusive else "a"
                raise LockConflictError(
                    f"the repository is locked by {kind} lock of pid {other.pid} on {other.hostname} "
                    f"({other.key}); wait for it to finish, "
                    "or remove a stale lock with 'backvault repo unlock'"
                )
        self._thread = threading.Thread(target=self._refresh_loop, name="lock-refresh", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                old = self.key
                self.key = self._write()
                self._store.delete(old)
            except Exception:  # a failed refresh is detected by check_fresh before committing
                continue

    def check_fresh(self) -> None:
        """Refuse to commit when the lock may have gone stale (others could have pruned)."""
        if time.time() - self.last_refresh > STALE_AFTER - REFRESH_EVERY:
            raise LockConflictError(
                "the repository lock could not be refreshed in time; aborting to stay safe"
            )

    def release(self) -> None:
        """Stop refreshing and delete the lock object."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.key:
            self._store.delete(self.key)
            self.key = ""


def remove_stale_locks(store: ObjectStore, sealer: Sealer, *, all_locks: bool = False) -> int:
    """Delete stale locks (or every lock); returns how many were removed."""
    now = time.time()
    removed = 0
    for lock in read_locks(store, sealer):
        if all_locks or lock.is_stale(now):
            store.delete(lock.key)
            removed += 1
    return removed
