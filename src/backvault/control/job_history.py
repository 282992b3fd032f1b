"""A job's step history rendered like AWS Step Functions' GetExecutionHistory."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from backvault.control.catalog.activity import Job
from backvault.control.job_core import JobState


def execution_history(job: Job) -> dict[str, Any]:
    """Render a job's steps like Step Functions' GetExecutionHistory: {"events": [...]} with ids and links."""
    events: list[dict[str, Any]] = []

    def add(kind: str, timestamp: datetime | None, **details: Any) -> None:
        event: dict[str, Any] = {
            "timestamp": timestamp,
            "type": kind,
            "id": len(events) + 1,
            "previousEventId": len(events),
        }
        event.update(details)
        events.append(event)

    started = job.started_date or job.creation_date
    add(
        "ExecutionStarted",
        started,
        executionStartedEventDetails={
            "input": _history_input(job),
            "roleArn": job.parameters.get("IamRoleArn"),
        },
    )
    resource = f"backvault:{str(job.job_type).lower()}-job"
    for step in job.steps or []:
        name = str(step.get("Name"))
        add("TaskStateEntered", _parsed(step.get("StartDate")), stateEnteredEventDetails={"name": name})
        status = step.get("Status")
        ended = _parsed(step.get("EndDate"))
        if status == "SUCCEEDED":
            add(
                "TaskSucceeded",
                ended,
                taskSucceededEventDetails={"resourceType": "backvault", "resource": resource},
            )
            add("TaskStateExited", ended, stateExitedEventDetails={"name": name})
        elif status == "FAILED":
            error = str(step.get("Error") or "")
            add(
                "TaskFailed",
                ended,
                taskFailedEventDetails={
                    "resourceType": "backvault",
                    "resource": resource,
                    "error": error.split(":", 1)[0] if error else "Error",
                    "cause": error,
                },
            )
    state = JobState(job.state)
    if state in (JobState.COMPLETED, JobState.PARTIAL):
        add("ExecutionSucceeded", job.completion_date, executionSucceededEventDetails={"output": state.value})
    elif state == JobState.FAILED:
        add(
            "ExecutionFailed",
            job.completion_date,
            executionFailedEventDetails={"error": "JobFailed", "cause": job.status_message or ""},
        )
    elif state == JobState.ABORTED:
        add(
            "ExecutionAborted",
            job.completion_date,
            executionAbortedEventDetails={"error": "JobAborted", "cause": job.status_message or ""},
        )
    elif state == JobState.EXPIRED:
        add(
            "ExecutionTimedOut",
            job.completion_date,
            executionTimedOutEventDetails={"error": "StartWindowExpired", "cause": job.status_message or ""},
        )
    return {"events": events}


def _history_input(job: Job) -> str:
    document = {
        "JobId": job.id,
        "JobType": job.job_type,
        "ResourceArn": job.resource_arn,
        "BackupVaultName": job.vault_name,
    }
    return json.dumps({key: value for key, value in document.items() if value is not None}, sort_keys=True)


def _parsed(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None
