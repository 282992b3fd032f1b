"""Structured logs are JSON lines that carry the running job's id."""

from __future__ import annotations

import io
import json
import logging

from backvault.control.logs import configure_logging, job_context


def test_log_lines_are_json_with_the_job_id_inside_a_job_only() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    logger = logging.getLogger("backvault.test")
    try:
        with job_context("job-42"):
            logger.info("backing up %s", "files", extra={"resource_arn": "arn:x"})
        logger.warning("outside")
    finally:
        logging.getLogger("backvault").handlers.clear()
        logging.getLogger("backvault").propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "backing up files" and first["job_id"] == "job-42"
    assert first["resource_arn"] == "arn:x" and first["level"] == "INFO"
    assert "job_id" not in second and second["level"] == "WARNING"
