"""Discovery: keep the protected-resources table in step with what the endpoints hold.

``discover_endpoint`` asks an endpoint's connector for its resources and upserts one
``ProtectedResource`` row per resource: ARN (built from the endpoint, the region being the default
location), native tags (the endpoint's defaults overlaid by the resource's own) and
``last_seen_date``. Each run stamps the endpoint's ``last_discovery_date`` with the same instant it
stamps on every resource it saw, so a resource is *vanished* exactly when its ``last_seen_date`` is
older than its endpoint's last discovery: such rows are kept (their recovery points outlive them,
as in AWS) and reported once with RESOURCE_VANISHED; new and reappearing ones get
RESOURCE_DISCOVERED. An endpoint ``discover_all`` cannot discover keeps its resources as they were
and gets one SOURCE_ENDPOINT_DISCOVERY_FAILED event per outage (the first failure since its last
successful discovery).

Scratch copies of restore tests are never discovered, so they are never backed up or counted as
unprotected while a test holds them (they may carry the original's tags): names starting with
``bvtest-`` are reserved for them, and a copy under another name (a Redis database the restore chose)
is recognised by its restore job's CreatedResourceArn until its test is finished.

S3 bucket ARNs carry no endpoint (``arn:aws:s3:::BUCKET``), so a bucket of the same name behind two
endpoints would be two resources under one ARN: the second endpoint's discovery is refused while
the first still sees the bucket.

``list_protected_resources`` and ``describe_protected_resource`` answer AWS's ListProtectedResources
and DescribeProtectedResource: as in AWS, a resource counts as *protected* once it has a recovery
point. ``list_discovered_resources`` is backvault's inventory of everything discovery knows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import Event, Job, RecoveryPoint
from backvault.control.catalog.models import ProtectedResource, SourceEndpoint
from backvault.control.catalog.restore_testing_models import SCRATCH_PREFIX, TEST_COMPLETED, RestoreTest
from backvault.control.context import ServiceContext
from backvault.control.endpoints import endpoint_spec, get_endpoint_row
from backvault.control.events import EventType, record_event
from backvault.control.pagination import paginate
from backvault.domain.arn import ResourceType, build_resource_arn, parse_resource_arn
from backvault.domain.errors import (
    BackupServiceError,
    DependencyFailureException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_str,
)
from backvault.sources.base import ConnectorError, DiscoveredResource, get_connector

logger = logging.getLogger(__name__)

# Resource types whose ARN does not name the endpoint.
_GLOBAL_TYPES = (ResourceType.S3, ResourceType.DYNAMODB)


def discover_endpoint(context: ServiceContext, endpoint_name: str) -> dict[str, Any]:
    """Discover one endpoint's resources and update the catalog; return what changed."""
    spec = endpoint_spec(context, endpoint_name)
    try:
        found = get_connector(spec.endpoint_type).discover(spec)
    except ConnectorError as error:
        raise DependencyFailureException(
            f"Discovery of source endpoint {spec.name!r} failed: {error}"
        ) from None
    arn_context = context.arn_context()
    by_arn: dict[str, DiscoveredResource] = {}
    for resource in found:
        endpoint = None if spec.endpoint_type in _GLOBAL_TYPES else spec.name
        arn = build_resource_arn(arn_context, spec.endpoint_type, endpoint, resource.name)
        if arn in by_arn:
            raise DependencyFailureException(
                f"Discovery of source endpoint {spec.name!r} returned {resource.name!r} twice ({arn})."
            )
        by_arn[arn] = resource
    with context.catalog.transaction() as session:
        endpoint_row = get_endpoint_row(session, spec.name, for_update=True)
        scratch = _scratch_copies(session, spec.name)
        kept = {
            arn: item for arn, item in by_arn.items() if arn not in scratch and not _scratch_name(item.name)
        }
        return _reconcile(session, context, endpoint_row, kept)


def _scratch_name(name: str) -> bool:
    return name.rstrip("/").rsplit("/", 1)[-1].startswith(SCRATCH_PREFIX)


def _scratch_copies(session: Session, endpoint_name: str) -> set[str]:
    """ARNs of the copies that unfinished restore tests restored behind this endpoint."""
    parameters = session.scalars(
        select(Job.parameters)
        .join(RestoreTest, RestoreTest.restore_job_id == Job.id)
        .where(RestoreTest.endpoint_name == endpoint_name, RestoreTest.state != TEST_COMPLETED)
    )
    return {str(item["CreatedResourceArn"]) for item in parameters if item and item.get("CreatedResourceArn")}


def discover_all(context: ServiceContext) -> dict[str, Any]:
    """Discover every endpoint; one failing endpoint is reported and does not stop the others."""
    with context.catalog.transaction() as session:
        names = list(session.scalars(select(SourceEndpoint.name).order_by(SourceEndpoint.name)))
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for name in names:
        try:
            results.append(discover_endpoint(context, name))
        except ResourceNotFoundException:
            continue  # deleted meanwhile
        except BackupServiceError as error:
            logger.warning("discovery of endpoint %s failed: %s", name, error.message)
            errors.append({"EndpointName": name, "ErrorCode": error.code, "Message": error.message})
            _record_failure(context, name, error)
    return {"Endpoints": results, "Errors": errors}


def _record_failure(context: ServiceContext, endpoint_name: str, error: BackupServiceError) -> None:
    """Record SOURCE_ENDPOINT_DISCOVERY_FAILED once per outage (the first failure since the last success)."""
    now = context.now()
    with context.catalog.transaction() as session:
        endpoint = session.get(SourceEndpoint, endpoint_name)
        if endpoint is None:
            return
        since = endpoint.last_discovery_date or endpoint.creation_date
        earlier = session.scalars(
            select(Event.detail).where(
                Event.event_type == EventType.SOURCE_ENDPOINT_DISCOVERY_FAILED.value,
                Event.occurred_at >= since,
            )
        )
        if any((detail or {}).get("EndpointName") == endpoint_name for detail in earlier):
            return  # already reported; the log keeps saying it on every failed attempt
        detail = {**_detail(endpoint), "ErrorCode": error.code, "Message": error.message}
        record_event(session, EventType.SOURCE_ENDPOINT_DISCOVERY_FAILED, now, detail=detail)


def _reconcile(
    session: Session,
    context: ServiceContext,
    endpoint: SourceEndpoint,
    found: Mapping[str, DiscoveredResource],
) -> dict[str, Any]:
    previous = endpoint.last_discovery_date
    # Strictly later than the previous run, even under a stopped or stepped-back clock, so "older than
    # the last discovery" always means "not seen by it".
    stamp = context.now()
    if previous is not None and stamp <= previous:
        stamp = previous + timedelta(microseconds=1)
    known = {
        row.arn: row
        for row in session.scalars(
            select(ProtectedResource).where(
                or_(ProtectedResource.endpoint_name == endpoint.name, ProtectedResource.arn.in_(list(found)))
            )
        )
    }
    new: list[str] = []
    for arn, resource in found.items():
        row = known.get(arn)
        tags = {**endpoint.default_tags, **resource.tags}
        if row is None:
            session.add(
                ProtectedResource(
                    arn=arn,
                    resource_type=endpoint.endpoint_type,
                    endpoint_name=endpoint.name,
                    resource_name=resource.name,
                    native_tags=tags,
                    creation_date=stamp,
                    last_seen_date=stamp,
                )
            )
            new.append(arn)
            record_event(
                session, EventType.RESOURCE_DISCOVERED, stamp, resource_arn=arn, detail=_detail(endpoint)
            )
            continue
        if row.endpoint_name not in (None, endpoint.name):
            _refuse_shared_arn(session, row, endpoint)
        reappeared = row.endpoint_name != endpoint.name or _vanished(row, previous)
        row.endpoint_name = endpoint.name
        row.resource_name = resource.name
        if dict(row.native_tags) != tags:
            row.native_tags = tags
        row.last_seen_date = stamp
        if reappeared:
            new.append(arn)
            detail = {**_detail(endpoint), "Reappeared": True}
            record_event(session, EventType.RESOURCE_DISCOVERED, stamp, resource_arn=arn, detail=detail)
    vanished: list[str] = []
    for arn, row in known.items():
        if arn in found or row.endpoint_name != endpoint.name or _vanished(row, previous):
            continue
        vanished.append(arn)
        record_event(session, EventType.RESOURCE_VANISHED, stamp, resource_arn=arn, detail=_detail(endpoint))
    endpoint.last_discovery_date = stamp
    session.flush()
    return {
        "EndpointName": endpoint.name,
        "DiscoveryDate": stamp,
        "ResourceArns": sorted(found),
        "NewResourceArns": sorted(new),
        "VanishedResourceArns": sorted(vanished),
    }


def _vanished(row: ProtectedResource, last_discovery: datetime | None) -> bool:
    """True when the endpoint's last discovery did not see the resource."""
    if last_discovery is None:
        return False
    return row.last_seen_date is None or row.last_seen_date < last_discovery


def _refuse_shared_arn(session: Session, row: ProtectedResource, endpoint: SourceEndpoint) -> None:
    """Refuse a resource whose ARN another endpoint still holds (S3 buckets of the same name)."""
    owner = session.get(SourceEndpoint, row.endpoint_name)
    if owner is None or _vanished(row, owner.last_discovery_date):
        return  # the other endpoint no longer sees it: this one takes it over
    raise InvalidRequestException(
        f"Resource {row.arn} discovered behind source endpoint {endpoint.name!r} is already discovered "
        f"behind endpoint {owner.name!r}; its ARN cannot tell the two apart. Bucket names must be unique "
        "across S3 endpoints: exclude it from one endpoint or delete that endpoint."
    )


def _detail(endpoint: SourceEndpoint) -> dict[str, Any]:
    return {"EndpointName": endpoint.name, "EndpointType": endpoint.endpoint_type}


# --- AWS answers ---------------------------------------------------------------------------------


def list_protected_resources(
    context: ServiceContext, *, next_token: str | None = None, max_results: int | None = None
) -> dict[str, Any]:
    """Return ListProtectedResources' answer: resources with at least one recovery point."""
    statement = select(ProtectedResource).where(ProtectedResource.last_backup_time.is_not(None))
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            statement,
            [ProtectedResource.arn],
            operation="ListProtectedResources",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"Results": [_protected_member(row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def describe_protected_resource(context: ServiceContext, resource_arn: str) -> dict[str, Any]:
    """Return DescribeProtectedResource's answer for a known resource."""
    arn = _canonical_arn(resource_arn)
    with context.catalog.transaction() as session:
        row = session.get(ProtectedResource, arn)
        if row is None:
            raise ResourceNotFoundException(
                f"Resource {resource_arn} is not known; discover its endpoint first (or check the ARN)."
            )
        body = _protected_member(row)
        body.update(_latest_restore(session, row.arn))
        return body


def list_discovered_resources(
    context: ServiceContext,
    *,
    endpoint_name: str | None = None,
    resource_type: str | None = None,
    include_vanished: bool = True,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """List everything discovery knows, with native tags and whether each is still seen (backvault)."""
    statement: Select[ProtectedResource] = select(ProtectedResource)
    if endpoint_name is not None:
        statement = statement.where(
            ProtectedResource.endpoint_name == expect_str(endpoint_name, "EndpointName")
        )
    if resource_type is not None:
        statement = statement.where(
            ProtectedResource.resource_type == expect_str(resource_type, "ResourceType")
        )
    with context.catalog.transaction() as session:
        discovered = {
            endpoint.name: endpoint.last_discovery_date
            for endpoint in session.scalars(select(SourceEndpoint))
        }
        if not include_vanished:
            statement = statement.join(
                SourceEndpoint, SourceEndpoint.name == ProtectedResource.endpoint_name
            ).where(ProtectedResource.last_seen_date >= SourceEndpoint.last_discovery_date)
        rows, token = paginate(
            session,
            statement,
            [ProtectedResource.arn],
            operation=f"ListDiscoveredResources/{endpoint_name}/{resource_type}/{include_vanished}",
            next_token=next_token,
            max_results=max_results,
        )
        members = []
        for row in rows:
            member = _protected_member(row)
            last_discovery = discovered.get(row.endpoint_name) if row.endpoint_name else None
            member.update(
                EndpointName=row.endpoint_name,
                NativeTags=dict(row.native_tags),
                CreationDate=row.creation_date,
                LastSeenDate=row.last_seen_date,
                Vanished=row.endpoint_name is None or _vanished(row, last_discovery),
            )
            members.append(member)
        response: dict[str, Any] = {"Resources": members}
        if token:
            response["NextToken"] = token
        return response


def _latest_restore(session: Session, resource_arn: str) -> dict[str, Any]:
    """DescribeProtectedResource's members about the resource's latest completed restore."""
    job = session.scalars(
        select(Job)
        .where(Job.job_type == "RESTORE", Job.resource_arn == resource_arn, Job.state == "COMPLETED")
        .order_by(Job.creation_date.desc())
        .limit(1)
    ).first()
    if job is None:
        return {}
    body: dict[str, Any] = {"LatestRestoreJobCreationDate": job.creation_date}
    if job.started_date is not None and job.completion_date is not None:
        minutes = (job.completion_date - job.started_date).total_seconds() / 60
        body["LatestRestoreExecutionTimeMinutes"] = int(minutes)
    point = session.scalars(select(RecoveryPoint).where(RecoveryPoint.arn == job.recovery_point_arn)).first()
    if point is not None:
        body["LatestRestoreRecoveryPointCreationDate"] = point.creation_date
    return body


def _protected_member(row: ProtectedResource) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ResourceArn": row.arn,
        "ResourceType": row.resource_type,
        "ResourceName": row.resource_name,
    }
    if row.last_backup_time is not None:
        body["LastBackupTime"] = row.last_backup_time
    if row.last_backup_vault_arn:
        body["LastBackupVaultArn"] = row.last_backup_vault_arn
    if row.last_recovery_point_arn:
        body["LastRecoveryPointArn"] = row.last_recovery_point_arn
    return body


def _canonical_arn(resource_arn: str) -> str:
    """Return the canonical spelling of a resource ARN (percent-encoding normalised)."""
    return str(parse_resource_arn(expect_str(resource_arn, "ResourceArn")))
