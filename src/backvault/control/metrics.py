"""Prometheus metrics, computed from the catalog when scraped.

Every number comes from the catalog rather than from counters in one process: a deployment runs a
server and any number of workers on several machines, and whichever of them serves ``/metrics`` must
report the whole installation. Queries are aggregates over indexed columns, cheap enough per scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Job, Lease
from backvault.control.catalog.models import ProtectedResource
from backvault.control.context import ServiceContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# Durations are histogrammed over recent jobs only, so a scrape stays cheap on a long history.
DURATION_WINDOW = timedelta(days=7)


class CatalogCollector(Collector):
    """Collects backvault's metrics from the catalog at scrape time."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (one catalog transaction per scrape)."""
        now = self.context.now()
        with self.context.catalog.transaction() as session:
            yield _jobs_by_state(session)
            yield _job_durations(session, now)
            yield from _bytes(session)
            yield from _resources(session, now)
            yield from _leases(session, now)
            yield from _restore_tests(session)


def render_metrics(context: ServiceContext) -> bytes:
    """Return the metrics in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector(context))
    return generate_latest(registry)


def _jobs_by_state(session: Session) -> Metric:
    family = GaugeMetricFamily("backvault_jobs", "Jobs by type and state.", labels=["type", "state"])
    rows = session.execute(select(Job.job_type, Job.state, func.count()).group_by(Job.job_type, Job.state))
    for job_type, state, count in rows:
        family.add_metric([job_type, state], count)
    return family


def _job_durations(session: Session, now: datetime) -> Metric:
    family = HistogramMetricFamily(
        "backvault_job_duration_seconds", "Run time of jobs finished in the last 7 days.", labels=["type"]
    )
    rows = session.execute(
        select(Job.job_type, Job.started_date, Job.completion_date).where(
            Job.completion_date >= now - DURATION_WINDOW, Job.started_date.is_not(None)
        )
    )
    durations: dict[str, list[float]] = {}
    for job_type, started, completed in rows:
        if started is not None and completed is not None:
            durations.setdefault(job_type, []).append(max((completed - started).total_seconds(), 0.0))
    for job_type, values in sorted(durations.items()):
        buckets = [(_bucket_label(bound), sum(1 for v in values if v <= bound)) for bound in DURATION_BUCKETS]
        buckets.append(("+Inf", len(values)))
        family.add_metric([job_type], buckets, sum_value=sum(values))
    return family


def _bucket_label(bound: float) -> str:
    return repr(bound)


def _bytes(session: Session) -> Iterator[Metric]:
    # backup_size_in_bytes is what the source had (read); bytes_transferred what was newly stored.
    read, stored = session.execute(
        select(
            func.coalesce(func.sum(Job.backup_size_in_bytes), 0),
            func.coalesce(func.sum(Job.bytes_transferred), 0),
        ).where(Job.job_type == "BACKUP", Job.state.in_(("COMPLETED", "PARTIAL")))
    ).one()
    yield GaugeMetricFamily(
        "backvault_backup_bytes_read", "Bytes read from sources by finished backups.", read
    )
    yield GaugeMetricFamily(
        "backvault_backup_bytes_stored",
        "Bytes newly stored (after dedup and compression) by backups.",
        stored,
    )
    ratio = float(read) / float(stored) if stored else 0.0
    yield GaugeMetricFamily(
        "backvault_dedup_ratio", "Bytes read per byte stored across finished backups (0 before any).", ratio
    )


def _resources(session: Session, now: datetime) -> Iterator[Metric]:
    last = GaugeMetricFamily(
        "backvault_last_successful_backup_timestamp_seconds",
        "When each protected resource was last backed up (Unix time).",
        labels=["resource_arn", "resource_type"],
    )
    oldest = 0.0
    unprotected = 0
    for arn, resource_type, backed_up, created in session.execute(
        select(
            ProtectedResource.arn,
            ProtectedResource.resource_type,
            ProtectedResource.last_backup_time,
            ProtectedResource.creation_date,
        )
    ):
        if backed_up is not None:
            last.add_metric([arn, resource_type], backed_up.timestamp())
        else:
            unprotected += 1
            oldest = max(oldest, (now - created).total_seconds())
    yield last
    yield GaugeMetricFamily(
        "backvault_unprotected_resources", "Discovered resources without any backup yet.", unprotected
    )
    yield GaugeMetricFamily(
        "backvault_oldest_unprotected_resource_seconds",
        "How long the longest-unprotected discovered resource has gone without a backup.",
        oldest,
    )


def _leases(session: Session, now: datetime) -> Iterator[Metric]:
    running = GaugeMetricFamily(
        "backvault_running_jobs_by_lease", "Running jobs whose lease is live or expired.", labels=["lease"]
    )
    live = expired = 0
    for expires_at, count in session.execute(
        select(Job.lease_expires_at, func.count())
        .where(Job.state.in_(("RUNNING", "ABORTING")))
        .group_by(Job.lease_expires_at)
    ):
        if expires_at is not None and expires_at > now:
            live += count
        else:
            expired += count
    running.add_metric(["live"], live)
    running.add_metric(["expired"], expired)
    yield running
    workers = session.scalar(
        select(func.count(func.distinct(Job.lease_owner))).where(
            Job.state.in_(("RUNNING", "ABORTING")), Job.lease_expires_at > now
        )
    )
    yield GaugeMetricFamily("backvault_busy_workers", "Workers holding a live job lease.", workers or 0)
    leader = GaugeMetricFamily(
        "backvault_lease_remaining_seconds",
        "Seconds left on each named lease (scheduler leader).",
        labels=["name"],
    )
    for name, expires_at in session.execute(select(Lease.name, Lease.expires_at)):
        leader.add_metric([name], (expires_at - now).total_seconds())
    yield leader


def _restore_tests(session: Session) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "backvault_restore_tests", "Restore jobs run as restore tests, by final state.", labels=["state"]
    )
    rows = session.execute(
        select(Job.state, func.count())
        .where(Job.job_type == "RESTORE", Job.parameters["RestoreTestingPlanName"].as_string().is_not(None))
        .group_by(Job.state)
    )
    for state, count in rows:
        family.add_metric([state], count)
    yield family
