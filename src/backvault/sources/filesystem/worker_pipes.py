"""Talking to worker processes over their stdin/stdout pipes (length-prefixed pickles).

A worker is a fresh interpreter (`python -m` its module): nothing of the parent's
threads, index or main module comes along. Secrets (the master secret) travel in the
pipe, never in argv or the environment, and the environment a worker gets has
anything that looks like a secret removed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
from typing import IO, Any

_LENGTH = struct.Struct("<Q")
_SECRET_WORDS = ("PASSWORD", "PASSPHRASE", "SECRET", "TOKEN", "CREDENTIAL")


def send(stream: IO[bytes], message: object) -> None:
    """Write one message and flush it."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def worker_environment() -> dict[str, str]:
    """The parent's environment without anything that looks like a secret (a worker needs none)."""
    return {
        name: value
        for name, value in os.environ.items()
        if not any(word in name.upper() for word in _SECRET_WORDS)
    }


def serving_pipes() -> tuple[IO[bytes], IO[bytes]]:
    """In a worker: (inbound, outbound); stdout is moved aside so a stray print cannot corrupt answers."""
    outbound = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return sys.stdin.buffer, outbound


class WorkerProcess:
    """One worker process (`python -m module`) and its pipes; setup is its first message."""

    def __init__(self, module: str, setup: object) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=worker_environment(),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.inbound: IO[bytes] = self.process.stdout
        self.outbound: IO[bytes] = self.process.stdin
        send(self.outbound, setup)

    def ask(self, message: object) -> Any:
        """Send one message and return the answer (None when the worker has exited)."""
        send(self.outbound, message)
        return receive(self.inbound)

    def stop(self, *, kill: bool = False) -> None:
        """End the worker: ask it to exit (closing its stdin), or kill it."""
        if kill:
            self.process.kill()
        with contextlib.suppress(OSError):  # the worker is gone already
            self.outbound.close()
        self.process.wait()
        self.inbound.close()
