"""Restore testing plans and selections: Create/Get/Update/Delete/ListRestoreTestingPlans and -Selections.

Shapes, defaults and limits are AWS Backup's: a plan has a schedule (``ScheduleExpression`` in
``ScheduleExpressionTimezone``, default Etc/UTC), a ``StartWindowHours`` (1-168, default 24) and a
``RecoveryPointSelection`` (Algorithm LATEST_WITHIN_WINDOW or RANDOM_WITHIN_WINDOW, IncludeVaults
``["*"]`` or vault ARNs, ExcludeVaults, RecoveryPointTypes, SelectionWindowDays 1-365, default 30).
A selection names a ``ProtectedResourceType`` and either ``ProtectedResourceArns`` (``["*"]`` or up to
30 ARNs) or ``ProtectedResourceConditions`` (StringEquals / StringNotEquals on
``aws:ResourceTag/KEY``, only with ``["*"]``), plus ``RestoreMetadataOverrides`` and
``ValidationWindowHours`` (0-168). A plan is deleted only once its selections are.

backvault adds an optional *validation hook* per plan or selection (the selection's wins), set
through the ``validation_hook`` keyword (the API's ``/backvault`` extension or ``apply``), never in
AWS's shapes: ``{"Command": ["/path/prog", "arg"...], "TimeoutSeconds": 600}`` runs a program without
a shell, ``{"WebhookUrl": "https://...", "TimeoutSeconds": 30}`` POSTs JSON. A webhook URL may carry a
token, so it is stored wrapped by the master secret. The runner is in ``restore_testing_runs``.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backvault.control.catalog.restore_testing_models import RestoreTestingPlan as PlanRow
from backvault.control.catalog.restore_testing_models import RestoreTestingSelection as SelectionRow
from backvault.control.context import ServiceContext
from backvault.control.pagination import paginate
from backvault.control.restore_testing_documents import (
    KEEP,
    PLAN_MEMBERS,
    SELECTION_MEMBERS,
    check_targeting,
    metadata_overrides,
    parse_validation_hook,
    plan_settings,
    resource_arns,
    resource_conditions,
    resource_type_of,
    role_arn,
    validate_name,
    validation_window,
)
from backvault.domain.arn import ResourceType, restore_testing_plan_arn
from backvault.domain.errors import (
    AlreadyExistsException,
    InvalidRequestException,
    ResourceNotFoundException,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)
from backvault.domain.plans import validate_recovery_point_tags

# --- plans ----------------------------------------------------------------------------------------


def create_restore_testing_plan(
    context: ServiceContext,
    restore_testing_plan: Any,
    *,
    tags: dict[str, str] | None = None,
    creator_request_id: str | None = None,
    validation_hook: Any = None,
) -> dict[str, Any]:
    """Create a plan; a retry with the same CreatorRequestId returns the same plan."""
    body = expect_mapping(restore_testing_plan, "RestoreTestingPlan")
    reject_unknown_members(body, PLAN_MEMBERS, "RestoreTestingPlan")
    name = validate_name(
        require_member(body, "RestoreTestingPlanName", "RestoreTestingPlan"), "RestoreTestingPlanName"
    )
    settings = plan_settings(body, required=True)
    checked_tags = validate_recovery_point_tags(tags or {}, "Tags")
    request_id = None if creator_request_id is None else expect_str(creator_request_id, "CreatorRequestId")
    hook = parse_validation_hook(context, validation_hook, name)
    now = context.now()
    with context.catalog.transaction() as session:
        existing = session.get(PlanRow, name)
        if existing is not None:
            if request_id and existing.creator_request_id == request_id:
                return _plan_answer(existing)
            raise AlreadyExistsException(
                f"A restore testing plan named {name!r} already exists.",
                Arn=existing.arn,
                CreatorRequestId=existing.creator_request_id,
            )
        plan_id = str(uuid.uuid4())
        row = PlanRow(
            name=name,
            id=plan_id,
            arn=restore_testing_plan_arn(context.arn_context(), name, plan_id),
            creation_time=now,
            creator_request_id=request_id,
            schedule_anchor=now,
            evaluated_until=now,  # the first run is the first scheduled time after creation
            tags=checked_tags,
            validation_hook=hook,
            **settings,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExistsException(f"A restore testing plan named {name!r} already exists.") from None
        return _plan_answer(row)


def get_restore_testing_plan(context: ServiceContext, restore_testing_plan_name: str) -> dict[str, Any]:
    """Return GetRestoreTestingPlan's answer."""
    with context.catalog.transaction() as session:
        row = get_plan_row(session, restore_testing_plan_name)
        body: dict[str, Any] = {
            "CreationTime": row.creation_time,
            "RecoveryPointSelection": dict(row.recovery_point_selection),
            "RestoreTestingPlanArn": row.arn,
            "RestoreTestingPlanName": row.name,
            "ScheduleExpression": row.schedule_expression,
            "ScheduleExpressionTimezone": row.schedule_timezone,
            "StartWindowHours": row.start_window_hours,
        }
        optional = {
            "CreatorRequestId": row.creator_request_id,
            "LastExecutionTime": row.last_execution_time,
            "LastUpdateTime": row.last_update_time,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return {"RestoreTestingPlan": body}


def update_restore_testing_plan(
    context: ServiceContext,
    restore_testing_plan_name: str,
    restore_testing_plan: Any,
    *,
    validation_hook: Any = KEEP,
) -> dict[str, Any]:
    """Change a plan's schedule, start window or recovery point selection (members given replace)."""
    body = expect_mapping(restore_testing_plan, "RestoreTestingPlan")
    reject_unknown_members(body, PLAN_MEMBERS - {"RestoreTestingPlanName"}, "RestoreTestingPlan")
    settings = plan_settings(body, required=False)
    now = context.now()
    with context.catalog.transaction() as session:
        row = get_plan_row(session, restore_testing_plan_name, for_update=True)
        if validation_hook is not KEEP:
            row.validation_hook = parse_validation_hook(context, validation_hook, row.name)
        schedule_changed = any(
            key in settings and settings[key] != getattr(row, key)
            for key in ("schedule_expression", "schedule_timezone")
        )
        for key, value in settings.items():
            setattr(row, key, value)
        if schedule_changed:
            # rate() counts from the new schedule; runs already handled stay handled.
            row.schedule_anchor = now
        row.last_update_time = now
        return {**_plan_answer(row), "UpdateTime": now}


def delete_restore_testing_plan(context: ServiceContext, restore_testing_plan_name: str) -> dict[str, Any]:
    """Delete a plan that has no selections left (AWS's rule); its test history stays."""
    with context.catalog.transaction() as session:
        row = get_plan_row(session, restore_testing_plan_name, for_update=True)
        count = session.scalar(
            select(func.count()).select_from(SelectionRow).where(SelectionRow.plan_name == row.name)
        )
        if count:
            raise InvalidRequestException(
                f"Restore testing plan {row.name!r} still has {count} selection(s); delete them before the "
                "plan."
            )
        session.delete(row)
        return {}


def list_restore_testing_plans(
    context: ServiceContext, *, next_token: str | None = None, max_results: int | None = None
) -> dict[str, Any]:
    """Return ListRestoreTestingPlans' answer, by plan name."""
    with context.catalog.transaction() as session:
        rows, token = paginate(
            session,
            select(PlanRow),
            [PlanRow.name],
            operation="ListRestoreTestingPlans",
            next_token=next_token,
            max_results=max_results,
        )
        members = []
        for row in rows:
            member: dict[str, Any] = {
                "CreationTime": row.creation_time,
                "RestoreTestingPlanArn": row.arn,
                "RestoreTestingPlanName": row.name,
                "ScheduleExpression": row.schedule_expression,
                "ScheduleExpressionTimezone": row.schedule_timezone,
                "StartWindowHours": row.start_window_hours,
            }
            if row.last_execution_time is not None:
                member["LastExecutionTime"] = row.last_execution_time
            if row.last_update_time is not None:
                member["LastUpdateTime"] = row.last_update_time
            members.append(member)
        response: dict[str, Any] = {"RestoreTestingPlans": members}
        if token:
            response["NextToken"] = token
        return response


# --- selections -----------------------------------------------------------------------------------


def create_restore_testing_selection(
    context: ServiceContext,
    restore_testing_plan_name: str,
    restore_testing_selection: Any,
    *,
    creator_request_id: str | None = None,
    validation_hook: Any = None,
) -> dict[str, Any]:
    """Add a selection to a plan; a retry with the same CreatorRequestId returns the same selection."""
    body = expect_mapping(restore_testing_selection, "RestoreTestingSelection")
    reject_unknown_members(body, SELECTION_MEMBERS, "RestoreTestingSelection")
    where = "RestoreTestingSelection"
    name = validate_name(
        require_member(body, "RestoreTestingSelectionName", where), "RestoreTestingSelectionName"
    )
    resource_type = resource_type_of(require_member(body, "ProtectedResourceType", where))
    role = role_arn(require_member(body, "IamRoleArn", where))
    arns = resource_arns(body.get("ProtectedResourceArns"), resource_type)
    conditions = resource_conditions(body.get("ProtectedResourceConditions"))
    check_targeting(arns, conditions)
    overrides = metadata_overrides(body.get("RestoreMetadataOverrides"))
    window = validation_window(body.get("ValidationWindowHours"))
    request_id = None if creator_request_id is None else expect_str(creator_request_id, "CreatorRequestId")
    now = context.now()
    with context.catalog.transaction() as session:
        plan = get_plan_row(session, restore_testing_plan_name, for_update=True)
        hook = parse_validation_hook(context, validation_hook, plan.name)
        existing = session.get(SelectionRow, (plan.name, name))
        if existing is not None:
            if request_id and existing.creator_request_id == request_id:
                return _selection_answer(plan, existing)
            raise AlreadyExistsException(
                f"Restore testing plan {plan.name!r} already has a selection named {name!r}.",
                CreatorRequestId=existing.creator_request_id,
            )
        row = SelectionRow(
            plan_name=plan.name,
            name=name,
            protected_resource_type=resource_type.value,
            protected_resource_arns=arns,
            protected_resource_conditions=conditions,
            restore_metadata_overrides=overrides,
            validation_window_hours=window,
            iam_role_arn=role,
            creation_time=now,
            creator_request_id=request_id,
            validation_hook=hook,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise AlreadyExistsException(
                f"Restore testing plan {plan.name!r} already has a selection named {name!r}."
            ) from None
        return _selection_answer(plan, row)


def get_restore_testing_selection(
    context: ServiceContext, restore_testing_plan_name: str, restore_testing_selection_name: str
) -> dict[str, Any]:
    """Return GetRestoreTestingSelection's answer."""
    with context.catalog.transaction() as session:
        row = get_selection_row(session, restore_testing_plan_name, restore_testing_selection_name)
        body: dict[str, Any] = {
            "CreationTime": row.creation_time,
            "IamRoleArn": row.iam_role_arn,
            "ProtectedResourceType": row.protected_resource_type,
            "RestoreTestingPlanName": row.plan_name,
            "RestoreTestingSelectionName": row.name,
            "ValidationWindowHours": row.validation_window_hours,
        }
        if row.creator_request_id is not None:
            body["CreatorRequestId"] = row.creator_request_id
        if row.protected_resource_arns:
            body["ProtectedResourceArns"] = list(row.protected_resource_arns)
        if row.protected_resource_conditions:
            body["ProtectedResourceConditions"] = {
                key: [dict(item) for item in items]
                for key, items in row.protected_resource_conditions.items()
            }
        if row.restore_metadata_overrides:
            body["RestoreMetadataOverrides"] = dict(row.restore_metadata_overrides)
        return {"RestoreTestingSelection": body}


def update_restore_testing_selection(
    context: ServiceContext,
    restore_testing_plan_name: str,
    restore_testing_selection_name: str,
    restore_testing_selection: Any,
    *,
    validation_hook: Any = KEEP,
) -> dict[str, Any]:
    """Change a selection (members given replace the stored ones; the resource type stays)."""
    body = expect_mapping(restore_testing_selection, "RestoreTestingSelection")
    allowed = SELECTION_MEMBERS - {"RestoreTestingSelectionName", "ProtectedResourceType"}
    reject_unknown_members(body, allowed, "RestoreTestingSelection")
    now = context.now()
    with context.catalog.transaction() as session:
        plan = get_plan_row(session, restore_testing_plan_name, for_update=True)
        row = get_selection_row(session, plan.name, restore_testing_selection_name)
        resource_type = ResourceType(row.protected_resource_type)
        arns = row.protected_resource_arns
        conditions = row.protected_resource_conditions
        if "ProtectedResourceArns" in body:
            arns = resource_arns(body["ProtectedResourceArns"], resource_type)
        if "ProtectedResourceConditions" in body:
            conditions = resource_conditions(body["ProtectedResourceConditions"])
        check_targeting(arns, conditions)
        row.protected_resource_arns, row.protected_resource_conditions = arns, conditions
        if body.get("IamRoleArn") is not None:
            row.iam_role_arn = role_arn(body["IamRoleArn"])
        if "RestoreMetadataOverrides" in body:
            row.restore_metadata_overrides = metadata_overrides(body["RestoreMetadataOverrides"])
        if "ValidationWindowHours" in body:
            row.validation_window_hours = validation_window(body["ValidationWindowHours"])
        if validation_hook is not KEEP:
            row.validation_hook = parse_validation_hook(context, validation_hook, plan.name)
        row.update_time = now
        return {**_selection_answer(plan, row), "UpdateTime": now}


def delete_restore_testing_selection(
    context: ServiceContext, restore_testing_plan_name: str, restore_testing_selection_name: str
) -> dict[str, Any]:
    """Remove a selection from its plan (tests already running finish and clean up)."""
    with context.catalog.transaction() as session:
        plan = get_plan_row(session, restore_testing_plan_name, for_update=True)
        session.delete(get_selection_row(session, plan.name, restore_testing_selection_name))
        return {}


def list_restore_testing_selections(
    context: ServiceContext,
    restore_testing_plan_name: str,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """Return ListRestoreTestingSelections' answer, by selection name."""
    with context.catalog.transaction() as session:
        plan = get_plan_row(session, restore_testing_plan_name)
        rows, token = paginate(
            session,
            select(SelectionRow).where(SelectionRow.plan_name == plan.name),
            [SelectionRow.name],
            operation=f"ListRestoreTestingSelections/{plan.name}",
            next_token=next_token,
            max_results=max_results,
        )
        members = [
            {
                "CreationTime": row.creation_time,
                "IamRoleArn": row.iam_role_arn,
                "ProtectedResourceType": row.protected_resource_type,
                "RestoreTestingPlanName": row.plan_name,
                "RestoreTestingSelectionName": row.name,
                "ValidationWindowHours": row.validation_window_hours,
            }
            for row in rows
        ]
        response: dict[str, Any] = {"RestoreTestingSelections": members}
        if token:
            response["NextToken"] = token
        return response


def describe_validation_hook(
    context: ServiceContext, restore_testing_plan_name: str, restore_testing_selection_name: str | None = None
) -> dict[str, Any] | None:
    """Show the validation hook of a plan or selection, with a webhook URL reduced to its origin."""
    with context.catalog.transaction() as session:
        if restore_testing_selection_name is None:
            hook = get_plan_row(session, restore_testing_plan_name).validation_hook
        else:
            hook = get_selection_row(
                session, restore_testing_plan_name, restore_testing_selection_name
            ).validation_hook
    if not hook:
        return None
    shown: dict[str, Any] = {"TimeoutSeconds": hook["TimeoutSeconds"]}
    if "Command" in hook:
        shown["Command"] = list(hook["Command"])
    else:
        shown["WebhookUrl"] = f"{hook['WebhookOrigin']}/..."
    return shown


# --- helpers for the runner -----------------------------------------------------------------------


def get_plan_row(session: Session, restore_testing_plan_name: str, *, for_update: bool = False) -> PlanRow:
    """Return the plan row (row-locked if asked), or raise ResourceNotFoundException."""
    name = expect_str(restore_testing_plan_name, "RestoreTestingPlanName")
    statement = select(PlanRow).where(PlanRow.name == name)
    row = session.scalars(statement.with_for_update() if for_update else statement).first()
    if row is None:
        raise ResourceNotFoundException(f"Restore testing plan {name!r} does not exist.")
    return row


def get_selection_row(
    session: Session, restore_testing_plan_name: str, restore_testing_selection_name: str
) -> SelectionRow:
    """Return a selection row, or raise ResourceNotFoundException naming what is missing."""
    plan = get_plan_row(session, restore_testing_plan_name)
    name = expect_str(restore_testing_selection_name, "RestoreTestingSelectionName")
    row = session.get(SelectionRow, (plan.name, name))
    if row is None:
        raise ResourceNotFoundException(f"Restore testing plan {plan.name!r} has no selection {name!r}.")
    return row


def _plan_answer(row: PlanRow) -> dict[str, Any]:
    return {
        "CreationTime": row.creation_time,
        "RestoreTestingPlanArn": row.arn,
        "RestoreTestingPlanName": row.name,
    }


def _selection_answer(plan: PlanRow, row: SelectionRow) -> dict[str, Any]:
    return {
        "CreationTime": row.creation_time,
        "RestoreTestingPlanArn": plan.arn,
        "RestoreTestingPlanName": plan.name,
        "RestoreTestingSelectionName": row.name,
    }
