"""The documents of restore testing: checking plans, selections and validation hooks as AWS Backup does.

Pure parsing plus the wrapping of a webhook URL; the services in ``restore_testing`` store the
results. Names are AWS's: 1-50 letters, digits or underscores (a restore testing plan's ARN joins
name and id with '-', so a name never holds one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from backvault.control.context import ServiceContext
from backvault.domain.arn import (
    BackupArnKind,
    ResourceType,
    parse_arn,
    parse_backup_arn,
    parse_resource_arn,
)
from backvault.domain.errors import (
    InvalidParameterValueException,
    MissingParameterValueException,
    expect_int,
    expect_list,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)
from backvault.domain.schedule import DEFAULT_TIMEZONE, parse_schedule, zone_for

_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,50}$")
ALGORITHMS = ("LATEST_WITHIN_WINDOW", "RANDOM_WITHIN_WINDOW")
RECOVERY_POINT_TYPES = ("CONTINUOUS", "SNAPSHOT")
DEFAULT_START_WINDOW_HOURS = 24
MAX_START_WINDOW_HOURS = 168
DEFAULT_SELECTION_WINDOW_DAYS = 30
MAX_SELECTION_WINDOW_DAYS = 365
MAX_VALIDATION_WINDOW_HOURS = 168
MAX_SPECIFIC_ARNS = 30
TAG_CONDITION_PREFIX = "aws:ResourceTag/"
# Restore metadata that names or replaces the restored copy: a restore test always makes a new scratch
# copy and deletes it afterwards, so an override here could make it delete something else.
SCRATCH_KEYS = frozenset(
    key.lower()
    for key in (
        "TargetPath",
        "Overwrite",
        "DatabaseName",
        "DatabasePath",
        "TargetBucket",
        "TargetPrefix",
        "NewBucket",
        "TargetTableName",
        "TargetDb",
    )
)
DEFAULT_COMMAND_TIMEOUT_SECONDS = 600
DEFAULT_WEBHOOK_TIMEOUT_SECONDS = 30
MAX_HOOK_TIMEOUT_SECONDS = 86_400
# Marks "leave the hook as it is" in updates (None means: remove it).
KEEP = object()

PLAN_MEMBERS = {
    "RestoreTestingPlanName",
    "ScheduleExpression",
    "ScheduleExpressionTimezone",
    "StartWindowHours",
    "RecoveryPointSelection",
}
SELECTION_MEMBERS = {
    "RestoreTestingSelectionName",
    "ProtectedResourceType",
    "IamRoleArn",
    "ProtectedResourceArns",
    "ProtectedResourceConditions",
    "RestoreMetadataOverrides",
    "ValidationWindowHours",
}


def webhook_context(plan_name: str) -> str:
    """The wrapping context of a webhook URL of a plan (or of one of its selections)."""
    return f"restore-testing-plan/{plan_name}/validation-webhook"


def validate_name(value: Any, where: str) -> str:
    """Return a plan or selection name: 1-50 letters, digits or underscores (AWS's rule)."""
    text = expect_str(value, where)
    if not _NAME_RE.match(text):
        raise InvalidParameterValueException(
            f"{where} {text!r} is not valid: use 1-50 characters, each a letter, digit or underscore."
        )
    return text


def parse_validation_hook(context: ServiceContext, value: Any, plan_name: str) -> dict[str, Any] | None:
    """Check a validation hook and return it as stored (a webhook URL wrapped by the master secret)."""
    if value is None:
        return None
    body = expect_mapping(value, "ValidationHook")
    reject_unknown_members(body, {"Command", "WebhookUrl", "TimeoutSeconds"}, "ValidationHook")
    if ("Command" in body) == ("WebhookUrl" in body):
        raise InvalidParameterValueException(
            "ValidationHook needs exactly one of Command (a program and its arguments, run without a "
            "shell) or WebhookUrl (an http(s) URL that receives a JSON POST)."
        )
    default = DEFAULT_COMMAND_TIMEOUT_SECONDS if "Command" in body else DEFAULT_WEBHOOK_TIMEOUT_SECONDS
    timeout = expect_int(body.get("TimeoutSeconds", default), "ValidationHook.TimeoutSeconds")
    if not 1 <= timeout <= MAX_HOOK_TIMEOUT_SECONDS:
        raise InvalidParameterValueException(
            f"ValidationHook.TimeoutSeconds ({timeout}) must be between 1 and {MAX_HOOK_TIMEOUT_SECONDS}."
        )
    if "Command" in body:
        command = [
            expect_str(part, "ValidationHook.Command[]")
            for part in expect_list(body["Command"], "ValidationHook.Command")
        ]
        if not command or not command[0] or any("\0" in part for part in command):
            raise InvalidParameterValueException(
                "ValidationHook.Command must be a non-empty list: the program first, then its arguments "
                "(no NUL characters)."
            )
        return {"Command": command, "TimeoutSeconds": timeout}
    url = expect_str(body["WebhookUrl"], "ValidationHook.WebhookUrl")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameterValueException(
            "ValidationHook.WebhookUrl must be an http:// or https:// URL with a host."
        )
    return {
        "WebhookUrl": context.master_secret.wrap(url.encode("utf-8"), webhook_context(plan_name)),
        "WebhookOrigin": f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
        "TimeoutSeconds": timeout,
    }


def plan_settings(body: Mapping[str, Any], *, required: bool) -> dict[str, Any]:
    """Parse a plan's members into column values (only those given, unless required)."""
    settings: dict[str, Any] = {}
    where = "RestoreTestingPlan"
    expression = (
        require_member(body, "ScheduleExpression", where) if required else body.get("ScheduleExpression")
    )
    if expression is not None:
        parse_schedule(expect_str(expression, f"{where}.ScheduleExpression"))
        settings["schedule_expression"] = expression.strip()
    zone = body.get("ScheduleExpressionTimezone")
    if zone is not None or required:
        zone_name = (
            DEFAULT_TIMEZONE if zone is None else expect_str(zone, f"{where}.ScheduleExpressionTimezone")
        )
        zone_for(zone_name)
        settings["schedule_timezone"] = zone_name
    hours = body.get("StartWindowHours")
    if hours is not None or required:
        value = (
            DEFAULT_START_WINDOW_HOURS if hours is None else expect_int(hours, f"{where}.StartWindowHours")
        )
        if not 1 <= value <= MAX_START_WINDOW_HOURS:
            raise InvalidParameterValueException(
                f"StartWindowHours ({value}) must be between 1 and {MAX_START_WINDOW_HOURS} (one week)."
            )
        settings["start_window_hours"] = value
    selection = (
        require_member(body, "RecoveryPointSelection", where)
        if required
        else body.get("RecoveryPointSelection")
    )
    if selection is not None:
        settings["recovery_point_selection"] = recovery_point_selection(selection)
    return settings


def recovery_point_selection(value: Any) -> dict[str, Any]:
    """Check a RecoveryPointSelection and return it with its defaults filled in."""
    where = "RecoveryPointSelection"
    body = expect_mapping(value, where)
    allowed = {"Algorithm", "IncludeVaults", "ExcludeVaults", "RecoveryPointTypes", "SelectionWindowDays"}
    reject_unknown_members(body, allowed, where)
    algorithm = expect_str(require_member(body, "Algorithm", where), f"{where}.Algorithm")
    if algorithm not in ALGORITHMS:
        raise InvalidParameterValueException(
            f"{where}.Algorithm {algorithm!r} is not valid; use {' or '.join(ALGORITHMS)}."
        )
    include = vault_patterns(require_member(body, "IncludeVaults", where), f"{where}.IncludeVaults")
    if not include:
        raise MissingParameterValueException(
            f'{where}.IncludeVaults needs at least one vault: ["*"] for every vault, or vault ARNs.'
        )
    exclude = vault_patterns(body.get("ExcludeVaults") or [], f"{where}.ExcludeVaults")
    types = [
        expect_str(item, f"{where}.RecoveryPointTypes[]")
        for item in expect_list(
            require_member(body, "RecoveryPointTypes", where), f"{where}.RecoveryPointTypes"
        )
    ]
    if not types or any(item not in RECOVERY_POINT_TYPES for item in types):
        raise InvalidParameterValueException(
            f"{where}.RecoveryPointTypes {types!r} must list SNAPSHOT and/or CONTINUOUS."
        )
    days = body.get("SelectionWindowDays")
    window = (
        DEFAULT_SELECTION_WINDOW_DAYS if days is None else expect_int(days, f"{where}.SelectionWindowDays")
    )
    if not 1 <= window <= MAX_SELECTION_WINDOW_DAYS:
        raise InvalidParameterValueException(
            f"{where}.SelectionWindowDays ({window}) must be between 1 and {MAX_SELECTION_WINDOW_DAYS}."
        )
    return {
        "Algorithm": algorithm,
        "ExcludeVaults": exclude,
        "IncludeVaults": include,
        "RecoveryPointTypes": sorted(set(types)),
        "SelectionWindowDays": window,
    }


def vault_patterns(value: Any, where: str) -> list[str]:
    """Check IncludeVaults/ExcludeVaults entries: "*" or backup vault ARNs (with * wildcards)."""
    patterns: list[str] = []
    for item in expect_list(value, where):
        text = expect_str(item, f"{where}[]")
        if text == "*" or ("*" in text and text.startswith("arn:")):
            patterns.append(text)
            continue
        try:
            parse_backup_arn(text, BackupArnKind.BACKUP_VAULT)
        except InvalidParameterValueException as error:
            raise InvalidParameterValueException(
                f'{where} entry {text!r} must be "*" or a backup vault ARN ({error.message})'
            ) from None
        patterns.append(text)
    return patterns


def resource_type_of(value: Any) -> ResourceType:
    """Return the ProtectedResourceType as backvault names it (case-insensitive)."""
    text = expect_str(value, "ProtectedResourceType")
    for kind in ResourceType:
        if kind.value.lower() == text.lower():
            return kind
    known = ", ".join(kind.value for kind in ResourceType)
    raise InvalidParameterValueException(
        f"ProtectedResourceType {text!r} is not a resource type backvault protects; use one of {known}."
    )


def role_arn(value: Any) -> str:
    """Check an IamRoleArn."""
    text = expect_str(value, "IamRoleArn")
    parse_arn(text)
    return text


def resource_arns(value: Any, resource_type: ResourceType) -> list[str]:
    """Check ProtectedResourceArns: ["*"], or up to 30 ARNs of the selection's type."""
    if value is None:
        return []
    arns = [
        expect_str(item, "ProtectedResourceArns[]") for item in expect_list(value, "ProtectedResourceArns")
    ]
    if "*" in arns:
        if len(arns) > 1:
            raise InvalidParameterValueException(
                'ProtectedResourceArns is either ["*"] or a list of ARNs, not both.'
            )
        return arns
    if len(arns) > MAX_SPECIFIC_ARNS:
        raise InvalidParameterValueException(
            f"ProtectedResourceArns lists {len(arns)} ARNs; at most {MAX_SPECIFIC_ARNS} are allowed. Use "
            '["*"] with ProtectedResourceConditions to select by tag.'
        )
    for arn in arns:
        parsed = parse_resource_arn(arn)
        if parsed.resource_type != resource_type:
            raise InvalidParameterValueException(
                f"ProtectedResourceArns entry {arn} is a {parsed.resource_type} resource; this selection "
                f"tests {resource_type} resources."
            )
    return arns


def resource_conditions(value: Any) -> dict[str, list[dict[str, str]]] | None:
    """Check ProtectedResourceConditions (StringEquals, StringNotEquals on aws:ResourceTag/KEY)."""
    if value is None:
        return None
    where = "ProtectedResourceConditions"
    body = expect_mapping(value, where)
    reject_unknown_members(body, {"StringEquals", "StringNotEquals"}, where)
    result: dict[str, list[dict[str, str]]] = {}
    for operator in ("StringEquals", "StringNotEquals"):
        entries = []
        for index, item in enumerate(expect_list(body.get(operator) or [], f"{where}.{operator}")):
            entry_where = f"{where}.{operator}[{index}]"
            entry = expect_mapping(item, entry_where)
            reject_unknown_members(entry, {"Key", "Value"}, entry_where)
            key = expect_str(require_member(entry, "Key", entry_where), f"{entry_where}.Key")
            if not key.startswith(TAG_CONDITION_PREFIX) or len(key) == len(TAG_CONDITION_PREFIX):
                raise InvalidParameterValueException(
                    f"{entry_where}.Key {key!r} must name a tag as aws:ResourceTag/KEY (for example "
                    "aws:ResourceTag/backup)."
                )
            entries.append(
                {
                    "Key": key,
                    "Value": expect_str(require_member(entry, "Value", entry_where), f"{entry_where}.Value"),
                }
            )
        if entries:
            result[operator] = entries
    return result or None


def check_targeting(arns: list[str], conditions: dict[str, Any] | None) -> None:
    """Refuse a selection that names no resources, or conditions next to specific ARNs."""
    if not arns and not conditions:
        raise MissingParameterValueException(
            'RestoreTestingSelection needs ProtectedResourceArns (["*"] or up to 30 ARNs) or '
            "ProtectedResourceConditions."
        )
    if conditions and arns and arns != ["*"]:
        raise InvalidParameterValueException(
            'ProtectedResourceConditions apply to ProtectedResourceArns ["*"] only; with specific ARNs, '
            "leave the conditions out."
        )


def metadata_overrides(value: Any) -> dict[str, str]:
    """Check RestoreMetadataOverrides, refusing keys that name or replace the scratch copy."""
    if value is None:
        return {}
    body = expect_mapping(value, "RestoreMetadataOverrides")
    result: dict[str, str] = {}
    for key, item in body.items():
        expect_str(key, "RestoreMetadataOverrides key")
        if key.lower() in SCRATCH_KEYS:
            raise InvalidParameterValueException(
                f"RestoreMetadataOverrides cannot set {key!r}: a restore test always restores into a new "
                "scratch copy it names itself and deletes afterwards."
            )
        result[key] = expect_str(item, f"RestoreMetadataOverrides[{key!r}]")
    return result


def validation_window(value: Any) -> int:
    """Check ValidationWindowHours (0-168, default 0)."""
    hours = 0 if value is None else expect_int(value, "ValidationWindowHours")
    if not 0 <= hours <= MAX_VALIDATION_WINDOW_HOURS:
        raise InvalidParameterValueException(
            f"ValidationWindowHours ({hours}) must be between 0 and {MAX_VALIDATION_WINDOW_HOURS}."
        )
    return hours
