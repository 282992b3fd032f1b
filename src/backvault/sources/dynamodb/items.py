"""Items in DynamoDB JSON, as AWS's own table exports write them: one ``{"Item": {...}}`` per line.

The low-level client gives binary values as ``bytes``; in JSON they are base64 strings, as in AWS's
export format. ``item_digest`` hashes a canonical form (sets sorted, keys sorted) so that the same
item read from two tables gives the same digest whatever order DynamoDB returns set members in.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
from collections.abc import Iterable, Mapping
from typing import Any

Item = dict[str, Any]


def _encode_value(value: Mapping[str, Any]) -> dict[str, Any]:
    ((kind, content),) = value.items()
    if kind == "B":
        return {"B": base64.b64encode(bytes(content)).decode("ascii")}
    if kind == "BS":
        return {"BS": [base64.b64encode(bytes(member)).decode("ascii") for member in content]}
    if kind == "M":
        return {"M": encode_item(content)}
    if kind == "L":
        return {"L": [_encode_value(member) for member in content]}
    return {kind: content}


def _decode_value(value: Mapping[str, Any]) -> dict[str, Any]:
    ((kind, content),) = value.items()
    if kind == "B":
        return {"B": base64.b64decode(content)}
    if kind == "BS":
        return {"BS": [base64.b64decode(member) for member in content]}
    if kind == "M":
        return {"M": decode_item(content)}
    if kind == "L":
        return {"L": [_decode_value(member) for member in content]}
    return {kind: content}


def encode_item(item: Mapping[str, Any]) -> Item:
    """Client item (bytes for binaries) -> JSON-able DynamoDB JSON."""
    return {name: _encode_value(value) for name, value in item.items()}


def decode_item(document: Mapping[str, Any]) -> Item:
    """DynamoDB JSON -> client item, ready for PutItem/BatchWriteItem."""
    return {name: _decode_value(value) for name, value in document.items()}


def item_line(item: Mapping[str, Any]) -> bytes:
    """One export line for a client item."""
    return json.dumps({"Item": encode_item(item)}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def parse_lines(data: bytes) -> list[Item]:
    """Client items from export lines."""
    return [decode_item(json.loads(line)["Item"]) for line in data.splitlines() if line.strip()]


def _sort_sets(value: Mapping[str, Any]) -> dict[str, Any]:
    ((kind, content),) = value.items()
    if kind in ("SS", "NS", "BS"):
        return {kind: sorted(content)}
    if kind == "M":
        return {"M": {name: _sort_sets(member) for name, member in content.items()}}
    if kind == "L":
        return {"L": [_sort_sets(member) for member in content]}
    return {kind: content}


def item_digest(item: Mapping[str, Any]) -> str:
    """sha256 of the item's canonical DynamoDB JSON."""
    encoded = {name: _sort_sets(value) for name, value in encode_item(item).items()}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def key_of(item: Mapping[str, Any], key_names: Iterable[str]) -> Item:
    """The primary-key attributes of an item."""
    return {name: item[name] for name in key_names}


def key_rank(key: Mapping[str, Any]) -> int:
    """A stable pseudo-random rank of a key: the sample keeps the lowest ranks."""
    text = json.dumps(encode_item(key), sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class BottomSample:
    """The ``size`` keys of lowest rank seen so far (uniform, deterministic), with their item digests."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[tuple[int, str, str]] = []  # (-rank, key json, digest): a max-heap on rank

    def offer(self, key: Mapping[str, Any], digest: str) -> None:
        """Consider one item."""
        rank = key_rank(key)
        if self._wanted(rank):
            self._push(rank, json.dumps(encode_item(key), sort_keys=True), digest)

    def merge(self, other: BottomSample) -> None:
        """Fold another sample into this one."""
        for negative_rank, key_json, digest in other._heap:
            if self._wanted(-negative_rank):
                self._push(-negative_rank, key_json, digest)

    def _wanted(self, rank: int) -> bool:
        return len(self._heap) < self.size or rank < -self._heap[0][0]

    def _push(self, rank: int, key_json: str, digest: str) -> None:
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, (-rank, key_json, digest))
        else:
            heapq.heapreplace(self._heap, (-rank, key_json, digest))

    def entries(self) -> list[dict[str, Any]]:
        """The sample as manifest entries, lowest rank first."""
        ordered = sorted(self._heap, reverse=True)
        return [{"Key": json.loads(key_json), "Digest": digest} for _, key_json, digest in ordered]
