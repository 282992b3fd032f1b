"""Open an object store from a location string: a path, file://path or s3://bucket/prefix."""

from __future__ import annotations

import os
import re

from backvault.storage.base import ObjectStore
from backvault.storage.local import LocalStore

ENDPOINT_VARIABLE = "BACKVAULT_S3_ENDPOINT"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Loose on purpose: S3-compatible services differ in what they allow, the server has the
# final word; this only catches what can never be a bucket.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _parse_s3(location: str) -> tuple[str, str]:
    """Split s3://bucket/prefix into (bucket, prefix), or raise ValueError naming the problem."""
    rest = location[len("s3://") :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"S3 location must not contain '?' or '#': {location!r}")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 location has no bucket, expected s3://bucket[/prefix]: {location!r}")
    if "@" in bucket:
        raise ValueError(
            "S3 location must not contain credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if ":" in bucket:
        raise ValueError(
            f"S3 location names a host, not a bucket: {location!r}; "
            f"give the endpoint with --endpoint-url or {ENDPOINT_VARIABLE} and use s3://bucket[/prefix]"
        )
    if not _BUCKET.match(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {location!r}")
    prefix = prefix.strip("/")
    if prefix:
        segments = prefix.split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            raise ValueError(f"S3 prefix must not contain empty, '.' or '..' segments: {location!r}")
    return bucket, prefix


def open_store(location: str, *, endpoint_url: str | None = None, region: str | None = None) -> ObjectStore:
    """Open the object store a location names; S3 credentials come from the standard AWS variables."""
    if not location or not location.strip():
        raise ValueError("storage location must not be empty")
    match = _SCHEME.match(location)
    scheme = match.group(1).lower() if match else ""
    if scheme == "s3":
        bucket, prefix = _parse_s3("s3://" + location[match.end() :] if match else location)
        endpoint = endpoint_url or os.environ.get(ENDPOINT_VARIABLE) or None
        # boto3 takes ~0.1 s and tens of MiB to import: local repositories never pay for it.
        from backvault.storage.s3 import S3Store

        return S3Store(bucket, prefix, endpoint_url=endpoint, region=region)
    if scheme == "file":
        path = location[match.end() :] if match else ""
        if not path:
            raise ValueError(f"file location has no path, expected file:///path or file://path: {location!r}")
        return LocalStore(path)
    if scheme:
        raise ValueError(
            f"unsupported storage scheme {scheme!r} in {location!r}; use a path, file:// or s3://"
        )
    return LocalStore(location)
