"""Object store on an S3-compatible service (AWS S3, MinIO, Ceph, moto...) through boto3."""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    FlexibleChecksumError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from backvault.storage.base import ObjectExistsError, ObjectInfo, ObjectNotFoundError, StorageError
from backvault.storage.local import byte_view, validate_key, validate_prefix

MIN_PART_SIZE = 5 * 1024 * 1024  # S3 rejects smaller parts (except the last one).
MAX_PARTS = 10_000  # S3's limit on parts per upload.

# Errors while reading a response body happen after botocore has returned, so its retry
# handler never sees them; _read retries these itself.
# A checksum mismatch means the body was damaged in transit: worth another try too.
_BODY_ERRORS: tuple[type[Exception], ...] = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError)
_BODY_ERRORS += (ConnectionClosedError, FlexibleChecksumError)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CHECKSUM_FIELDS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


def _cause_code(error: StorageError) -> tuple[str, int | None]:
    """Return the S3 error code and HTTP status behind a translated error ("" and None if none)."""
    cause = error.__cause__
    if not isinstance(cause, ClientError):
        return "", None
    status: int | None = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(cause.response.get("Error", {}).get("Code", "")), status


class _BufferReader(io.RawIOBase):
    """A seekable read-only file over a memoryview, so botocore streams it without a full copy.

    botocore needs seek/tell to size the body, compute its checksum and rewind on retry.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._view.nbytes}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = self._view.nbytes if size is None or size < 0 else min(self._view.nbytes, self._position + size)
        chunk = bytes(self._view[self._position : end])
        self._position = max(self._position, end)
        return chunk


class S3Store:
    """An ObjectStore on an S3 bucket, optionally under a key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunk_size: int = 16 * 1024 * 1024,
        max_attempts: int = 6,
        storage_class: str | None = None,
        conditional_writes: bool = True,
        retry_mode: Literal["standard", "adaptive"] = "standard",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 16,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name: {bucket!r}")
        if multipart_chunk_size < MIN_PART_SIZE:
            raise ValueError(f"multipart_chunk_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        if multipart_threshold < 1:
            raise ValueError("multipart_threshold must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self._bucket = bucket
        self._prefix = f"{prefix}/" if prefix else ""
        self._endpoint_url = endpoint_url
        self._multipart_threshold = multipart_threshold
        self._chunk_size = multipart_chunk_size
        self._max_attempts = max_attempts
        self._storage_class = storage_class
        # False once the endpoint has said it cannot do If-None-Match writes.
        self._conditional_writes = conditional_writes
        self._bucket_verified = False
        # Values to scrub from any message we build; botocore never puts the secret key in
        # its errors, but server-provided text is not under our control.
        environment = (os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN"))
        self._secrets = tuple(filter(None, (access_key_id, secret_access_key, session_token, *environment)))
        # Explicit credentials win; None lets boto3 use its normal chain (env, profile, IMDS).
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            region_name=region,
        )
        config = Config(
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            # Self-hosted endpoints (MinIO, Ceph, moto) rarely have wildcard DNS for buckets.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self._endpoint_url!r}" if self._endpoint_url else ""
        return f"S3Store({self._bucket!r}, {self._prefix.rstrip('/')!r}{endpoint})"

    @property
    def location(self) -> str:
        """The s3:// URL of the store."""
        return f"s3://{self._bucket}/{self._prefix}".rstrip("/")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    # -- errors ---------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _where(self, key: str) -> str:
        where = f"s3://{self._bucket}/{self._prefix}{key}"
        return f"{where} at {self._endpoint_url}" if self._endpoint_url else where

    def _bucket_missing(self, operation: str, key: str) -> StorageError:
        at = f" at {self._endpoint_url}" if self._endpoint_url else ""
        return StorageError(f"S3 bucket {self._bucket!r} does not exist{at} ({operation} of {key!r})")

    def _translate(self, operation: str, key: str, error: Exception) -> StorageError:
        """Turn a botocore exception into our error types, with a secret-free message."""
        where = self._where(key)
        if isinstance(error, ClientError):
            details = error.response.get("Error", {})
            code = str(details.get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return self._bucket_missing(operation, key)
            if code in _NOT_FOUND_CODES:
                return ObjectNotFoundError(key)
            denied = code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")
            hint = " (check the credentials and the bucket policy)" if denied else ""
            message = details.get("Message") or ""
            text = f"S3 {operation} of {where} failed: {code or 'error'} (HTTP {status}) {message}"
            return StorageError(self._redact(text.rstrip() + hint))
        if isinstance(error, NoCredentialsError):
            return StorageError(
                f"S3 {operation} of {where} failed: no credentials found "
                "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile)"
            )
        text = f"S3 {operation} of {where} failed after up to {self._max_attempts} attempts: {error}"
        return StorageError(self._redact(text))

    def _call(self, operation: str, key: str, method: str, **params: Any) -> dict[str, Any]:
        """Call a client method (botocore retries transient failures) and translate errors."""
        try:
            response: dict[str, Any] = getattr(self._client, method)(Bucket=self._bucket, **params)
        except (ClientError, BotoCoreError) as error:
            raise self._translate(operation, key, error) from error
        return response

    def _not_found(self, key: str) -> ObjectNotFoundError:
        """Confirm a HEAD 404 means a missing key, not a missing bucket (HEAD has no error code)."""
        if not self._bucket_verified:
            try:
                self._client.head_bucket(Bucket=self._bucket)
            except ClientError as error:
                if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise self._bucket_missing("stat", key) from error
                raise self._translate("check bucket", key, error) from error
            except BotoCoreError as error:
                raise self._translate("check bucket", key, error) from error
            self._bucket_verified = True
        return ObjectNotFoundError(key)

    def _backoff(self, attempt: int) -> None:
        """Sleep with full jitter, like botocore's own non-throttling backoff."""
        time.sleep(random.random() * min(0.1 * 2**attempt, 20.0))

    # -- writes ---------------------------------------------------------------------------

    def _checksum_args(self) -> dict[str, str]:
        # Mirror s3transfer: with botocore's default checksum mode, name the algorithm when
        # creating an upload so its parts' checksums can be passed back on completion.
        if self._client.meta.config.request_checksum_calculation == "when_supported":
            return {"ChecksumAlgorithm": "CRC32"}
        return {}

    def _storage_args(self) -> dict[str, str]:
        return {"StorageClass": self._storage_class} if self._storage_class else {}

    def _put_multipart(self, operation: str, key: str, view: memoryview, create_only: bool) -> None:
        full_key = self._prefix + key
        # Grow parts for huge objects so they fit S3's part-count limit.
        part_size = max(self._chunk_size, -(-view.nbytes // MAX_PARTS))
        checksum_args = self._checksum_args()
        upload = {"Key": full_key, **self._storage_args(), **checksum_args}
        upload_id = self._call(operation, key, "create_multipart_upload", **upload)["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            for number, start in enumerate(range(0, view.nbytes, part_size), start=1):
                part_view = view[start : start + part_size]
                body = {"Body": _BufferReader(part_view), "ContentLength": part_view.nbytes}
                part_id = {"Key": full_key, "UploadId": upload_id, "PartNumber": number}
                response = self._call(operation, key, "upload_part", **part_id, **body, **checksum_args)
                part = {"ETag": response["ETag"], "PartNumber": number}
                part.update({field: response[field] for field in _CHECKSUM_FIELDS if field in response})
                parts.append(part)
            completion = {"Key": full_key, "UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
            condition = {"IfNoneMatch": "*"} if create_only else {}
            self._call(operation, key, "complete_multipart_upload", **completion, **condition)
        except BaseException:
            # Unfinished uploads are billed until aborted; a failed abort must not hide the cause.
            with suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=full_key, UploadId=upload_id)
            raise

    def _write(self, operation: str, key: str, data: bytes | memoryview, create_only: bool) -> None:
        validate_key(key)
        view = byte_view(data)
        if view.nbytes >= self._multipart_threshold:
            self._put_multipart(operation, key, view, create_only)
            return
        # bytes go to botocore as they are; other buffers are streamed from a view.
        body = data if isinstance(data, bytes) else _BufferReader(view)
        condition = {"IfNoneMatch": "*"} if create_only else {}
        request = {"Key": self._prefix + key, "Body": body, "ContentLength": view.nbytes}
        self._call(operation, key, "put_object", **request, **self._storage_args(), **condition)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key; S3 makes every PUT atomic. Large objects use multipart upload."""
        self._write("put", key, data, create_only=False)

    def put_new(self, key: str, data: bytes | memoryview) -> None:
        """Store data under key only if absent, with a conditional write (If-None-Match: *).

        If the endpoint does not implement conditional writes (or conditional_writes=False),
        this falls back to HEAD then PUT, which is not race-free between writers. If a
        conditional request is retried after its first attempt landed, the retry reports
        ObjectExistsError although this caller created the object.
        """
        if not self._conditional_writes:
            self._put_new_unconditional(key, data)
            return
        for attempt in range(1, self._max_attempts + 1):
            try:
                self._write("put_new", key, data, create_only=True)
                return
            except StorageError as error:
                code, status = _cause_code(error)
                if code == "PreconditionFailed" or status == 412:
                    raise ObjectExistsError(key) from None
                if code == "NotImplemented" or status == 501:
                    self._conditional_writes = False
                    self._put_new_unconditional(key, data)
                    return
                # S3 answers 409 to a conditional write racing another on the same key and asks
                # for a retry (which then succeeds or gets 412); botocore does not retry a 409.
                if code != "ConditionalRequestConflict" or attempt == self._max_attempts:
                    raise
            self._backoff(attempt)

    def _put_new_unconditional(self, key: str, data: bytes | memoryview) -> None:
        if self.exists(key):
            raise ObjectExistsError(key)
        self._write("put_new", key, data, create_only=False)

    # -- reads ----------------------------------------------------------------------------

    def _read(self, operation: str, key: str, **params: Any) -> tuple[bytes, bool]:
        """GET an object and read its body, retrying failures while streaming it; tell if ranged."""
        for attempt in range(1, self._max_attempts + 1):
            response = self._call(operation, key, "get_object", Key=self._prefix + key, **params)
            try:
                data: bytes = response["Body"].read()
                return data, "ContentRange" in response
            except _BODY_ERRORS as error:
                if attempt == self._max_attempts:
                    raise self._translate(operation, key, error) from error
            finally:
                response["Body"].close()
            self._backoff(attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, key: str) -> bytes:
        """Return the whole object."""
        return self._read("get", validate_key(key))[0]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to length bytes from offset (fewer if the object ends first), via a Range GET."""
        validate_key(key)
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must be >= 0, got offset={offset} length={length}")
        if length == 0:
            self.stat(key)  # HTTP cannot express an empty range, but a missing key must still raise.
            return b""
        try:
            data, ranged = self._read("get_range", key, Range=f"bytes={offset}-{offset + length - 1}")
        except StorageError as error:
            if _cause_code(error)[0] == "InvalidRange":
                return b""  # The range starts at or past the end of the object.
            raise
        # A server may ignore Range and send the whole object; cut the range out ourselves.
        return data if ranged else data[offset : offset + length]

    def stat(self, key: str) -> ObjectInfo:
        """Return size and modification time."""
        validate_key(key)
        try:
            response = self._call("stat", key, "head_object", Key=self._prefix + key)
        except ObjectNotFoundError:
            raise self._not_found(key) from None
        return ObjectInfo(
            key=key, size=int(response["ContentLength"]), modified=response["LastModified"].timestamp()
        )

    def exists(self, key: str) -> bool:
        """Tell whether key exists."""
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove key; S3 treats deleting a missing key as success."""
        validate_key(key)
        self._call("delete", key, "delete_object", Key=self._prefix + key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with prefix, with the store prefix stripped."""
        validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix))
        while True:
            try:
                page = next(pages, None)
            except (ClientError, BotoCoreError) as error:
                raise self._translate("list", prefix, error) from error
            if page is None:
                return
            for item in page.get("Contents", []):
                key = item["Key"][len(self._prefix) :]
                if not key or key.endswith("/"):
                    continue  # "Folder" markers made by consoles and other tools are not objects.
                yield ObjectInfo(key=key, size=int(item["Size"]), modified=item["LastModified"].timestamp())
