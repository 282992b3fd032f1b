"""Legal holds: CreateLegalHold, GetLegalHold, CancelLegalHold, ListLegalHolds, ListRecoveryPointsByLegalHold.

A hold selects recovery points by vault names, resource identifiers and a creation-date range
(domain/vault.py has the matching rules) and, until it is CANCELED, blocks deleting or expiring
any point it selects, including points created after the hold. Holds are created ACTIVE at once
(AWS passes through CREATING while it tags existing points; backvault evaluates holds on demand)
and cancelled straight to CANCELED. A cancelled hold's record is kept for RetainRecordInDays
(AWS's parameter; 0 or absent keeps it for good here, as nothing in AWS's API purges it either).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import LegalHold as LegalHoldRow
from backvault.control.catalog.activity import RecoveryPoint
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.pagination import decode_token, encode_token, page_size, paginate
from backvault.domain.arn import legal_hold_arn
from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidResourceStateException,
    MissingParameterValueException,
    ResourceNotFoundException,
    expect_int,
    expect_str,
)
from backvault.domain.lifecycle import MAX_LIFECYCLE_DAYS
from backvault.domain.plans import validate_recovery_point_tags
from backvault.domain.vault import LegalHoldStatus, RecoveryPointRef, RecoveryPointSelection

MAX_TITLE_LENGTH = 256
MAX_DESCRIPTION_LENGTH = 1024
# Statuses in which a hold still protects its points (a CANCELING hold has not let go yet).
PROTECTING_STATUSES = (LegalHoldStatus.CREATING, LegalHoldStatus.ACTIVE, LegalHoldStatus.CANCELING)


def create_legal_hold(
    context: ServiceContext,
    title: str,
    description: str,
    *,
    idempotency_token: str | None = None,
    recovery_point_selection: Any = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create an ACTIVE legal hold; a retry with the same IdempotencyToken returns the same hold."""
    title = _text(title, "Title", MAX_TITLE_LENGTH)
    description = _text(description, "Description", MAX_DESCRIPTION_LENGTH)
    if recovery_point_selection is None:
        raise MissingParameterValueException(
            "RecoveryPointSelection is required: name VaultNames, ResourceIdentifiers or a DateRange."
        )
    selection = RecoveryPointSelection.from_aws(recovery_point_selection)
    checked_tags = validate_recovery_point_tags(tags or {}, "Tags")
    now = context.now()
    with context.catalog.transaction() as session:
        if idempotency_token:
            earlier = session.scalars(
                select(LegalHoldRow).where(LegalHoldRow.idempotency_token == idempotency_token)
            ).first()
            if earlier is not None:
                return _creation_answer(earlier)
        hold_id = uuid.uuid4().hex
        row = LegalHoldRow(
            id=hold_id,
            arn=legal_hold_arn(context.arn_context(), hold_id),
            title=title,
            description=description,
            status=LegalHoldStatus.ACTIVE.value,
            selection=_selection_document(selection),
            creation_date=now,
            idempotency_token=idempotency_token,
            tags=checked_tags,
        )
        session.add(row)
        record_event(
            session,
            EventType.LEGAL_HOLD_CREATED,
            now,
            resource_arn=row.arn,
            detail={"LegalHoldId": hold_id, "Title": title},
        )
        return _creation_answer(row)


def get_legal_hold(context: ServiceContext, legal_hold_id: str) -> dict[str, Any]:
    """Return GetLegalHold's answer."""
    with context.catalog.transaction() as session:
        row = get_hold_row(session, legal_hold_id)
        body = _summary(row)
        body["RecoveryPointSelection"] = hold_selection(row).to_aws()
        if row.cancel_description:
            body["CancelDescription"] = row.cancel_description
        if row.retain_record_until:
            body["RetainRecordUntil"] = row.retain_record_until
        return body


def cancel_legal_hold(
    context: ServiceContext,
    legal_hold_id: str,
    cancel_description: str,
    *,
    retain_record_in_days: int | None = None,
) -> dict[str, Any]:
    """Cancel a hold: its points may be deleted and expire again."""
    description = _text(cancel_description, "CancelDescription", MAX_DESCRIPTION_LENGTH)
    days = None
    if retain_record_in_days is not None:
        days = expect_int(retain_record_in_days, "RetainRecordInDays")
        if not 0 <= days <= MAX_LIFECYCLE_DAYS:
            raise InvalidParameterValueException(
                f"RetainRecordInDays ({days}) must be between 0 and {MAX_LIFECYCLE_DAYS}."
            )
    now = context.now()
    with context.catalog.transaction() as session:
        row = get_hold_row(session, legal_hold_id, for_update=True)
        if row.status == LegalHoldStatus.CANCELED:
            raise InvalidResourceStateException(f"Legal hold {row.id} is already canceled.")
        row.status = LegalHoldStatus.CANCELED.value
        row.cancel_description = description
        row.cancellation_date = now
        row.retain_record_until = now + timedelta(days=days) if days else None
        record_event(
            session,
            EventType.LEGAL_HOLD_CANCELED,
            now,
            resource_arn=row.arn,
            detail={"LegalHoldId": row.id, "CancelDescription": description},
        )
        return {}


def list_legal_holds(
    context: ServiceContext, *, next_token: str | None = None, max_results: int | None = None
) -> dict[str, Any]:
    """Return ListLegalHolds' answer."""
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(LegalHoldRow),
            [LegalHoldRow.id],
            operation="ListLegalHolds",
            next_token=next_token,
            max_results=max_results,
        )
        response: dict[str, Any] = {"LegalHolds": [_summary(row) for row in rows]}
        if token:
            response["NextToken"] = token
        return response


def list_recovery_points_by_legal_hold(
    context: ServiceContext,
    legal_hold_id: str,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """Return ListRecoveryPointsByLegalHold's answer: the points the hold selects, by ARN."""
    size = page_size(max_results)
    after = decode_token(next_token, "ListRecoveryPointsByLegalHold", 1)
    with context.catalog.transaction() as session:
        hold = get_hold_row(session, legal_hold_id)
        selection = hold_selection(hold)
        statement = select(RecoveryPoint)
        if selection.vault_names:
            statement = statement.where(RecoveryPoint.vault_name.in_(selection.vault_names))
        members: list[dict[str, Any]] = []
        token = None
        # Filtered in Python (the selection's rules live in the domain), in bounded batches.
        start = None if after is None else str(after[0])
        for point in points_by_arn(session, statement, start):
            if not selection.matches(point_ref(point)):
                continue
            if len(members) == size:
                token = encode_token("ListRecoveryPointsByLegalHold", [members[-1]["RecoveryPointArn"]])
                break
            members.append(
                {
                    "RecoveryPointArn": point.arn,
                    "ResourceArn": point.resource_arn,
                    "ResourceType": point.resource_type,
                    "BackupVaultName": point.vault_name,
                }
            )
        response: dict[str, Any] = {"RecoveryPoints": members}
        if token:
            response["NextToken"] = token
        return response


def points_by_arn(
    session: Session, statement: Select[RecoveryPoint], after: str | None = None, batch: int = 500
) -> Iterator[RecoveryPoint]:
    """Yield the statement's points in ARN order, reading ``batch`` rows at a time (keyset paging)."""
    while True:
        page = statement.order_by(RecoveryPoint.arn).limit(batch)
        if after is not None:
            page = page.where(RecoveryPoint.arn > after)
        rows = list(session.scalars(page))
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].arn


# --- for deletion and expiry ---------------------------------------------------------------------


def holds_covering(session: Session, point: RecoveryPoint) -> list[str]:
    """Ids of the holds that protect the point now (empty when it may be deleted)."""
    reference = point_ref(point)
    return sorted(row.id for row in protecting_holds(session) if hold_selection(row).matches(reference))


def points_under_hold(session: Session, point: RecoveryPoint) -> bool:
    """True when a hold that is not CANCELED selects the point."""
    return bool(holds_covering(session, point))


def protecting_holds(session: Session) -> list[LegalHoldRow]:
    """Every hold that still protects its points (load once when checking many points)."""
    statuses = [status.value for status in PROTECTING_STATUSES]
    return list(session.scalars(select(LegalHoldRow).where(LegalHoldRow.status.in_(statuses))))


def point_ref(point: RecoveryPoint) -> RecoveryPointRef:
    """The facts about a point that a hold's selection looks at."""
    return RecoveryPointRef(
        backup_vault_name=point.vault_name,
        resource_arn=point.resource_arn,
        creation_date=point.creation_date,
        resource_type=point.resource_type,
    )


def hold_selection(row: LegalHoldRow) -> RecoveryPointSelection:
    """Rebuild a stored hold's selection."""
    document = row.selection or {}
    dates = document.get("DateRange") or {}
    return RecoveryPointSelection(
        vault_names=tuple(document.get("VaultNames") or ()),
        resource_identifiers=tuple(document.get("ResourceIdentifiers") or ()),
        date_from=_parse_time(dates.get("FromDate")),
        date_to=_parse_time(dates.get("ToDate")),
    )


def get_hold_row(session: Session, legal_hold_id: str, *, for_update: bool = False) -> LegalHoldRow:
    """Return a hold by id, or raise ResourceNotFoundException."""
    statement = select(LegalHoldRow).where(LegalHoldRow.id == expect_str(legal_hold_id, "LegalHoldId"))
    row = session.scalars(statement.with_for_update() if for_update else statement).first()
    if row is None:
        raise ResourceNotFoundException(f"Legal hold {legal_hold_id!r} does not exist.")
    return row


# --- shapes --------------------------------------------------------------------------------------


def _selection_document(selection: RecoveryPointSelection) -> dict[str, Any]:
    # JSON columns hold text: dates are stored as ISO 8601 and parsed back by hold_selection.
    body = selection.to_aws()
    if "DateRange" in body:
        body["DateRange"] = {key: value.isoformat() for key, value in body["DateRange"].items()}
    return body


def _parse_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _summary(row: LegalHoldRow) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Title": row.title,
        "Status": row.status,
        "Description": row.description or "",
        "LegalHoldId": row.id,
        "LegalHoldArn": row.arn,
        "CreationDate": row.creation_date,
    }
    if row.cancellation_date:
        body["CancellationDate"] = row.cancellation_date
    return body


def _creation_answer(row: LegalHoldRow) -> dict[str, Any]:
    body = _summary(row)
    body.pop("CancellationDate", None)
    body["RecoveryPointSelection"] = hold_selection(row).to_aws()
    return body


def _text(value: Any, where: str, limit: int) -> str:
    if value is None:
        raise MissingParameterValueException(f"{where} is required.")
    text = expect_str(value, where)
    if not text.strip() or len(text) > limit:
        raise InvalidParameterValueException(f"{where} must be 1-{limit} characters and not blank.")
    return text
