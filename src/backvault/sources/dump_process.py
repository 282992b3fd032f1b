"""Run a dump or load tool as a child process and stream its output into (or its input from) the repository.

Database connectors back up by piping a tool's stdout (pg_dump, mariadb-dump) straight into
``StreamSnapshot.add_stream``: nothing is written to local disk. While bytes flow the job's heartbeat
is called; when it raises ``ConnectorStopped`` the tool is killed at once and the exception goes on,
so the snapshot is never committed. A tool that exits non-zero becomes a ``ConnectorError`` whose
message is a short summary of its stderr.

Secrets reach the tool through its environment (``PGPASSWORD``, ``MYSQL_PWD``) or a 0600 option file,
never argv (visible to every local user in ``ps``); ``redact`` removes them from any message anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import BinaryIO, cast

from backvault.sources.base import ConnectorError, Heartbeat, no_heartbeat

# How often, at most, a streaming tool calls the job's heartbeat (the first block always does).
HEARTBEAT_INTERVAL = 2.0
# Bytes of stderr kept for the error summary (the tail is what names the failure).
_STDERR_KEPT = 64 * 1024
_SUMMARY_LINES = 6
_SUMMARY_CHARS = 800
_COPY_BLOCK = 1 << 20
_PIPE_SIZE = 1 << 20
# Inherited variables that would silently change where or how a tool connects.
_CONNECTION_PREFIXES = ("PG", "MYSQL", "MARIADB")


def tool_path(candidates: Sequence[str], purpose: str) -> str:
    """Return the first of ``candidates`` found on PATH, or ConnectorError saying what to install."""
    for name in candidates:
        found = shutil.which(name)
        if found is not None:
            return found
    raise ConnectorError(
        f"{purpose} needs one of these programs on PATH: {', '.join(candidates)}; install the database "
        "client tools on this worker."
    )


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The tool's environment: ours without connection-changing variables, plus ``extra`` (secrets)."""
    environment = {
        key: value for key, value in os.environ.items() if not key.upper().startswith(_CONNECTION_PREFIXES)
    }
    environment.update(extra)
    environment.setdefault("LC_ALL", "C.UTF-8")
    return environment


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text`` with ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def summarize(stderr: str, secrets: Iterable[str] = ()) -> str:
    """A short, single-paragraph summary of a tool's stderr: the error lines, else the last lines."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if any(word in line.lower() for word in ("error", "fatal", "denied"))]
    chosen = (errors or lines)[-_SUMMARY_LINES:]
    text = redact(" | ".join(chosen), secrets) or "no error output"
    if len(text) > _SUMMARY_CHARS:
        text = "..." + text[-_SUMMARY_CHARS:]
    return text


class HeartbeatReader:
    """Wraps a binary stream: calls the heartbeat with the running byte count as it is read."""

    def __init__(self, stream: BinaryIO, heartbeat: Heartbeat, *, bytes_before: int = 0) -> None:
        self._stream = stream
        self._heartbeat = heartbeat
        self._bytes_before = bytes_before
        self._last_beat = float("-inf")
        self.bytes_read = 0

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` from the stream; 0 at its end."""
        count = int(self._stream.readinto(buffer) or 0)  # type: ignore[attr-defined]
        self.count(count)
        return count

    def as_stream(self) -> BinaryIO:
        """This reader typed as the binary stream ``StreamSnapshot.add_stream`` takes (it needs readinto)."""
        return cast(BinaryIO, self)

    def count(self, new_bytes: int) -> None:
        """Add bytes read, then ``tick``."""
        self.bytes_read += new_bytes
        if new_bytes:
            self.tick()

    def tick(self) -> None:
        """Beat if HEARTBEAT_INTERVAL seconds passed since the last beat (the first call always beats)."""
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_INTERVAL:
            self._last_beat = now
            self._heartbeat(self._bytes_before + self.bytes_read)


class _StderrTail:
    """Drains a pipe in a thread (a full pipe would block the tool) and keeps its last bytes."""

    def __init__(self, pipe: BinaryIO) -> None:
        self._pipe = pipe
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._drain, name="stderr-tail", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while (
                block := self._pipe.read1(65536) if hasattr(self._pipe, "read1") else self._pipe.read(65536)
            ):
                self._kept += block
                if len(self._kept) > _STDERR_KEPT:
                    del self._kept[: len(self._kept) - _STDERR_KEPT]

    def text(self) -> str:
        """Everything kept, once the tool closed its end of the pipe."""
        self._thread.join(timeout=10)
        return self._kept.decode("utf-8", "replace")

    def close(self) -> None:
        """Wait for the drain to end (the tool has exited) and close our end of the pipe."""
        self._thread.join(timeout=10)
        self._pipe.close()


class DumpProcess:
    """A dump tool whose stdout is read as a stream; use as a context manager, then call ``finish``.

    ``readinto`` makes it a raw stream for ``StreamSnapshot.add_stream`` (through ``as_stream()``).
    Leaving the context without ``finish`` (an error, a stop) kills the tool.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        tool: str,
        environment: Mapping[str, str],
        heartbeat: Heartbeat = no_heartbeat,
        secrets: Iterable[str] = (),
        bytes_before: int = 0,
    ) -> None:
        self.argv = list(argv)
        self.tool = tool
        self.environment = dict(environment)
        self.heartbeat = heartbeat
        self.secrets = [secret for secret in secrets if secret]
        self._bytes_before = bytes_before  # reported to the heartbeat as a running total
        self._reader: HeartbeatReader | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: _StderrTail | None = None

    def __enter__(self) -> DumpProcess:
        try:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.environment,
                start_new_session=True,  # a kill reaches the tool's own children too
                # unbuffered: a read returns what the tool wrote so far instead of waiting for megabytes
                bufsize=0,
            )
        except OSError as error:
            raise ConnectorError(f"could not start {self.tool}: {error.strerror or error}") from None
        assert self._process.stderr is not None
        self._stderr = _StderrTail(self._process.stderr)  # type: ignore[arg-type]
        assert self._process.stdout is not None
        _widen_pipe(self._process.stdout.fileno())
        self._reader = HeartbeatReader(
            self._process.stdout,  # type: ignore[arg-type]
            self.heartbeat,
            bytes_before=self._bytes_before,
        )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.kill()

    def readinto(self, buffer: memoryview) -> int:
        """Read the tool's next output bytes into ``buffer``; 0 at its end."""
        process, reader = self._require_process(), self._reader
        assert process.stdout is not None and reader is not None
        try:
            # a tool may be silent for long (waiting on a lock): the lease is renewed meanwhile
            while not select.select([process.stdout], [], [], HEARTBEAT_INTERVAL)[0]:
                reader.tick()
            return reader.readinto(buffer)
        except BaseException:
            self.kill()  # a stop or a read error ends the job: stop the tool before anything else
            raise

    def as_stream(self) -> BinaryIO:
        """The tool's output as the binary stream ``StreamSnapshot.add_stream`` takes."""
        return cast(BinaryIO, self)

    @property
    def bytes_read(self) -> int:
        """Bytes of output read so far."""
        return self._reader.bytes_read if self._reader else 0

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all remaining when negative)."""
        if size < 0:
            parts = []
            while block := self.read(_COPY_BLOCK):
                parts.append(block)
            return b"".join(parts)
        buffer = bytearray(size)
        count = self.readinto(memoryview(buffer))
        return bytes(buffer[:count])

    def finish(self, timeout: float = 60.0) -> None:
        """Wait for the tool to exit; ConnectorError with its stderr summarised if it failed."""
        process = self._require_process()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ConnectorError(
                f"{self.tool} did not exit within {timeout:.0f} s after its output ended"
            ) from None
        if code != 0:
            raise ConnectorError(f"{self.tool} failed ({_exit_reason(code)}): {self.stderr_summary()}")

    def stderr_summary(self) -> str:
        """A short summary of what the tool wrote to stderr."""
        return summarize(self._stderr.text() if self._stderr else "", self.secrets)

    def kill(self) -> None:
        """Kill the tool (and its process group) if it still runs, and reap it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("use DumpProcess as a context manager")
        return self._process


def run_with_input(
    argv: Sequence[str],
    source: BinaryIO,
    *,
    tool: str,
    environment: Mapping[str, str],
    heartbeat: Heartbeat = no_heartbeat,
    secrets: Iterable[str] = (),
) -> int:
    """Feed ``source`` to a load tool's stdin (pg_restore, mariadb); returns the bytes written.

    A heartbeat that raises kills the tool; a tool that exits non-zero (or stops reading early)
    raises ConnectorError with its stderr summarised.
    """
    secrets = [secret for secret in secrets if secret]
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(environment),
            start_new_session=True,
            bufsize=0,  # written through the descriptor below
        )
    except OSError as error:
        raise ConnectorError(f"could not start {tool}: {error.strerror or error}") from None
    assert process.stdin is not None and process.stderr is not None
    stderr = _StderrTail(process.stderr)  # type: ignore[arg-type]
    beats = HeartbeatReader(source, heartbeat)
    broken = False
    try:
        descriptor = process.stdin.fileno()
        os.set_blocking(descriptor, False)  # so that a tool busy elsewhere never blocks the heartbeat
        while not broken and (block := source.read(_COPY_BLOCK)):
            broken = not _write_all(descriptor, block, beats)
            beats.count(len(block))
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        while True:  # building indexes after the last byte may take long: keep beating
            try:
                code = process.wait(timeout=HEARTBEAT_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                beats.tick()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            process.stdin.close()
        stderr.close()
    if code != 0 or broken:
        summary = summarize(stderr.text(), secrets)
        reason = _exit_reason(code) if code != 0 else "stopped reading its input"
        raise ConnectorError(f"{tool} failed ({reason}): {summary}")
    return beats.bytes_read


def _write_all(descriptor: int, data: bytes, beats: HeartbeatReader) -> bool:
    """Write ``data`` to a non-blocking pipe, beating while it is full; False if the reader went away."""
    view = memoryview(data)
    while view:
        if not select.select([], [descriptor], [], HEARTBEAT_INTERVAL)[1]:
            beats.tick()
            continue
        try:
            view = view[os.write(descriptor, view) :]
        except BlockingIOError:
            continue
        except BrokenPipeError:
            return False  # the tool exited early; its exit code and stderr say why
    return True


def _widen_pipe(descriptor: int) -> None:
    # Linux pipes hold 64 KiB by default; 1 MiB means fewer wake-ups per chunk (best effort).
    set_pipe_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_pipe_size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(descriptor, set_pipe_size, _PIPE_SIZE)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
