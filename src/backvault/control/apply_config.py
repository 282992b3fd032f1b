"""The ``backvault apply`` document (YAML or JSON, loaded into a dict): its parsing, and the report.

The format uses snake_case keys and names every item, so a file reads like borgmatic's or
Terraform's; apply.py maps it onto the AWS-shaped services. Every section is optional::

    version: 1
    locations:                      # storage locations ("regions"); "local" exists by default
      - name: offsite
        type: s3                    # local | s3
        bucket: backups             # s3: bucket, prefix, endpoint_url, region; local: path
        prefix: backvault
        endpoint_url: https://s3.example.net
        region: eu-central-1
        cold_storage_class: GLACIER # or cold_location: OTHER-LOCATION (not both)
    notification_sinks:             # where vault events go (the "SNS topics" of AWS)
      - name: ops-hook
        type: webhook               # webhook (signed JSON) | slack | email
        url: https://hooks.example.net/backvault
        secret: env:OPS_HOOK_KEY    # HMAC key / SMTP password from apply's environment, stored wrapped
        failures_only: false
      - name: ops-mail
        type: email
        smtp_host: mail.example.net # smtp_port (25), sender, recipients, username, starttls
        sender: backvault@example.net
        recipients: [ops@example.net]
    vaults:
      - name: main
        location: local             # default: the server's default location
        tags: {owner: ops}
        lock:                       # optional Vault Lock (compliance mode with changeable_for_days)
          min_retention_days: 7
          max_retention_days: 3650
        notifications:              # optional; null removes the vault's configuration
          sink: ops-hook            # a sink declared above or already in the catalog
          events: [BACKUP_JOB_FAILED, BACKUP_JOB_COMPLETED, COPY_JOB_FAILED]
          failures_only: true       # of those, only failures (failed, expired, aborted, partial)
    endpoints:                      # source endpoints (needs backvault.control.endpoints)
      - name: files
        type: Filesystem            # Filesystem, PostgreSQL, MySQL, SQLite, Redis, S3, DynamoDB
        connection: {root: /srv/data}
        credentials: env:FILES_CREDENTIALS   # only references: secrets never go in this file
        default_tags: {backup: daily}
    plans:
      - name: daily
        tags: {owner: ops}          # BackupPlanTags
        rules:
          - name: nightly
            vault: main
            schedule: cron(0 5 ? * * *)          # AWS cron or rate(); default cron(0 5 ? * * *)
            timezone: Europe/Berlin              # default Etc/UTC
            start_window_minutes: 60             # default 480
            completion_window_minutes: 1440      # default 10080
            lifecycle: {move_to_cold_storage_after_days: 30, delete_after_days: 365}
            recovery_point_tags: {made-by: backvault}
            copy_actions:
              - vault: offsite-main              # a vault of this backvault, or destination_vault_arn
                lifecycle: {delete_after_days: 90}
        selections:
          - name: tagged
            iam_role: arn:aws:iam::000000000000:role/backup   # optional
            tags: {backup: [daily, hourly]}      # ListOfTags: any of these (a value or a list)
            resources: [arn:aws:backvault:*:*:filesystem:files/*]
            not_resources: []
            conditions:                          # all of these; values may be lists
              string_equals: {env: prod}
              string_not_equals: {}
              string_like: {team: "data-*"}
              string_not_like: {}

Errors name the item's path in the document, e.g. ``plans[0].rules[1].schedule``, and are the AWS
exceptions of the services (InvalidParameterValueException, InvalidRequestException...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from backvault.control.apply_notifications import (
    SinkSpec,
    VaultNotificationSpec,
    parse_sink,
    parse_vault_notifications,
)
from backvault.control.apply_report import (
    ABSENT,
    CREATE,
    DELETE,
    REFUSED,
    SKIPPED,
    UNCHANGED,
    UPDATE,
    ApplyChange,
    ApplyReport,
    at,
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
from backvault.domain.lifecycle import Lifecycle
from backvault.domain.plans import BackupPlan, validate_recovery_point_tags
from backvault.domain.schedule import parse_schedule, zone_for
from backvault.domain.selection import Selection

# The report's names are imported from here by callers of parse_config.
__all__ = [
    "ABSENT",
    "CREATE",
    "DELETE",
    "FORMAT_VERSION",
    "REFUSED",
    "SKIPPED",
    "UNCHANGED",
    "UPDATE",
    "ApplyChange",
    "ApplyReport",
    "ConfigDocument",
    "EndpointSpec",
    "LocationSpec",
    "PlanSpec",
    "SelectionSpec",
    "SinkSpec",
    "VaultNotificationSpec",
    "VaultSpec",
    "at",
    "parse_config",
]

FORMAT_VERSION = 1

_CONDITION_OPERATORS = {
    "string_equals": "StringEquals",
    "string_not_equals": "StringNotEquals",
    "string_like": "StringLike",
    "string_not_like": "StringNotLike",
}


@dataclass(frozen=True)
class LocationSpec:
    """A storage location as the file declares it (keyword arguments of create_storage_location)."""

    where: str
    name: str
    location_type: str
    settings: Mapping[str, str | None]


@dataclass(frozen=True)
class VaultSpec:
    """A backup vault as the file declares it."""

    where: str
    name: str
    location: str | None
    tags: Mapping[str, str]
    lock: Mapping[str, int] | None
    notifications: VaultNotificationSpec | None = None  # None: not managed by the document


@dataclass(frozen=True)
class EndpointSpec:
    """A source endpoint as the file declares it."""

    where: str
    name: str
    endpoint_type: str
    connection: Mapping[str, Any]
    credentials_reference: str | None
    default_tags: Mapping[str, str]


@dataclass(frozen=True)
class SelectionSpec:
    """A backup selection of a plan, as its AWS ``BackupSelection`` document."""

    where: str
    name: str
    document: Mapping[str, Any]


@dataclass(frozen=True)
class PlanSpec:
    """A backup plan as its AWS ``BackupPlanInput`` document, with its tags and selections."""

    where: str
    name: str
    document: Mapping[str, Any]
    tags: Mapping[str, str]
    selections: tuple[SelectionSpec, ...]


@dataclass(frozen=True)
class ConfigDocument:
    """A parsed and validated apply document."""

    locations: tuple[LocationSpec, ...]
    vaults: tuple[VaultSpec, ...]
    endpoints: tuple[EndpointSpec, ...]
    plans: tuple[PlanSpec, ...]
    notification_sinks: tuple[SinkSpec, ...] = ()


def parse_config(
    document: Any,
    *,
    iam_role: str,
    vault_arn: Callable[[str, str], str],
    environ: Mapping[str, str] | None = None,
) -> ConfigDocument:
    """Validate a whole document; ``vault_arn(name, where)`` resolves copy destinations named by vault.

    Secrets named ``env:VARIABLE`` are read from ``environ`` (default: this process's environment).
    """
    environment = os.environ if environ is None else environ
    body = expect_mapping(document if document is not None else {}, "the document")
    reject_unknown_members(
        body, {"version", "locations", "notification_sinks", "vaults", "endpoints", "plans"}, "the document"
    )
    version = body.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise InvalidParameterValueException(
            f"version: this backvault reads version {FORMAT_VERSION} documents, got {version!r}."
        )
    locations = tuple(_items(body, "locations", _location))
    sinks = tuple(
        _items(body, "notification_sinks", lambda data, where: parse_sink(data, where, environment))
    )
    vaults = tuple(_items(body, "vaults", _vault))
    endpoints = tuple(_items(body, "endpoints", _endpoint))
    plans = tuple(_items(body, "plans", lambda data, where: _plan(data, where, iam_role, vault_arn)))
    for section, specs in (
        ("locations", locations),
        ("notification_sinks", sinks),
        ("vaults", vaults),
        ("endpoints", endpoints),
    ):
        _refuse_duplicates(section, [(spec.name, spec.where) for spec in specs])
    _refuse_duplicates("plans", [(plan.name, plan.where) for plan in plans])
    return ConfigDocument(locations, vaults, endpoints, plans, sinks)


def _items(body: Mapping[str, Any], section: str, parse: Callable[[Any, str], Any]) -> Iterator[Any]:
    for index, item in enumerate(expect_list(body.get(section) or [], section)):
        where = f"{section}[{index}]"
        with at(where):
            yield parse(item, where)


def _refuse_duplicates(section: str, names: list[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for name, where in names:
        if name in seen:
            raise InvalidParameterValueException(
                f"{where}: {name!r} is declared twice (also at {seen[name]})."
            )
        seen[name] = where


def _name(body: Mapping[str, Any], where: str) -> str:
    return expect_str(require_member(body, "name", where), f"{where}.name")


def _optional_str(body: Mapping[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    return None if value is None else expect_str(value, f"{where}.{key}")


def _tags(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    with at(where):
        return validate_recovery_point_tags(_string_mapping(value, where), where)


def _string_mapping(value: Any, where: str) -> dict[str, str]:
    # YAML reads `backup: yes` or `retention: 30` as a bool or a number; tags are strings.
    body = expect_mapping(value, where)
    return {str(key): expect_str(item, f"{where}.{key}") for key, item in body.items()}


def _location(data: Any, where: str) -> LocationSpec:
    body = expect_mapping(data, where)
    keys = ("path", "bucket", "prefix", "endpoint_url", "region", "cold_location", "cold_storage_class")
    reject_unknown_members(body, {"name", "type", *keys}, where)
    settings = {key: _optional_str(body, key, where) for key in keys}
    settings["cold_location_name"] = settings.pop("cold_location")
    location_type = expect_str(require_member(body, "type", where), f"{where}.type")
    return LocationSpec(where, _name(body, where), location_type, settings)


def _vault(data: Any, where: str) -> VaultSpec:
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"name", "location", "tags", "lock", "notifications"}, where)
    lock = None
    if body.get("lock") is not None:
        lock_where = f"{where}.lock"
        lock_body = expect_mapping(body["lock"], lock_where)
        allowed = {"min_retention_days", "max_retention_days", "changeable_for_days"}
        reject_unknown_members(lock_body, allowed, lock_where)
        lock = {key: expect_int(value, f"{lock_where}.{key}") for key, value in lock_body.items()}
    return VaultSpec(
        where,
        _name(body, where),
        _optional_str(body, "location", where),
        _tags(body.get("tags"), f"{where}.tags"),
        lock,
        parse_vault_notifications(body["notifications"], f"{where}.notifications")
        if "notifications" in body
        else None,
    )


def _endpoint(data: Any, where: str) -> EndpointSpec:
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"name", "type", "connection", "credentials", "default_tags"}, where)
    credentials = _optional_str(body, "credentials", where)
    if credentials is not None and not credentials.startswith("env:"):
        raise InvalidParameterValueException(
            f"{where}.credentials: give a reference such as env:VARIABLE; secrets never go in the apply "
            "file (register stored credentials through the API or CLI instead)."
        )
    connection = expect_mapping(require_member(body, "connection", where), f"{where}.connection")
    return EndpointSpec(
        where,
        _name(body, where),
        expect_str(require_member(body, "type", where), f"{where}.type"),
        dict(connection),
        credentials,
        _tags(body.get("default_tags"), f"{where}.default_tags"),
    )


def _plan(data: Any, where: str, iam_role: str, vault_arn: Callable[[str, str], str]) -> PlanSpec:
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"name", "tags", "rules", "selections"}, where)
    name = _name(body, where)
    rules = [
        _rule(item, f"{where}.rules[{index}]", vault_arn)
        for index, item in enumerate(expect_list(require_member(body, "rules", where), f"{where}.rules"))
    ]
    document = {"BackupPlanName": name, "Rules": rules}
    with at(where):
        normalised = BackupPlan.from_aws(document).to_aws()  # what GetBackupPlan will show, for comparing
    selections = tuple(
        _selection(item, f"{where}.selections[{index}]", iam_role)
        for index, item in enumerate(expect_list(body.get("selections") or [], f"{where}.selections"))
    )
    _refuse_duplicates(f"{where}.selections", [(s.name, s.where) for s in selections])
    return PlanSpec(where, name, normalised, _tags(body.get("tags"), f"{where}.tags"), selections)


def _rule(data: Any, where: str, vault_arn: Callable[[str, str], str]) -> dict[str, Any]:
    body = expect_mapping(data, where)
    allowed = {
        "name",
        "vault",
        "schedule",
        "timezone",
        "start_window_minutes",
        "completion_window_minutes",
        "lifecycle",
        "recovery_point_tags",
        "copy_actions",
    }
    reject_unknown_members(body, allowed, where)
    rule: dict[str, Any] = {
        "RuleName": _name(body, where),
        "TargetBackupVaultName": expect_str(require_member(body, "vault", where), f"{where}.vault"),
    }
    if body.get("schedule") is not None:
        with at(f"{where}.schedule"):
            rule["ScheduleExpression"] = str(
                parse_schedule(expect_str(body["schedule"], f"{where}.schedule"))
            )
    if body.get("timezone") is not None:
        with at(f"{where}.timezone"):
            rule["ScheduleExpressionTimezone"] = zone_for(
                expect_str(body["timezone"], f"{where}.timezone")
            ).key
    for key, member in (
        ("start_window_minutes", "StartWindowMinutes"),
        ("completion_window_minutes", "CompletionWindowMinutes"),
    ):
        if body.get(key) is not None:
            rule[member] = expect_int(body[key], f"{where}.{key}")
    if body.get("lifecycle") is not None:
        rule["Lifecycle"] = _lifecycle(body["lifecycle"], f"{where}.lifecycle")
    if body.get("recovery_point_tags") is not None:
        rule["RecoveryPointTags"] = _tags(body["recovery_point_tags"], f"{where}.recovery_point_tags")
    actions = expect_list(body.get("copy_actions") or [], f"{where}.copy_actions")
    rule["CopyActions"] = [
        _copy_action(item, f"{where}.copy_actions[{index}]", vault_arn) for index, item in enumerate(actions)
    ]
    with at(where):
        BackupPlan.from_aws({"BackupPlanName": "check", "Rules": [rule]})  # windows and the rest, per rule
    return rule


def _lifecycle(data: Any, where: str) -> dict[str, Any]:
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"move_to_cold_storage_after_days", "delete_after_days"}, where)
    lifecycle: dict[str, Any] = {}
    if body.get("move_to_cold_storage_after_days") is not None:
        key = "move_to_cold_storage_after_days"
        lifecycle["MoveToColdStorageAfterDays"] = expect_int(body[key], f"{where}.{key}")
    if body.get("delete_after_days") is not None:
        lifecycle["DeleteAfterDays"] = expect_int(body["delete_after_days"], f"{where}.delete_after_days")
    with at(where):
        Lifecycle.from_aws(lifecycle, where)
    return lifecycle


def _copy_action(data: Any, where: str, vault_arn: Callable[[str, str], str]) -> dict[str, Any]:
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"vault", "destination_vault_arn", "lifecycle"}, where)
    if (body.get("vault") is None) == (body.get("destination_vault_arn") is None):
        raise InvalidParameterValueException(
            f"{where}: give the destination as either vault (a vault name) or destination_vault_arn."
        )
    if body.get("vault") is not None:
        arn = vault_arn(expect_str(body["vault"], f"{where}.vault"), f"{where}.vault")
    else:
        arn = expect_str(body["destination_vault_arn"], f"{where}.destination_vault_arn")
    action: dict[str, Any] = {"DestinationBackupVaultArn": arn}
    if body.get("lifecycle") is not None:
        action["Lifecycle"] = _lifecycle(body["lifecycle"], f"{where}.lifecycle")
    return action


def _selection(data: Any, where: str, iam_role: str) -> SelectionSpec:
    body = expect_mapping(data, where)
    reject_unknown_members(
        body, {"name", "iam_role", "tags", "resources", "not_resources", "conditions"}, where
    )
    name = _name(body, where)
    document: dict[str, Any] = {
        "SelectionName": name,
        "IamRoleArn": _optional_str(body, "iam_role", where) or iam_role,
        "Resources": [
            expect_str(arn, f"{where}.resources[]")
            for arn in expect_list(body.get("resources") or [], f"{where}.resources")
        ],
        "NotResources": [
            expect_str(arn, f"{where}.not_resources[]")
            for arn in expect_list(body.get("not_resources") or [], f"{where}.not_resources")
        ],
        "ListOfTags": [
            {"ConditionType": "STRINGEQUALS", "ConditionKey": key, "ConditionValue": value}
            for key, value in _condition_pairs(body.get("tags"), f"{where}.tags")
        ],
    }
    if body.get("conditions") is not None:
        conditions_where = f"{where}.conditions"
        conditions = expect_mapping(body["conditions"], conditions_where)
        reject_unknown_members(conditions, set(_CONDITION_OPERATORS), conditions_where)
        document["Conditions"] = {
            member: [
                {"ConditionKey": f"aws:ResourceTag/{key}", "ConditionValue": value}
                for key, value in _condition_pairs(conditions.get(operator), f"{conditions_where}.{operator}")
            ]
            for operator, member in _CONDITION_OPERATORS.items()
        }
    with at(where):
        normalised = Selection.from_aws(document).to_aws()
    return SelectionSpec(where, name, normalised)


def _condition_pairs(value: Any, where: str) -> list[tuple[str, str]]:
    """``{key: value}`` or ``{key: [value, ...]}`` as (key, value) pairs, in the file's order."""
    if value is None:
        return []
    pairs: list[tuple[str, str]] = []
    for key, item in expect_mapping(value, where).items():
        values = item if isinstance(item, list) else [item]
        pairs.extend((str(key), expect_str(one, f"{where}.{key}")) for one in values)
    return pairs
