"""``backvault apply`` for notifications: the ``notification_sinks`` section, a vault's ``notifications``.

A sink's ``secret: env:VARIABLE`` is read from the environment of the process running apply and
stored wrapped, as the API stores it; the file never holds the secret. Like endpoint credentials,
a sink's secret is managed only when the document names one (a secret set through the API on a
sink whose declaration has none is left alone); a changed value of the variable updates it.
A vault's ``notifications`` is managed only when the vault declares the key; ``null`` removes the
configuration. Its ``sink`` must be declared, or (without prune, which would delete it) exist in the
catalog. The dispatch rules (events, failures only) are in notifications.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.apply_report import CREATE, UNCHANGED, UPDATE, ApplyChange, Step, absent_step, at
from backvault.control.catalog.models import BackupVault
from backvault.control.catalog.notification_models import NotificationSink
from backvault.control.context import ServiceContext
from backvault.control.notification_sinks import (
    SETTING_MEMBERS,
    create_notification_sink,
    delete_notification_sink,
    sink_arn,
    sink_secret_matches,
    sink_settings,
    update_notification_sink,
)
from backvault.control.vault_settings import (
    BACKUP_VAULT_EVENTS,
    delete_backup_vault_notifications,
    put_backup_vault_notifications,
)
from backvault.domain.errors import (
    InvalidParameterValueException,
    expect_int,
    expect_list,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)

if TYPE_CHECKING:  # apply_config imports this module's parsers
    from backvault.control.apply_config import ConfigDocument

ENVIRONMENT_PREFIX = "env:"


@dataclass(frozen=True)
class SinkSpec:
    """A notification sink as the file declares it; ``secret`` is the resolved value (never shown)."""

    where: str
    name: str
    sink_type: str
    settings: Mapping[str, Any]  # keyword arguments of create_notification_sink: url, smtp_host...
    failures_only: bool
    secret_reference: str | None = None
    secret: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class VaultNotificationSpec:
    """A vault's ``notifications``: the sink and events, or ``sink`` None to remove the configuration."""

    where: str
    sink: str | None
    events: tuple[str, ...] = ()
    failures_only: bool = False


# --- parsing -------------------------------------------------------------------------------------


def parse_sink(data: Any, where: str, environ: Mapping[str, str]) -> SinkSpec:
    """Validate one item of ``notification_sinks``, reading its secret from ``environ``."""
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"name", "type", "secret", "failures_only", *SETTING_MEMBERS}, where)
    name = expect_str(require_member(body, "name", where), f"{where}.name")
    sink_type = expect_str(require_member(body, "type", where), f"{where}.type")
    settings: dict[str, Any] = {}
    for key in ("url", "smtp_host", "sender", "username"):
        if body.get(key) is not None:
            settings[key] = expect_str(body[key], f"{where}.{key}")
    if body.get("smtp_port") is not None:
        settings["smtp_port"] = expect_int(body["smtp_port"], f"{where}.smtp_port")
    if body.get("recipients") is not None:
        settings["recipients"] = [
            expect_str(item, f"{where}.recipients[]")
            for item in expect_list(body["recipients"], f"{where}.recipients")
        ]
    if body.get("starttls") is not None:
        settings["starttls"] = _flag(body["starttls"], f"{where}.starttls")
    with at(where):
        _stored_settings(sink_type, settings)  # refuse a bad sink before anything changes
    reference, secret = _secret(body.get("secret"), f"{where}.secret", environ)
    failures_only = _flag(body.get("failures_only", False), f"{where}.failures_only")
    return SinkSpec(where, name, sink_type, settings, failures_only, reference, secret)


def parse_vault_notifications(data: Any, where: str) -> VaultNotificationSpec:
    """Validate a vault's ``notifications`` (``null``: remove the vault's configuration)."""
    if data is None:
        return VaultNotificationSpec(where, None)
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"sink", "events", "failures_only"}, where)
    sink = expect_str(require_member(body, "sink", where), f"{where}.sink")
    events = [
        expect_str(item, f"{where}.events[]")
        for item in expect_list(require_member(body, "events", where), f"{where}.events")
    ]
    unknown = sorted(set(events) - BACKUP_VAULT_EVENTS)
    if unknown:
        raise InvalidParameterValueException(
            f"{where}.events: unknown event(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(BACKUP_VAULT_EVENTS))}."
        )
    failures_only = _flag(body.get("failures_only", False), f"{where}.failures_only")
    return VaultNotificationSpec(where, sink, tuple(dict.fromkeys(events)), failures_only)


def check_sink_references(context: ServiceContext, config: ConfigDocument, prune: bool) -> None:
    """Refuse a vault whose notifications name a sink neither declared nor kept in the catalog."""
    known = {sink.name for sink in config.notification_sinks}
    if not prune:  # with prune, an undeclared sink is about to be deleted
        with context.catalog.transaction() as session:
            known |= set(session.scalars(select(NotificationSink.name)))
    for vault in config.vaults:
        spec = vault.notifications
        if spec is not None and spec.sink is not None and spec.sink not in known:
            kept = "declared under notification_sinks" if prune else "declared nor an existing sink"
            raise InvalidParameterValueException(
                f"{spec.where}.sink: {spec.sink!r} is not {kept}"
                + (" (apply with prune deletes undeclared sinks)." if prune else ".")
            )


def _secret(value: Any, where: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    # The value is never put in a message: it might be the secret itself, written in by mistake.
    if not isinstance(value, str) or not value.startswith(ENVIRONMENT_PREFIX):
        raise InvalidParameterValueException(
            f"{where}: give a reference such as env:VARIABLE; secrets never go in the apply file."
        )
    variable = value[len(ENVIRONMENT_PREFIX) :]
    if not variable:
        raise InvalidParameterValueException(f"{where}: name the environment variable after env:.")
    secret = environ.get(variable)
    if not secret:
        raise InvalidParameterValueException(
            f"{where}: the environment variable {variable} is not set or empty; backvault apply reads the "
            "sink's secret from its own environment."
        )
    return value, secret


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameterValueException(f"{where} must be true or false, got {value!r}.")
    return value


def _stored_settings(sink_type: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    return sink_settings(
        sink_type,
        settings.get("url"),
        settings.get("smtp_host"),
        settings.get("smtp_port", 25),
        settings.get("sender"),
        settings.get("recipients"),
        settings.get("username"),
        bool(settings.get("starttls", False)),
    )


# --- steps ---------------------------------------------------------------------------------------


def sink_steps(
    context: ServiceContext,
    session: Session,
    specs: tuple[SinkSpec, ...],
    prune: bool,
    removals: list[Step],
) -> list[Step]:
    """Compare the declared sinks with the catalog's; return their steps (and add removals)."""
    rows = {row.name: row for row in session.scalars(select(NotificationSink))}
    steps: list[Step] = []
    for spec in specs:
        row = rows.get(spec.name)
        if row is None:
            steps.append(Step(ApplyChange("sink", spec.name, CREATE), partial(_create_sink, context, spec)))
            continue
        changes = [
            label
            for label, differs in (
                ("type", row.sink_type != spec.sink_type),
                ("settings", dict(row.settings) != _stored_settings(spec.sink_type, spec.settings)),
                ("failures_only", row.failures_only != spec.failures_only),
                (
                    "secret",
                    spec.secret is not None and not sink_secret_matches(context, row, spec.secret),
                ),
            )
            if differs
        ]
        if changes:
            update = partial(_update_sink, context, spec, "secret" in changes)
            steps.append(Step(ApplyChange("sink", spec.name, UPDATE, ", ".join(changes)), update))
        else:
            steps.append(Step(ApplyChange("sink", spec.name, UNCHANGED)))
    declared = {spec.name for spec in specs}
    for name in sorted(set(rows) - declared):
        removals.append(absent_step("sink", name, prune, partial(delete_notification_sink, context, name)))
    return steps


def _create_sink(context: ServiceContext, spec: SinkSpec) -> object:
    with at(spec.where):
        return create_notification_sink(
            context,
            spec.name,
            spec.sink_type,
            secret=spec.secret,
            failures_only=spec.failures_only,
            **spec.settings,
        )


def _update_sink(context: ServiceContext, spec: SinkSpec, new_secret: bool) -> object:
    with at(spec.where):
        return update_notification_sink(
            context,
            spec.name,
            sink_type=spec.sink_type,
            secret=spec.secret if new_secret else None,
            failures_only=spec.failures_only,
            replace_settings=True,
            **spec.settings,
        )


def vault_notification_change(
    context: ServiceContext, vault: BackupVault | None, vault_name: str, spec: VaultNotificationSpec | None
) -> Callable[[], object] | None:
    """The call bringing a vault's notification settings to the document's, or None if they match."""
    if spec is None:
        return None
    current = None if vault is None else vault.notifications
    if spec.sink is None:
        return None if current is None else partial(delete_backup_vault_notifications, context, vault_name)
    topic = sink_arn(context, spec.sink)
    wanted = {
        "SNSTopicArn": topic,
        "BackupVaultEvents": list(spec.events),
        "FailuresOnly": spec.failures_only,
    }
    if current is not None and {**current, "FailuresOnly": bool(current.get("FailuresOnly"))} == wanted:
        return None

    def put() -> object:
        with at(spec.where):
            return put_backup_vault_notifications(
                context,
                vault_name,
                sns_topic_arn=topic,
                backup_vault_events=list(spec.events),
                failures_only=spec.failures_only,
            )

    return put
