"""Validation of audit documents: framework and report plan names, descriptions, framework controls.

Shared by ``frameworks`` and ``reports``; every error names the member that is wrong and what is allowed.
"""

from __future__ import annotations

import re
from typing import Any

from backvault.domain.arn import ResourceType
from backvault.domain.audit import PLAN_RESOURCE_TYPE, VAULT_RESOURCE_TYPE, control_parameters
from backvault.domain.errors import (
    InvalidParameterValueException,
    expect_list,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)
from backvault.domain.plans import validate_recovery_point_tags

NAME_PATTERN = re.compile(r"^[a-zA-Z][_a-zA-Z0-9]{0,255}$")
MAX_DESCRIPTION = 1024
MAX_SCOPE_RESOURCE_IDS = 100
SCOPE_RESOURCE_TYPES = (*(t.value for t in ResourceType), PLAN_RESOURCE_TYPE, VAULT_RESOURCE_TYPE)


def validate_audit_name(value: Any, where: str) -> str:
    """Check a framework or report plan name: a letter, then letters, digits or '_' (1-256 characters)."""
    text = expect_str(value, where)
    if not NAME_PATTERN.match(text):
        raise InvalidParameterValueException(
            f"{where} {text!r} is not valid: start with a letter, then use only letters, digits and "
            "underscores (1-256 characters)."
        )
    return text


def validate_description(value: Any, where: str) -> str | None:
    """Check an optional description: at most 1024 characters and not only whitespace."""
    if value is None:
        return None
    text = expect_str(value, where)
    if len(text) > MAX_DESCRIPTION or (text and not text.strip()):
        raise InvalidParameterValueException(
            f"{where} must be at most {MAX_DESCRIPTION} characters and not only whitespace."
        )
    return text


def parse_framework_controls(value: Any) -> list[dict[str, Any]]:
    """Validate FrameworkControls (names, parameters, scopes) and return them in AWS's shape."""
    items = expect_list(value, "FrameworkControls")
    if not items:
        raise InvalidParameterValueException("FrameworkControls must name at least one control.")
    controls: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"FrameworkControls[{index}]"
        body = expect_mapping(item, where)
        reject_unknown_members(body, {"ControlName", "ControlInputParameters", "ControlScope"}, where)
        name = expect_str(require_member(body, "ControlName", where), f"{where}.ControlName")
        if name in seen:
            raise InvalidParameterValueException(
                f"{where}: control {name} appears twice; give each control once per framework."
            )
        seen.add(name)
        parameters = _parse_parameters(
            body.get("ControlInputParameters"), name, f"{where}.ControlInputParameters"
        )
        control: dict[str, Any] = {"ControlName": name}
        if parameters:
            control["ControlInputParameters"] = parameters
        scope = _parse_scope(body.get("ControlScope"), f"{where}.ControlScope")
        if scope:
            control["ControlScope"] = scope
        controls.append(control)
    return controls


def _parse_parameters(value: Any, control: str, where: str) -> list[dict[str, str]]:
    if value is None:
        control_parameters(control, None)  # still checks the control's name
        return []
    parameters: list[dict[str, str]] = []
    names: set[str] = set()
    for index, item in enumerate(expect_list(value, where)):
        entry = expect_mapping(item, f"{where}[{index}]")
        reject_unknown_members(entry, {"ParameterName", "ParameterValue"}, f"{where}[{index}]")
        name = expect_str(require_member(entry, "ParameterName", f"{where}[{index}]"), f"{where}[{index}]")
        text = expect_str(
            require_member(entry, "ParameterValue", f"{where}[{index}]"), f"{where}[{index}].ParameterValue"
        )
        if name in names:
            raise InvalidParameterValueException(f"{where}: parameter {name} of {control} is given twice.")
        names.add(name)
        parameters.append({"ParameterName": name, "ParameterValue": text})
    control_parameters(control, parameters)  # names the control and the parameter when one is wrong
    return parameters


def _parse_scope(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    body = expect_mapping(value, where)
    reject_unknown_members(body, {"ComplianceResourceIds", "ComplianceResourceTypes", "Tags"}, where)
    scope: dict[str, Any] = {}
    if body.get("ComplianceResourceIds") is not None:
        ids = [
            expect_str(item, f"{where}.ComplianceResourceIds")
            for item in expect_list(body["ComplianceResourceIds"], f"{where}.ComplianceResourceIds")
        ]
        if not 1 <= len(ids) <= MAX_SCOPE_RESOURCE_IDS or not all(ids):
            raise InvalidParameterValueException(
                f"{where}.ComplianceResourceIds takes 1-{MAX_SCOPE_RESOURCE_IDS} non-empty resource ARNs "
                "(a trailing * matches a prefix)."
            )
        scope["ComplianceResourceIds"] = ids
    if body.get("ComplianceResourceTypes") is not None:
        types = [
            expect_str(item, f"{where}.ComplianceResourceTypes")
            for item in expect_list(body["ComplianceResourceTypes"], f"{where}.ComplianceResourceTypes")
        ]
        unknown = [item for item in types if item not in SCOPE_RESOURCE_TYPES]
        if unknown:
            raise InvalidParameterValueException(
                f"{where}.ComplianceResourceTypes: unknown resource type(s) {', '.join(unknown)}; use "
                f"{', '.join(SCOPE_RESOURCE_TYPES)}."
            )
        if types:
            scope["ComplianceResourceTypes"] = types
    if body.get("Tags") is not None:
        tags = validate_recovery_point_tags(body["Tags"], f"{where}.Tags")
        if len(tags) > 1:
            raise InvalidParameterValueException(f"{where}.Tags takes at most one tag (key and value).")
        if tags:
            scope["Tags"] = tags
    return scope
