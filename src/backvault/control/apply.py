"""``backvault apply``: make the catalog match a declarative document, idempotently.

The document format (snake_case YAML, every item by name) is described in apply_config.py and shown
in ``examples/backvault.yaml``. The whole document is validated, and compared with the catalog,
before anything changes; then the changes run in dependency order (locations, notification sinks,
vaults, endpoints, plans, selections) through the same services as the API, so every rule and event
applies. Notification sinks and a vault's notifications are handled in apply_notifications.py.

* An item missing from the catalog is created; one that differs is updated (a plan gets a new
  version only when its document changed; a changed selection is replaced, as AWS selections are
  immutable); one that matches is reported ``unchanged``. Applying a document twice changes nothing.
* Items in the catalog that the document does not mention are reported ``absent`` and deleted only
  with ``prune`` (selections, then plans, endpoints, vaults, sinks, locations; the server's default
  location is never pruned). A deletion the services refuse (a vault still holding recovery
  points...) is reported ``refused`` and the rest goes on.
* A change backvault cannot make in place (a location's settings, a vault's location, an endpoint's
  type) is an error naming the item's path, before anything is changed.
* A vault's ``lock`` is managed only when the document gives one; endpoint credentials only when it
  gives a reference (stored credentials set through the API are left alone).
* ``dry_run`` reports what would happen and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.apply_config import (
    ConfigDocument,
    EndpointSpec,
    LocationSpec,
    PlanSpec,
    VaultSpec,
    parse_config,
)
from backvault.control.apply_notifications import check_sink_references, sink_steps, vault_notification_change
from backvault.control.apply_report import (
    CREATE,
    DELETE,
    REFUSED,
    UNCHANGED,
    UPDATE,
    ApplyChange,
    ApplyReport,
    Step,
    absent_step,
    at,
    run_all,
)
from backvault.control.catalog.models import BackupPlan as PlanRow
from backvault.control.catalog.models import BackupPlanVersion, BackupSelection, BackupVault, StorageLocation
from backvault.control.catalog.models import SourceEndpoint as EndpointRow
from backvault.control.context import ServiceContext
from backvault.control.endpoints import (
    delete_source_endpoint,
    register_source_endpoint,
    update_source_endpoint,
)
from backvault.control.locations import create_storage_location, delete_storage_location
from backvault.control.plans import create_backup_plan, delete_backup_plan, get_plan_row, update_backup_plan
from backvault.control.selections import create_backup_selection, delete_backup_selection
from backvault.control.vault_settings import put_backup_vault_lock_configuration
from backvault.control.vaults import create_backup_vault, delete_backup_vault, get_vault_row
from backvault.domain.arn import backup_vault_arn
from backvault.domain.errors import (
    BackupServiceError,
    InvalidParameterValueException,
    InvalidRequestException,
)


def default_iam_role(context: ServiceContext) -> str:
    """The IamRoleArn given to selections that name none (AWS Backup's default service role)."""
    return f"arn:{context.partition}:iam::{context.account}:role/service-role/AWSBackupDefaultServiceRole"


def apply_config(
    context: ServiceContext,
    document: Any,
    *,
    prune: bool = False,
    dry_run: bool = False,
    environ: Mapping[str, str] | None = None,
) -> ApplyReport:
    """Make the catalog match ``document``; report every item's action (see the module docstring).

    Secrets the document names as ``env:VARIABLE`` come from ``environ`` (default: os.environ).
    """
    with context.catalog.transaction() as session:
        vault_rows = {row.name: row.arn for row in session.scalars(select(BackupVault))}
    declared: dict[str, str] = {}

    def vault_arn(name: str, where: str) -> str:
        if name in declared:
            return declared[name]
        if name in vault_rows:
            return vault_rows[name]
        raise InvalidParameterValueException(
            f"{where}: vault {name!r} is neither declared under vaults nor an existing backup vault."
        )

    # Vault ARNs of the document's own vaults are known before its plans are parsed.
    if isinstance(document, dict):
        for item in document.get("vaults") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                location = item.get("location") or context.default_location
                if isinstance(location, str):
                    declared[item["name"]] = backup_vault_arn(context.arn_context(location), item["name"])
    config = parse_config(document, iam_role=default_iam_role(context), vault_arn=vault_arn, environ=environ)
    _check_rule_vaults(config, set(vault_rows))
    check_sink_references(context, config, prune)
    steps = _plan_changes(context, config, prune)
    report = ApplyReport(dry_run=dry_run, prune=prune)
    for step in steps:
        if dry_run or step.run is None:
            report.changes.append(step.change)
            continue
        try:
            step.run()
        except BackupServiceError as error:
            if step.change.action != DELETE:
                raise
            report.changes.append(ApplyChange(step.change.kind, step.change.name, REFUSED, error.message))
            continue
        report.changes.append(step.change)
    return report


def _check_rule_vaults(config: ConfigDocument, existing: set[str]) -> None:
    known = existing | {vault.name for vault in config.vaults}
    for plan in config.plans:
        for index, rule in enumerate(plan.document["Rules"]):
            if rule["TargetBackupVaultName"] not in known:
                raise InvalidParameterValueException(
                    f"{plan.where}.rules[{index}].vault: {rule['TargetBackupVaultName']!r} is neither "
                    "declared under vaults nor an existing backup vault."
                )


def _plan_changes(context: ServiceContext, config: ConfigDocument, prune: bool) -> list[Step]:
    """Compare the document with the catalog; return the steps in the order they must run."""
    creations: list[Step] = []
    removals: list[Step] = []
    with context.catalog.transaction() as session:
        creations += _location_steps(context, session, config.locations, prune, removals)
        creations += sink_steps(context, session, config.notification_sinks, prune, removals)
        creations += _vault_steps(context, session, config.vaults, prune, removals)
        creations += _endpoint_steps(context, session, config.endpoints, prune, removals)
        creations += _plan_steps(context, session, config.plans, prune, removals)
    # Removals run dependants first: selections, plans, endpoints, vaults, locations.
    order = {"selection": 0, "plan": 1, "endpoint": 2, "vault": 3, "sink": 4, "location": 5}
    removals.sort(key=lambda step: order[step.change.kind])
    return creations + removals


# --- locations -----------------------------------------------------------------------------------


def _location_steps(
    context: ServiceContext,
    session: Session,
    specs: tuple[LocationSpec, ...],
    prune: bool,
    removals: list[Step],
) -> list[Step]:
    rows = {row.name: row for row in session.scalars(select(StorageLocation))}
    steps: list[Step] = []
    # A location's cold tier must exist before it: declared cold tiers go first.
    ordered = sorted(specs, key=lambda spec: spec.settings.get("cold_location_name") is not None)
    for spec in ordered:
        row = rows.get(spec.name)
        if row is None:
            steps.append(Step(ApplyChange("location", spec.name, CREATE), _creator(context, spec)))
            continue
        differences = _location_differences(spec, row)
        if differences:
            raise InvalidRequestException(
                f"{spec.where}: storage location {spec.name!r} exists with different "
                f"{', '.join(differences)}; a location cannot change in place (its vaults' repositories "
                "live there). Restore the old settings in the document, or declare a new location and move "
                "the vaults."
            )
        steps.append(Step(ApplyChange("location", spec.name, UNCHANGED)))
    declared = {spec.name for spec in specs}
    for name in sorted(set(rows) - declared - {context.default_location}):
        removals.append(absent_step("location", name, prune, partial(delete_storage_location, context, name)))
    return steps


def _creator(context: ServiceContext, spec: LocationSpec) -> Callable[[], object]:
    def create() -> object:
        with at(spec.where):
            return create_storage_location(context, spec.name, spec.location_type, **spec.settings)

    return create


def _location_differences(spec: LocationSpec, row: StorageLocation) -> list[str]:
    wanted = dict(spec.settings)
    if wanted.get("path"):
        wanted["path"] = str(Path(wanted["path"] or ""))
    if wanted.get("prefix"):
        wanted["prefix"] = (wanted["prefix"] or "").strip("/") or None
    current = {
        "type": row.location_type,
        "path": row.path,
        "bucket": row.bucket,
        "prefix": row.prefix,
        "endpoint_url": row.endpoint_url,
        "region": row.s3_region,
        "cold_location_name": row.cold_location_name,
        "cold_storage_class": row.cold_storage_class,
    }
    wanted["type"] = spec.location_type
    return [key.replace("_name", "") for key, value in current.items() if (wanted.get(key) or None) != value]


# --- vaults --------------------------------------------------------------------------------------


def _vault_steps(
    context: ServiceContext,
    session: Session,
    specs: tuple[VaultSpec, ...],
    prune: bool,
    removals: list[Step],
) -> list[Step]:
    rows = {row.name: row for row in session.scalars(select(BackupVault))}
    steps: list[Step] = []
    for spec in specs:
        location = spec.location or context.default_location
        row = rows.get(spec.name)
        if row is None:
            steps.append(
                Step(ApplyChange("vault", spec.name, CREATE), _vault_creator(context, spec, location))
            )
            continue
        if row.location_name != location:
            raise InvalidRequestException(
                f"{spec.where}.location: vault {spec.name!r} lives in location {row.location_name!r}, not "
                f"{location!r}; a vault cannot move (copy its recovery points to a new vault instead)."
            )
        changes: list[str] = []
        actions: list[Callable[[], object]] = []
        if dict(row.tags or {}) != dict(spec.tags):
            changes.append("tags")
            actions.append(partial(_set_vault_tags, context, spec))
        if spec.lock is not None and _lock_of(row) != _wanted_lock(spec.lock):
            changes.append("lock")
            actions.append(partial(_lock, context, spec))
        notifications = vault_notification_change(context, row, spec.name, spec.notifications)
        if notifications is not None:
            changes.append("notifications")
            actions.append(notifications)
        if changes:
            steps.append(Step(ApplyChange("vault", spec.name, UPDATE, ", ".join(changes)), run_all(actions)))
        else:
            steps.append(Step(ApplyChange("vault", spec.name, UNCHANGED)))
    declared = {spec.name for spec in specs}
    for name in sorted(set(rows) - declared):
        removals.append(absent_step("vault", name, prune, partial(delete_backup_vault, context, name)))
    return steps


def _vault_creator(context: ServiceContext, spec: VaultSpec, location: str) -> Callable[[], object]:
    def create() -> object:
        with at(spec.where):
            create_backup_vault(context, spec.name, backup_vault_tags=dict(spec.tags), location_name=location)
            if spec.lock is not None:
                _lock(context, spec)
        notifications = vault_notification_change(context, None, spec.name, spec.notifications)
        if notifications is not None:
            notifications()
        return None

    return create


def _lock(context: ServiceContext, spec: VaultSpec) -> object:
    with at(f"{spec.where}.lock"):
        return put_backup_vault_lock_configuration(context, spec.name, **dict(spec.lock or {}))


def _set_vault_tags(context: ServiceContext, spec: VaultSpec) -> None:
    with context.catalog.transaction() as session:
        get_vault_row(session, spec.name, for_update=True).tags = dict(spec.tags)


def _lock_of(row: BackupVault) -> dict[str, int | None] | None:
    if not row.locked:
        return None
    return {
        "min_retention_days": row.min_retention_days,
        "max_retention_days": row.max_retention_days,
        "changeable_for_days": row.changeable_for_days,
    }


def _wanted_lock(lock: Any) -> dict[str, int | None]:
    keys = ("min_retention_days", "max_retention_days", "changeable_for_days")
    return {key: lock.get(key) for key in keys}


# --- endpoints -----------------------------------------------------------------------------------


def _endpoint_steps(
    context: ServiceContext,
    session: Session,
    specs: tuple[EndpointSpec, ...],
    prune: bool,
    removals: list[Step],
) -> list[Step]:
    rows = {row.name: row for row in session.scalars(select(EndpointRow))}
    steps: list[Step] = []
    for spec in specs:
        row = rows.get(spec.name)
        if row is None:

            def create(spec: EndpointSpec = spec) -> object:
                with at(spec.where):
                    return register_source_endpoint(
                        context,
                        spec.name,
                        spec.endpoint_type,
                        dict(spec.connection),
                        credentials_reference=spec.credentials_reference,
                        default_tags=dict(spec.default_tags),
                    )

            steps.append(Step(ApplyChange("endpoint", spec.name, CREATE), create))
            continue
        if row.endpoint_type != spec.endpoint_type:
            raise InvalidRequestException(
                f"{spec.where}.type: endpoint {spec.name!r} is of type {row.endpoint_type}, not "
                f"{spec.endpoint_type}; an endpoint's type cannot change (declare a new endpoint)."
            )
        changes = [
            label
            for label, differs in (
                ("connection", dict(row.connection) != dict(spec.connection)),
                ("default_tags", dict(row.default_tags or {}) != dict(spec.default_tags)),
                (
                    "credentials",
                    spec.credentials_reference is not None
                    and row.credentials_reference != spec.credentials_reference,
                ),
            )
            if differs
        ]
        if not changes:
            steps.append(Step(ApplyChange("endpoint", spec.name, UNCHANGED)))
            continue

        def change(spec: EndpointSpec = spec) -> object:
            with at(spec.where):
                return update_source_endpoint(
                    context,
                    spec.name,
                    connection=dict(spec.connection),
                    credentials_reference=spec.credentials_reference,
                    default_tags=dict(spec.default_tags),
                )

        steps.append(Step(ApplyChange("endpoint", spec.name, UPDATE, ", ".join(changes)), change))
    declared = {spec.name for spec in specs}
    for name in sorted(set(rows) - declared):
        removals.append(absent_step("endpoint", name, prune, partial(delete_source_endpoint, context, name)))
    return steps


# --- plans and selections ------------------------------------------------------------------------


def _plan_steps(
    context: ServiceContext, session: Session, specs: tuple[PlanSpec, ...], prune: bool, removals: list[Step]
) -> list[Step]:
    rows = {row.name: row for row in session.scalars(select(PlanRow).where(PlanRow.deletion_date.is_(None)))}
    steps: list[Step] = []
    for spec in specs:
        row = rows.get(spec.name)
        selections: dict[str, BackupSelection] = {}
        if row is None:
            steps.append(Step(ApplyChange("plan", spec.name, CREATE), _plan_creator(context, spec)))
        else:
            selections = {
                selection.name: selection
                for selection in session.scalars(
                    select(BackupSelection).where(BackupSelection.plan_id == row.id)
                )
            }
            steps.append(_plan_update(context, session, spec, row))
        for selection in spec.selections:
            label = f"{spec.name}/{selection.name}"
            existing = selections.get(selection.name)
            if existing is None:
                steps.append(
                    Step(
                        ApplyChange("selection", label, CREATE), _selection_creator(context, spec, selection)
                    )
                )
            elif dict(existing.document) != dict(selection.document):
                replace = run_all(
                    [
                        partial(delete_backup_selection, context, existing.plan_id, existing.id),
                        _selection_creator(context, spec, selection),
                    ]
                )
                steps.append(Step(ApplyChange("selection", label, UPDATE, "replaced"), replace))
            else:
                steps.append(Step(ApplyChange("selection", label, UNCHANGED)))
        declared = {selection.name for selection in spec.selections}
        for name in sorted(set(selections) - declared):
            extra = selections[name]
            removals.append(
                absent_step(
                    "selection",
                    f"{spec.name}/{name}",
                    prune,
                    partial(delete_backup_selection, context, extra.plan_id, extra.id),
                )
            )
    declared_plans = {spec.name for spec in specs}
    for name in sorted(set(rows) - declared_plans):
        plan_id = rows[name].id
        for leftover in session.scalars(select(BackupSelection).where(BackupSelection.plan_id == plan_id)):
            removals.append(
                absent_step(
                    "selection",
                    f"{name}/{leftover.name}",
                    prune,
                    partial(delete_backup_selection, context, plan_id, leftover.id),
                )
            )
        removals.append(absent_step("plan", name, prune, partial(delete_backup_plan, context, plan_id)))
    return steps


def _plan_update(context: ServiceContext, session: Session, spec: PlanSpec, row: PlanRow) -> Step:
    version = session.get(BackupPlanVersion, row.current_version_id)
    assert version is not None  # plans always have their current version
    current = {
        **version.document,
        "Rules": [{k: v for k, v in rule.items() if k != "RuleId"} for rule in version.document["Rules"]],
    }
    changes: list[str] = []
    actions: list[Callable[[], object]] = []
    if current != dict(spec.document):
        changes.append("new version")

        def new_version(plan_id: str = row.id) -> object:
            with at(spec.where):
                return update_backup_plan(context, plan_id, dict(spec.document))

        actions.append(new_version)
    if dict(row.tags or {}) != dict(spec.tags):
        changes.append("tags")
        actions.append(partial(_set_plan_tags, context, row.id, dict(spec.tags)))
    if not changes:
        return Step(ApplyChange("plan", spec.name, UNCHANGED))
    return Step(ApplyChange("plan", spec.name, UPDATE, ", ".join(changes)), run_all(actions))


def _plan_creator(context: ServiceContext, spec: PlanSpec) -> Callable[[], object]:
    def create() -> object:
        with at(spec.where):
            return create_backup_plan(context, dict(spec.document), backup_plan_tags=dict(spec.tags))

    return create


def _selection_creator(context: ServiceContext, plan: PlanSpec, selection: Any) -> Callable[[], object]:
    def create() -> object:
        with context.catalog.transaction() as session:
            plan_id = session.scalars(select(PlanRow.id).where(PlanRow.active_name == plan.name)).one()
        with at(selection.where):
            return create_backup_selection(context, plan_id, dict(selection.document))

    return create


def _set_plan_tags(context: ServiceContext, plan_id: str, tags: dict[str, str]) -> None:
    with context.catalog.transaction() as session:
        get_plan_row(session, plan_id, for_update=True).tags = tags
