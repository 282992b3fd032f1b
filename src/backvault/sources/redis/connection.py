"""Connecting to a Redis endpoint, and reading its RDB snapshot over the replication protocol.

Connection settings (``EndpointSpec.connection``)::

    host        "127.0.0.1" (default)
    port        6379 (default)
    username    ACL user (optional; the password alone authenticates the default user)
    tls         false (default)
    timeout     socket timeout in seconds (default 30)
    resources   "instance" (default): discovery lists the instance as one resource (name "")
                "databases": discovery lists every non-empty logical database ("0", "1", ...)

The password comes only from ``EndpointSpec.credentials["password"]``; it is sent in the AUTH
command and never appears in a message.

``RdbStream`` sends ``SYNC`` on a raw socket, as a replica does, and reads the bulk RDB that the
server answers with: the whole dataset, consistent at one instant, streamed straight into the
repository (nothing on the local disk). Without ``capa eof`` the server uses a disk-based sync,
so it starts the transfer at once instead of waiting for ``repl-diskless-sync-delay``.
"""

from __future__ import annotations

import io
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from backvault.sources.base import ConnectorError, EndpointSpec, Heartbeat

_RDB_MAGIC = b"REDIS"
_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class RedisSettings:
    """Where and how to connect; ``password`` is a secret and never shown."""

    name: str
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    timeout: float
    per_database: bool

    def __repr__(self) -> str:
        return f"RedisSettings(name={self.name!r}, host={self.host!r}, port={self.port})"

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"

    def elsewhere(self, host: str | None, port: int | None) -> RedisSettings:
        """The same credentials for another server (a restore target)."""
        return RedisSettings(
            self.name,
            host or self.host,
            port or self.port,
            self.username,
            self.password,
            self.tls,
            self.timeout,
            self.per_database,
        )


def settings_from(endpoint: EndpointSpec) -> RedisSettings:
    """Read and check the endpoint's connection settings."""
    connection = endpoint.connection
    try:
        port = int(connection.get("port", 6379))
        timeout = float(connection.get("timeout", 30))
    except (TypeError, ValueError):
        raise ConnectorError(f"Endpoint {endpoint.name!r}: port and timeout must be numbers.") from None
    mode = str(connection.get("resources", "instance"))
    if mode not in ("instance", "databases"):
        raise ConnectorError(
            f'Endpoint {endpoint.name!r}: resources={mode!r} is not valid; use "instance" or "databases".'
        )
    return RedisSettings(
        name=endpoint.name,
        host=str(connection.get("host", "127.0.0.1")),
        port=port,
        username=connection.get("username") or None,
        password=endpoint.credentials.get("password") or None,
        tls=bool(connection.get("tls", False)),
        timeout=timeout,
        per_database=mode == "databases",
    )


def open_client(settings: RedisSettings, db: int = 0) -> Any:
    """A client on logical database ``db`` (bytes in, bytes out; typed Any: redis-py's stubs assume str)."""
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=db,
        username=settings.username,
        password=settings.password,
        ssl=settings.tls,
        socket_timeout=settings.timeout,
        socket_connect_timeout=min(settings.timeout, 10.0),
        decode_responses=False,
        # One quick retry: redis-py's default (three, with backoff) makes a dead server take seconds.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 1),
    )


def explain(error: BaseException, settings: RedisSettings, doing: str) -> ConnectorError:
    """A ConnectorError naming what failed (redis-py's messages never contain the password)."""
    where = f"Redis endpoint {settings.name!r} ({settings.where})"
    if isinstance(error, redis.AuthenticationError) or "WRONGPASS" in str(error) or "NOAUTH" in str(error):
        return ConnectorError(
            f"{where} refused the credentials while {doing}: check the endpoint's username and password."
        )
    if "without any password configured" in str(error):
        return ConnectorError(
            f"{where} has no password set but the endpoint sends one while {doing}: remove the password "
            "from the endpoint's credentials."
        )
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
        return ConnectorError(
            f"Cannot reach {where} while {doing}: {error}. Check host, port and that it runs."
        )
    return ConnectorError(f"{where} failed while {doing}: {error}")


REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class RdbStream(io.RawIOBase):
    """The server's RDB file, read from a ``SYNC`` reply; use as a context manager."""

    def __init__(self, settings: RedisSettings, heartbeat: Heartbeat, *, base: int = 0) -> None:
        super().__init__()
        self.settings = settings
        self.heartbeat = heartbeat
        self.base = base
        self.size: int | None = None
        self.bytes_read = 0
        self._socket: socket.socket | None = None
        self._reader: Any = None
        self._done = False
        self._first = b""
        self._last_beat = time.monotonic()

    def __enter__(self) -> RdbStream:
        self._connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the replication connection (the server forgets the 'replica')."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        super().close()

    def readable(self) -> bool:
        """Always True."""
        return True

    def _connect(self) -> None:
        settings = self.settings
        try:
            raw = socket.create_connection(
                (settings.host, settings.port), timeout=min(settings.timeout, 10.0)
            )
            raw.settimeout(settings.timeout)
            if settings.tls:
                raw = ssl.create_default_context().wrap_socket(raw, server_hostname=settings.host)
            self._socket = raw
            self._reader = raw.makefile("rb")
            if settings.password:
                words = [b"AUTH"] + ([settings.username.encode()] if settings.username else [])
                self._command([*words, settings.password.encode()])
                self._expect_ok("authenticating")
            self._command([b"SYNC"])
            header = self._read_header()
            # A plain SYNC (no "capa eof") always gets a sized, disk-based transfer: "$<length>".
            if not header.startswith(b"$") or not header[1:].isdigit():
                raise ConnectorError(
                    f"{settings.where} answered SYNC with {header[:80]!r}, not an RDB transfer."
                )
            self.size = int(header[1:])
        except OSError as error:
            self.close()
            raise explain(error, settings, "starting the RDB transfer") from None
        except BaseException:
            self.close()
            raise

    def _command(self, words: list[bytes]) -> None:
        assert self._socket is not None
        parts = [b"*%d\r\n" % len(words)] + [b"$%d\r\n%s\r\n" % (len(word), word) for word in words]
        self._socket.sendall(b"".join(parts))

    def _expect_ok(self, doing: str) -> None:
        line = self._reader.readline().rstrip(b"\r\n")
        if not line.startswith(b"+"):
            # The reply may mention the user name but never the password.
            raise explain(
                redis.ResponseError(line.decode(errors="replace").lstrip("-")), self.settings, doing
            )

    def _read_header(self) -> bytes:
        while True:
            line: bytes = self._reader.readline()
            if not line:
                raise ConnectorError(
                    f"{self.settings.where} closed the connection before sending its RDB; its log says why "
                    "(a disk-based sync needs a writable dir). Set BackupOptions "
                    '{"RdbSnapshot": "false"} to save keys only.'
                )
            line = line.rstrip(b"\r\n")
            if not line:  # keep-alive newlines while the server writes its RDB
                self._beat()
                continue
            if line.startswith(b"-"):
                message = line[1:].decode(errors="replace")
                if "NOPERM" in message or "NOAUTH" in message:
                    raise ConnectorError(
                        f"{self.settings.where} does not let this user run SYNC ({message}). Grant it the "
                        'sync command, or set BackupOptions {"RdbSnapshot": "false"} to save keys only.'
                    )
                raise ConnectorError(f"{self.settings.where} refused SYNC: {message}")
            return line

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= 2.0:
            self._last_beat = now
            self.heartbeat(self.base + self.bytes_read)

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next RDB bytes; 0 at the end of the RDB."""
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        try:
            data = self._next_bytes(min(len(view), _READ_SIZE))
        except OSError as error:
            raise explain(error, self.settings, "reading the RDB") from None
        if not data:
            self._done = True
            return 0
        if not self._first:
            self._first = bytes(data[: len(_RDB_MAGIC)])
            if self._first != _RDB_MAGIC[: len(self._first)]:
                raise ConnectorError(f"{self.settings.where} sent data that is not an RDB file.")
        view[: len(data)] = data
        self.bytes_read += len(data)
        self._beat()
        return len(data)

    def _next_bytes(self, wanted: int) -> bytes:
        assert self.size is not None
        left = self.size - self.bytes_read
        if left <= 0:
            return b""
        # read1 never reads past the RDB into the replication stream that follows it.
        data: bytes = self._reader.read1(min(wanted, left))
        if not data:
            raise ConnectorError(
                f"The RDB transfer from {self.settings.where} was cut after {self.bytes_read} of "
                f"{self.size} bytes; run the backup again."
            )
        return data
