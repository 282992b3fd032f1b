"""Prometheus metrics reflect the catalog: jobs, durations, bytes, protection and leases."""

from __future__ import annotations

import uuid
from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from backvault.control.catalog.activity import Job, Lease
from backvault.control.catalog.models import ProtectedResource
from backvault.control.context import ServiceContext
from backvault.control.metrics import render_metrics

ARN = "arn:aws:backvault:local:000000000000:filesystem:files/{}"


def _samples(context: ServiceContext) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = render_metrics(context).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _job(context: ServiceContext, state: str, minutes: int, read: int, stored: int, **extra: object) -> Job:
    now = context.now()
    return Job(
        id=str(uuid.uuid4()),
        job_type="BACKUP",
        state=state,
        creation_date=now - timedelta(minutes=minutes + 1),
        started_date=now - timedelta(minutes=minutes),
        completion_date=now if state in ("COMPLETED", "FAILED") else None,
        backup_size_in_bytes=read,
        bytes_transferred=stored,
        **extra,
    )


def test_metrics_follow_the_catalog(context: ServiceContext) -> None:
    now = context.now()
    with context.catalog.transaction() as session:
        session.add(_job(context, "COMPLETED", 2, 1000, 250))
        session.add(_job(context, "COMPLETED", 30, 3000, 750))
        session.add(_job(context, "FAILED", 1, 0, 0))
        session.add(
            _job(context, "RUNNING", 5, 0, 0, lease_owner="w1", lease_expires_at=now + timedelta(seconds=30))
        )
        session.add(
            ProtectedResource(
                arn=ARN.format("a"),
                resource_type="Filesystem",
                resource_name="a",
                creation_date=now - timedelta(days=3),
                last_backup_time=now - timedelta(hours=1),
            )
        )
        session.add(
            ProtectedResource(
                arn=ARN.format("b"),
                resource_type="Filesystem",
                resource_name="b",
                creation_date=now - timedelta(hours=5),
            )
        )
        session.add(
            Lease(name="scheduler", owner="s1", expires_at=now + timedelta(seconds=20), acquired_at=now)
        )
    samples = _samples(context)
    assert samples[("backvault_jobs", (("state", "COMPLETED"), ("type", "BACKUP")))] == 2
    assert samples[("backvault_jobs", (("state", "RUNNING"), ("type", "BACKUP")))] == 1
    # 2 min and 30 min: one in the 300 s bucket, both by 3600 s
    assert samples[("backvault_job_duration_seconds_bucket", (("le", "300.0"), ("type", "BACKUP")))] == 2
    assert samples[("backvault_job_duration_seconds_bucket", (("le", "60.0"), ("type", "BACKUP")))] == 1
    assert samples[("backvault_job_duration_seconds_count", (("type", "BACKUP"),))] == 3
    assert samples[("backvault_backup_bytes_read", ())] == 4000
    assert samples[("backvault_backup_bytes_stored", ())] == 1000
    assert samples[("backvault_dedup_ratio", ())] == 4.0
    stamp = samples[
        (
            "backvault_last_successful_backup_timestamp_seconds",
            (("resource_arn", ARN.format("a")), ("resource_type", "Filesystem")),
        )
    ]
    assert stamp == (now - timedelta(hours=1)).timestamp()
    assert samples[("backvault_unprotected_resources", ())] == 1
    assert samples[("backvault_oldest_unprotected_resource_seconds", ())] == 5 * 3600
    assert samples[("backvault_running_jobs_by_lease", (("lease", "live"),))] == 1
    assert samples[("backvault_busy_workers", ())] == 1
    assert samples[("backvault_lease_remaining_seconds", (("name", "scheduler"),))] == 20


def test_metrics_of_an_empty_catalog_render(context: ServiceContext) -> None:
    samples = _samples(context)
    assert samples[("backvault_dedup_ratio", ())] == 0
    assert samples[("backvault_unprotected_resources", ())] == 0
