"""BackupSelection (resource assignment): which resources a backup plan protects, evaluated as AWS does.

A resource is selected when

    (it matches any ``Resources`` pattern OR any ``ListOfTags`` entry)
    AND it matches every ``Conditions`` entry
    AND it matches no ``NotResources`` pattern.

When both ``Resources`` and ``ListOfTags`` are empty the first line selects every resource: AWS says a
selection that names no resources "selects all supported and opted-in storage resources", and its
examples refine ``"Resources": ["*"]`` with Conditions alone. So Conditions-only and NotResources-only
selections start from all resources, and an empty selection selects everything.

Details, all from AWS's documentation:

* ``*`` in a ``Resources``/``NotResources`` ARN or a StringLike value matches any run of characters
  (including none, ``:`` and ``/``), anywhere in the pattern; matching is case-sensitive;
* ``ListOfTags`` entries are StringEquals only and OR'ed; ``Conditions`` entries are AND'ed;
* StringNotEquals and StringNotLike are true for a resource that lacks the tag (IAM's semantics);
* condition keys are ``aws:ResourceTag/KEY``; a bare ``KEY`` is accepted too, as AWS's own
  ListOfTags example uses one;
* at most 500 ARNs per list, of which at most 30 with wildcards (LimitExceededException).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

from backvault.domain.errors import (
    InvalidParameterValueException,
    LimitExceededException,
    expect_list,
    expect_mapping,
    expect_str,
    reject_unknown_members,
    require_member,
)

TAG_KEY_PREFIX = "aws:ResourceTag/"
MAX_RESOURCE_ARNS = 500
MAX_WILDCARD_ARNS = 30
_SELECTION_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]{1,50}$")


class ConditionOperator(StrEnum):
    """The operators of a selection's ``Conditions``."""

    STRING_EQUALS = "StringEquals"
    STRING_NOT_EQUALS = "StringNotEquals"
    STRING_LIKE = "StringLike"
    STRING_NOT_LIKE = "StringNotLike"


@dataclass(frozen=True)
class Condition:
    """One tag condition; ``condition_key`` is kept as given (``aws:ResourceTag/KEY`` or ``KEY``)."""

    operator: ConditionOperator
    condition_key: str
    condition_value: str

    @property
    def tag_key(self) -> str:
        """The tag the condition tests."""
        return self.condition_key.removeprefix(TAG_KEY_PREFIX)

    def matches(self, tags: Mapping[str, str]) -> bool:
        """Evaluate the condition against a resource's tags."""
        value = tags.get(self.tag_key)
        if self.operator == ConditionOperator.STRING_EQUALS:
            return value == self.condition_value
        if self.operator == ConditionOperator.STRING_NOT_EQUALS:
            return value != self.condition_value
        if self.operator == ConditionOperator.STRING_LIKE:
            return value is not None and wildcard_match(self.condition_value, value)
        return value is None or not wildcard_match(self.condition_value, value)


@dataclass(frozen=True)
class Selection:
    """A BackupSelection; lists are tuples so that selections can be compared and shared."""

    selection_name: str
    iam_role_arn: str
    resources: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()
    list_of_tags: tuple[Condition, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        validate_selection_name(self.selection_name)
        if not isinstance(self.iam_role_arn, str) or not self.iam_role_arn:
            raise InvalidParameterValueException("BackupSelection.IamRoleArn must be a non-empty string.")
        for where, patterns in (("Resources", self.resources), ("NotResources", self.not_resources)):
            _check_patterns(patterns, f"BackupSelection.{where}")
        if any(c.operator != ConditionOperator.STRING_EQUALS for c in self.list_of_tags):
            raise InvalidParameterValueException("BackupSelection.ListOfTags supports only STRINGEQUALS.")

    @classmethod
    def from_aws(cls, data: Any, where: str = "BackupSelection") -> Selection:
        """Parse the ``BackupSelection`` object of CreateBackupSelection."""
        body = expect_mapping(data, where)
        allowed = {"SelectionName", "IamRoleArn", "Resources", "NotResources", "ListOfTags", "Conditions"}
        reject_unknown_members(body, allowed, where)
        name = validate_selection_name(require_member(body, "SelectionName", where))
        role = expect_str(require_member(body, "IamRoleArn", where), f"{where}.IamRoleArn")
        resources = _string_list(body.get("Resources"), f"{where}.Resources")
        not_resources = _string_list(body.get("NotResources"), f"{where}.NotResources")
        list_of_tags = tuple(
            _parse_tag_entry(entry, f"{where}.ListOfTags[{index}]")
            for index, entry in enumerate(expect_list(body.get("ListOfTags") or [], f"{where}.ListOfTags"))
        )
        conditions = _parse_conditions(body.get("Conditions"), f"{where}.Conditions")
        return cls(name, role, resources, not_resources, list_of_tags, conditions)

    def to_aws(self) -> dict[str, Any]:
        """Return the ``BackupSelection`` object as GetBackupSelection shows it."""
        grouped: dict[str, list[dict[str, str]]] = {op.value: [] for op in ConditionOperator}
        for condition in self.conditions:
            grouped[condition.operator.value].append(
                {"ConditionKey": condition.condition_key, "ConditionValue": condition.condition_value}
            )
        return {
            "SelectionName": self.selection_name,
            "IamRoleArn": self.iam_role_arn,
            "Resources": list(self.resources),
            "NotResources": list(self.not_resources),
            "ListOfTags": [
                {
                    "ConditionType": "STRINGEQUALS",
                    "ConditionKey": c.condition_key,
                    "ConditionValue": c.condition_value,
                }
                for c in self.list_of_tags
            ],
            "Conditions": grouped,
        }


def selection_matches(selection: Selection, resource_arn: str, resource_tags: Mapping[str, str]) -> bool:
    """True if the selection assigns the resource to its backup plan."""
    if any(wildcard_match(pattern, resource_arn) for pattern in selection.not_resources):
        return False
    if selection.resources or selection.list_of_tags:
        included = any(wildcard_match(pattern, resource_arn) for pattern in selection.resources) or any(
            tag.matches(resource_tags) for tag in selection.list_of_tags
        )
        if not included:
            return False
    return all(condition.matches(resource_tags) for condition in selection.conditions)


def wildcard_match(pattern: str, text: str) -> bool:
    """Match ``text`` against ``pattern`` where ``*`` stands for any run of characters."""
    return _compile_wildcard(pattern).fullmatch(text) is not None


@lru_cache(maxsize=4096)
def _compile_wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def validate_selection_name(name: Any) -> str:
    """Return ``name`` if it is a valid SelectionName (1-50 letters, digits, '-', '_' or '.')."""
    text = expect_str(name, "BackupSelection.SelectionName")
    if not _SELECTION_NAME_RE.match(text):
        raise InvalidParameterValueException(
            f"SelectionName {text!r} is not valid: use 1-50 characters, each a letter, digit, '-', '_' "
            "or '.'."
        )
    return text


def _check_patterns(patterns: tuple[str, ...], where: str) -> None:
    for pattern in patterns:
        if not isinstance(pattern, str) or not (pattern == "*" or pattern.startswith("arn:")):
            raise InvalidParameterValueException(
                f"{where} entry {pattern!r} is not an ARN: use an ARN, optionally with * wildcards "
                "(e.g. arn:aws:backvault:*:*:postgresql:*), or * alone for every resource."
            )
    wildcards = sum(1 for pattern in patterns if "*" in pattern)
    if len(patterns) > MAX_RESOURCE_ARNS or wildcards > MAX_WILDCARD_ARNS:
        raise LimitExceededException(
            f"{where} has {len(patterns)} ARNs, {wildcards} with wildcards; the maximum is "
            f"{MAX_RESOURCE_ARNS} ARNs, of which at most {MAX_WILDCARD_ARNS} with wildcards. Select by tags "
            "or by resource type instead."
        )


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    return tuple(expect_str(item, f"{where}[]") for item in expect_list(value or [], where))


def _condition_key(value: Any, where: str) -> str:
    key = expect_str(value, where)
    tag_key = key.removeprefix(TAG_KEY_PREFIX)
    if not tag_key or (tag_key == key and key.startswith("aws:")):
        raise InvalidParameterValueException(
            f"{where} {key!r} is not a tag condition key: use aws:ResourceTag/KEY (for example "
            "aws:ResourceTag/backup)."
        )
    return key


def _parse_tag_entry(data: Any, where: str) -> Condition:
    body = expect_mapping(data, where)
    reject_unknown_members(body, {"ConditionType", "ConditionKey", "ConditionValue"}, where)
    condition_type = expect_str(require_member(body, "ConditionType", where), f"{where}.ConditionType")
    if condition_type != "STRINGEQUALS":
        raise InvalidParameterValueException(
            f"{where}.ConditionType {condition_type!r} is not supported: ListOfTags only supports "
            "STRINGEQUALS; use Conditions for StringLike, StringNotEquals and StringNotLike."
        )
    key = _condition_key(require_member(body, "ConditionKey", where), f"{where}.ConditionKey")
    value = expect_str(require_member(body, "ConditionValue", where), f"{where}.ConditionValue")
    return Condition(ConditionOperator.STRING_EQUALS, key, value)


def _parse_conditions(data: Any, where: str) -> tuple[Condition, ...]:
    if data is None:
        return ()
    body = expect_mapping(data, where)
    reject_unknown_members(body, {op.value for op in ConditionOperator}, where)
    conditions: list[Condition] = []
    for operator in ConditionOperator:
        for index, entry in enumerate(expect_list(body.get(operator.value) or [], f"{where}.{operator}")):
            entry_where = f"{where}.{operator}[{index}]"
            item = expect_mapping(entry, entry_where)
            reject_unknown_members(item, {"ConditionKey", "ConditionValue"}, entry_where)
            key = _condition_key(
                require_member(item, "ConditionKey", entry_where), f"{entry_where}.ConditionKey"
            )
            value = expect_str(
                require_member(item, "ConditionValue", entry_where), f"{entry_where}.ConditionValue"
            )
            conditions.append(Condition(operator, key, value))
    return tuple(conditions)
