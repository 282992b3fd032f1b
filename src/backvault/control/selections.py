"""Backup selections: Create/Get/Delete/ListBackupSelections, validated by the domain's Selection model."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.models import BackupSelection as SelectionRow
from backvault.control.context import ServiceContext
from backvault.control.events import EventType, record_event
from backvault.control.pagination import paginate
from backvault.control.plans import get_plan_row
from backvault.domain.errors import AlreadyExistsException, ResourceNotFoundException, expect_str
from backvault.domain.selection import Selection


def create_backup_selection(
    context: ServiceContext,
    backup_plan_id: str,
    backup_selection: Any,
    *,
    creator_request_id: str | None = None,
) -> dict[str, Any]:
    """Assign resources to a plan; a retry with the same CreatorRequestId returns the same selection."""
    selection = Selection.from_aws(backup_selection)
    now = context.now()
    with context.catalog.transaction() as session:
        # Row lock: a concurrent DeleteBackupPlan must see this selection, or this must see the deletion.
        plan = get_plan_row(session, backup_plan_id, for_update=True)
        if plan.deletion_date is not None:
            raise ResourceNotFoundException(f"Backup plan {plan.id} was deleted; it takes no new selections.")
        if creator_request_id:
            earlier = session.scalars(
                select(SelectionRow).where(
                    SelectionRow.plan_id == plan.id, SelectionRow.creator_request_id == creator_request_id
                )
            ).first()
            if earlier is not None:
                return _creation_answer(earlier)
        taken = session.scalars(
            select(SelectionRow).where(
                SelectionRow.plan_id == plan.id, SelectionRow.name == selection.selection_name
            )
        ).first()
        if taken is not None:
            raise AlreadyExistsException(
                f"Backup plan {plan.id} already has a selection named {selection.selection_name!r} "
                f"({taken.id}).",
                CreatorRequestId=taken.creator_request_id,
            )
        row = SelectionRow(
            id=str(uuid.uuid4()),
            plan_id=plan.id,
            name=selection.selection_name,
            iam_role_arn=selection.iam_role_arn,
            document=selection.to_aws(),
            creation_date=now,
            creator_request_id=creator_request_id,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExistsException(
                f"Backup plan {plan.id} already has a selection named {selection.selection_name!r}."
            ) from None
        record_event(
            session,
            EventType.BACKUP_SELECTION_CREATED,
            now,
            resource_arn=plan.arn,
            detail={"BackupPlanId": plan.id, "SelectionId": row.id},
        )
        return _creation_answer(row)


def get_backup_selection(context: ServiceContext, backup_plan_id: str, selection_id: str) -> dict[str, Any]:
    """Return GetBackupSelection's answer."""
    with context.catalog.transaction() as session:
        row = _selection_row(session, backup_plan_id, selection_id)
        body: dict[str, Any] = {
            "BackupSelection": copy.deepcopy(row.document),
            "SelectionId": row.id,
            "BackupPlanId": row.plan_id,
            "CreationDate": row.creation_date,
        }
        if row.creator_request_id:
            body["CreatorRequestId"] = row.creator_request_id
        return body


def delete_backup_selection(
    context: ServiceContext, backup_plan_id: str, selection_id: str
) -> dict[str, Any]:
    """Remove a selection from its plan."""
    with context.catalog.transaction() as session:
        row = _selection_row(session, backup_plan_id, selection_id)
        plan = get_plan_row(session, row.plan_id)
        session.delete(row)
        record_event(
            session,
            EventType.BACKUP_SELECTION_DELETED,
            context.now(),
            resource_arn=plan.arn,
            detail={"BackupPlanId": plan.id, "SelectionId": row.id},
        )
        return {}


def list_backup_selections(
    context: ServiceContext,
    backup_plan_id: str,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """List a plan's selections by name."""
    with context.catalog.transaction() as session:
        plan = get_plan_row(session, backup_plan_id)
        rows, token = paginate(
            session,
            select(SelectionRow).where(SelectionRow.plan_id == plan.id),
            [SelectionRow.name, SelectionRow.id],
            operation=f"ListBackupSelections/{plan.id}",
            next_token=next_token,
            max_results=max_results,
        )
        members = []
        for row in rows:
            member: dict[str, Any] = {
                "SelectionId": row.id,
                "SelectionName": row.name,
                "BackupPlanId": row.plan_id,
                "CreationDate": row.creation_date,
                "IamRoleArn": row.iam_role_arn,
            }
            if row.creator_request_id:
                member["CreatorRequestId"] = row.creator_request_id
            members.append(member)
        response: dict[str, Any] = {"BackupSelectionsList": members}
        if token:
            response["NextToken"] = token
        return response


def plan_selections(session: Session, backup_plan_id: str) -> list[Selection]:
    """Return a plan's selections as domain objects (for the scheduler's resource matching)."""
    rows = session.scalars(
        select(SelectionRow).where(SelectionRow.plan_id == backup_plan_id).order_by(SelectionRow.name)
    )
    return [Selection.from_aws(row.document) for row in rows]


def _selection_row(session: Session, backup_plan_id: str, selection_id: str) -> SelectionRow:
    plan = get_plan_row(session, backup_plan_id)
    row = session.get(SelectionRow, expect_str(selection_id, "SelectionId"))
    if row is None or row.plan_id != plan.id:
        raise ResourceNotFoundException(f"Backup plan {plan.id} has no selection {selection_id!r}.")
    return row


def _creation_answer(row: SelectionRow) -> dict[str, Any]:
    return {"SelectionId": row.id, "BackupPlanId": row.plan_id, "CreationDate": row.creation_date}
