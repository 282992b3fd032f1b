"""Structured logs: one JSON object per line, carrying the id of the job being run.

The worker sets ``job_context`` around each job, so every log line written while it runs - by the
engine, a connector or the repository - names the job without anyone passing the id around.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

current_job_id: ContextVar[str | None] = ContextVar("backvault_job_id", default=None)

_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log record written inside the block with ``job_id``."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: time, level, logger, message, job id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object on one line."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = current_job_id.get()
        if job_id is not None:
            document["job_id"] = job_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(*, level: str = "INFO", json_lines: bool = True, stream: TextIO | None = None) -> None:
    """Send backvault's logs to ``stream`` (stderr), as JSON lines or plain text."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("backvault")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
