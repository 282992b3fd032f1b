"""The key-by-key export of one logical database, its restore with RESTORE, and value digests.

Export format (one file per database)::

    "BVREDISKEYS1\\n"
    per key:  "K" | u32 key length | key | i64 TTL in ms (0: none) | u64 payload length | DUMP payload
    end:      "E" | u64 number of keys

The trailer makes a cut-short export detectable. Keys come from SCAN in batches; each batch's DUMP
and PTTL run in one MULTI/EXEC, so every key is saved as it was at one instant (the RDB snapshot is
the copy consistent across all keys). TTLs are saved as the time that was left: a restored key
lives as long as it had left at backup time.

A sample of keys (chosen by a hash of the name, so the same keys every run) is also read with
type-specific commands inside the same MULTI, and a digest of the value's canonical form goes into
the manifest: validation compares restored values by content, whatever the server version's
encoding.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from backvault.sources.base import ConnectorError
from backvault.sources.s3.streaming import read_exactly

MAGIC = b"BVREDISKEYS1\n"
SAMPLE_TARGET = 500
_SCAN_COUNT = 500
_RESTORE_BATCH_KEYS = 1000
_RESTORE_BATCH_BYTES = 16 * 1024 * 1024
_SHOWN_PROBLEMS = 20
_KEY_HEADER = struct.Struct(">I")
_VALUE_HEADER = struct.Struct(">qQ")
_COUNT = struct.Struct(">Q")


@dataclass
class DatabaseSummary:
    """What the export of one database saw: counts and the sampled keys' digests."""

    db: int
    keys: int = 0
    volatile_keys: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        return {"keys": self.keys, "volatile_keys": self.volatile_keys, "sample": self.sample}


# --- digests ----------------------------------------------------------------------------------


def _queue_read(pipe: Any, key: bytes, kind: bytes) -> None:
    """Queue the command that reads a whole value of this type."""
    if kind == b"string":
        pipe.get(key)
    elif kind == b"list":
        pipe.lrange(key, 0, -1)
    elif kind == b"set":
        pipe.smembers(key)
    elif kind == b"zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == b"hash":
        pipe.hgetall(key)
    elif kind == b"stream":
        pipe.xrange(key, "-", "+")
    else:  # module types: their DUMP payload is the only generic view
        pipe.dump(key)


def value_digest(kind: bytes, value: Any) -> str:
    """sha256 of a value's canonical form (sets and hashes sorted, every element length-framed)."""
    digest = hashlib.sha256()

    def frame(data: bytes) -> None:
        digest.update(_COUNT.pack(len(data)))
        digest.update(data)

    frame(kind)
    if kind == b"string" or not isinstance(value, list | set | dict):
        frame(value if isinstance(value, bytes) else repr(value).encode())
        return digest.hexdigest()
    elements: Any = value
    if kind == b"list":
        for element in elements:
            frame(element)
    elif kind == b"set":
        for element in sorted(elements):
            frame(element)
    elif kind == b"zset":
        for member, score in elements:
            frame(member)
            frame(repr(float(score)).encode())
    elif kind == b"hash":
        for name in sorted(elements):
            frame(name)
            frame(elements[name])
    elif kind == b"stream":
        for entry_id, fields in elements:
            frame(entry_id)
            for name, content in fields.items():
                frame(name)
                frame(content)
    else:
        for element in elements:
            frame(element if isinstance(element, bytes) else repr(element).encode())
    return digest.hexdigest()


def _sampled(marker: bytes, modulus: int) -> bool:
    return int.from_bytes(marker[:8], "big") % modulus == 0


# --- export -----------------------------------------------------------------------------------


def export_database(client: Any, summary: DatabaseSummary) -> Iterator[bytes]:
    """Yield the export of the client's database piece by piece, filling ``summary`` as it goes."""
    yield MAGIC
    modulus = max(1, int(client.dbsize()) // SAMPLE_TARGET)
    seen: set[bytes] = set()  # SCAN may return a key twice; 16-byte digests keep memory small
    cursor = 0
    while True:
        cursor, found = client.scan(cursor=cursor, count=_SCAN_COUNT)
        batch: list[tuple[bytes, bool]] = []
        for key in found:
            marker = hashlib.blake2b(key, digest_size=16).digest()
            if marker not in seen:
                seen.add(marker)
                batch.append((key, _sampled(marker, modulus)))
        if batch:
            yield _export_batch(client, batch, summary)
        if cursor == 0:
            break
    yield b"E" + _COUNT.pack(summary.keys)


def _export_batch(client: Any, batch: list[tuple[bytes, bool]], summary: DatabaseSummary) -> bytes:
    sampled = [key for key, chosen in batch if chosen]
    kinds: list[bytes] = []
    if sampled:
        probe = client.pipeline(transaction=False)
        for key in sampled:
            probe.type(key)
        kinds = list(probe.execute())
    pipe = client.pipeline(transaction=True)
    for key, _ in batch:
        pipe.dump(key)
        pipe.pttl(key)
    for key, kind in zip(sampled, kinds, strict=True):
        pipe.type(key)
        _queue_read(pipe, key, kind)
    results = pipe.execute(raise_on_error=False)
    out: list[bytes] = []
    volatile: set[bytes] = set()
    for index, (key, _) in enumerate(batch):
        payload, ttl = results[2 * index], results[2 * index + 1]
        if isinstance(payload, Exception) or isinstance(ttl, Exception):
            raise ConnectorError(f"Redis could not dump key {key[:100]!r}: {payload or ttl}")
        if payload is None or ttl == -2:
            continue  # expired or deleted since SCAN
        ttl_ms = int(ttl) if int(ttl) > 0 else 0
        out.append(
            b"K" + _KEY_HEADER.pack(len(key)) + key + _VALUE_HEADER.pack(ttl_ms, len(payload)) + payload
        )
        summary.keys += 1
        if ttl_ms:
            summary.volatile_keys += 1
            volatile.add(key)
    offset = 2 * len(batch)
    for index, (key, expected_kind) in enumerate(zip(sampled, kinds, strict=True)):
        kind, value = results[offset + 2 * index], results[offset + 2 * index + 1]
        if kind != expected_kind or isinstance(value, Exception) or kind == b"none":
            continue  # changed type or vanished between the two round trips: leave it out of the sample
        summary.sample.append(
            {
                "Key": base64.b64encode(key).decode("ascii"),
                "Type": kind.decode(),
                "Digest": value_digest(kind, value),
                "Volatile": key in volatile,
            }
        )
    return b"".join(out)


# --- restore ----------------------------------------------------------------------------------


def iter_export(stream: BinaryIO) -> Iterator[tuple[bytes, int, bytes]]:
    """Yield (key, TTL ms, DUMP payload) from an export; ConnectorError if it is damaged or cut."""
    try:
        if read_exactly(stream, len(MAGIC)) != MAGIC:
            raise ConnectorError(
                "The key export does not start with the expected header: it is not an export."
            )
        count = 0
        while True:
            tag = read_exactly(stream, 1)
            if tag == b"E":
                (expected,) = _COUNT.unpack(read_exactly(stream, _COUNT.size))
                if expected != count:
                    raise ConnectorError(
                        f"The key export holds {count} keys but its trailer says {expected}."
                    )
                return
            if tag != b"K":
                raise ConnectorError(f"The key export is damaged after {count} keys.")
            (key_length,) = _KEY_HEADER.unpack(read_exactly(stream, _KEY_HEADER.size))
            key = read_exactly(stream, key_length)
            ttl, payload_length = _VALUE_HEADER.unpack(read_exactly(stream, _VALUE_HEADER.size))
            yield key, ttl, read_exactly(stream, payload_length)
            count += 1
    except EOFError:
        raise ConnectorError("The key export ends early: it was cut short when it was saved.") from None


def restore_database(
    client: Any, stream: BinaryIO, *, replace: bool, progress: Callable[[int], None]
) -> tuple[int, int, list[str]]:
    """RESTORE every key of an export; returns (keys restored, payload bytes, problems)."""
    restored = written = 0
    problems: list[str] = []
    pipe = client.pipeline(transaction=False)
    queued: list[bytes] = []
    queued_bytes = 0

    def flush() -> None:
        nonlocal restored, queued_bytes
        if not queued:
            return
        for key, result in zip(queued, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, Exception):
                if len(problems) < _SHOWN_PROBLEMS:
                    problems.append(f"{key[:100]!r}: {result}")
            else:
                restored += 1
        queued.clear()
        queued_bytes = 0
        progress(written)

    for key, ttl, payload in iter_export(stream):
        pipe.restore(key, ttl, payload, replace=replace)
        queued.append(key)
        queued_bytes += len(payload)
        written += len(payload)
        if len(queued) >= _RESTORE_BATCH_KEYS or queued_bytes >= _RESTORE_BATCH_BYTES:
            flush()
    flush()
    return restored, written, problems


# --- validation -------------------------------------------------------------------------------


def compare_database(client: Any, expected: dict[str, Any]) -> list[str]:
    """Problems found comparing a database with its manifest entry (counts, sampled values, TTLs)."""
    problems: list[str] = []
    persistent = volatile = 0
    cursor = 0
    seen: set[bytes] = set()
    while True:
        cursor, found = client.scan(cursor=cursor, count=_SCAN_COUNT)
        fresh = [key for key in found if key not in seen]
        seen.update(fresh)
        pipe = client.pipeline(transaction=False)
        for key in fresh:
            pipe.pttl(key)
        for ttl in pipe.execute():
            if ttl > 0:
                volatile += 1
            elif ttl == -1:
                persistent += 1
        if cursor == 0:
            break
    expected_persistent = expected["keys"] - expected["volatile_keys"]
    if persistent != expected_persistent:
        problems.append(f"{persistent} keys without a TTL, expected {expected_persistent}")
    if volatile > expected["volatile_keys"]:
        problems.append(f"{volatile} keys with a TTL, expected at most {expected['volatile_keys']}")
    problems.extend(_compare_sample(client, expected["sample"]))
    return problems


def _compare_sample(client: Any, sample: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    keys = [base64.b64decode(entry["Key"]) for entry in sample]
    probe = client.pipeline(transaction=False)
    for key in keys:
        probe.type(key)
        probe.pttl(key)
    answers = probe.execute()
    pipe = client.pipeline(transaction=False)
    for index, key in enumerate(keys):
        _queue_read(pipe, key, answers[2 * index])
    values = pipe.execute(raise_on_error=False)
    for index, (entry, key) in enumerate(zip(sample, keys, strict=True)):
        kind, ttl, value = answers[2 * index], answers[2 * index + 1], values[index]
        shown = key[:100].decode(errors="replace")
        if kind == b"none":
            if not entry["Volatile"]:  # a key with a TTL may have expired since the restore
                problems.append(f"key {shown!r} is missing")
        elif kind.decode() != entry["Type"]:
            problems.append(f"key {shown!r} is a {kind.decode()}, expected a {entry['Type']}")
        elif isinstance(value, Exception) or value_digest(kind, value) != entry["Digest"]:
            problems.append(f"key {shown!r} has a different value than the backup")
        elif (ttl > 0) != entry["Volatile"]:
            problems.append(f"key {shown!r} {'has' if ttl > 0 else 'lacks'} a TTL, unlike the backup")
    return problems
