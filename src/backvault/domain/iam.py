"""IAM-style policy documents: validation and evaluation (pure, no I/O).

A document is ``{"Version": ..., "Statement": [...]}``; each statement has an ``Effect`` (Allow or
Deny), ``Action`` or ``NotAction``, ``Resource`` or ``NotResource``, and in resource policies (a
vault's access policy) ``Principal`` or ``NotPrincipal``. Actions match case-insensitively, resources
case-sensitively, both with the ``*`` and ``?`` wildcards (``*`` crosses ``:`` and ``/``, as in IAM).

Evaluation follows IAM inside one account: an explicit Deny in any applicable statement wins, then
any Allow, else the request is denied by default.

Conditions: the string operators ``StringEquals``, ``StringNotEquals``, ``StringEqualsIgnoreCase``,
``StringNotEqualsIgnoreCase``, ``StringLike`` and ``StringNotLike`` (each with an optional
``IfExists`` suffix) on the keys of ``CONDITION_KEYS``. Any other operator or key is refused when the
document is validated, with an error naming it: a condition silently ignored would widen an Allow or
void a Deny.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

from backvault.domain.errors import InvalidParameterValueException

POLICY_VERSIONS = ("2012-10-17", "2008-10-17")
# The request context keys the server fills in (lower case: IAM condition keys are case-insensitive).
CONDITION_KEYS = ("aws:username", "aws:principalarn", "aws:userid", "aws:requestedregion")
_STRING_OPERATORS = (
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
)
_STATEMENT_MEMBERS = {
    "Sid",
    "Effect",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Principal",
    "NotPrincipal",
    "Condition",
}
_ACTION_RE = re.compile(r"^(\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+)$")
MAX_POLICY_CHARACTERS = 10_240


class Decision(StrEnum):
    """The outcome of evaluating policies for one request."""

    ALLOW = "Allow"
    DENY = "Deny"  # an explicit Deny matched
    IMPLICIT_DENY = "ImplicitDeny"  # nothing matched


@dataclass(frozen=True)
class RequestContext:
    """What a policy is evaluated against: who asks, to do what, on which resource."""

    action: str
    resource: str
    principal_arn: str
    user_name: str
    region: str = "local"

    def condition_values(self) -> dict[str, str]:
        """Return the values of the supported condition keys for this request."""
        return {
            "aws:username": self.user_name,
            "aws:principalarn": self.principal_arn,
            "aws:userid": self.user_name,
            "aws:requestedregion": self.region,
        }


# --- validation --------------------------------------------------------------------------------


def malformed(message: str) -> InvalidParameterValueException:
    """Return the error for a malformed policy document (IAM's MalformedPolicyDocument)."""
    return InvalidParameterValueException(f"MalformedPolicyDocument: {message}")


def validate_policy_document(document: Any, *, resource_policy: bool = False) -> dict[str, Any]:
    """Check a policy document and return it with Statement as a list; raises naming the bad part.

    ``resource_policy`` selects the rules of a vault access policy (Principal required) rather than
    those of a user's policy (Principal refused).
    """
    if not isinstance(document, Mapping):
        raise malformed(f"a policy must be a JSON object, got {type(document).__name__}.")
    unknown = sorted(set(document) - {"Version", "Id", "Statement"})
    if unknown:
        raise malformed(f"unknown top-level member(s) {', '.join(unknown)}; allowed: Version, Id, Statement.")
    version = document.get("Version", "2008-10-17")
    if version not in POLICY_VERSIONS:
        raise malformed(f"Version {version!r} is not supported; use {POLICY_VERSIONS[0]!r}.")
    statements = document.get("Statement")
    if isinstance(statements, Mapping):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise malformed("Statement must be a statement object or a non-empty list of them.")
    checked = [
        _validate_statement(statement, index, resource_policy) for index, statement in enumerate(statements)
    ]
    result: dict[str, Any] = {"Version": version, "Statement": checked}
    if "Id" in document:
        result["Id"] = document["Id"]
    return result


def _validate_statement(statement: Any, index: int, resource_policy: bool) -> dict[str, Any]:
    where = f"Statement[{index}]"
    if not isinstance(statement, Mapping):
        raise malformed(f"{where} must be an object, got {type(statement).__name__}.")
    if isinstance(statement.get("Sid"), str):
        where += f" (Sid {statement['Sid']!r})"
    unknown = sorted(set(statement) - _STATEMENT_MEMBERS)
    if unknown:
        raise malformed(f"{where} has unknown member(s) {', '.join(unknown)}.")
    if "Sid" in statement and not isinstance(statement["Sid"], str):
        raise malformed(f"{where}: Sid must be a string.")
    if statement.get("Effect") not in ("Allow", "Deny"):
        raise malformed(f"{where}: Effect must be 'Allow' or 'Deny', got {statement.get('Effect')!r}.")
    checked: dict[str, Any] = {key: statement[key] for key in ("Sid", "Effect") if key in statement}
    action_key = _exactly_one(statement, ("Action", "NotAction"), where)
    checked[action_key] = _string_list(statement[action_key], f"{where}.{action_key}")
    for action in checked[action_key]:
        if not _ACTION_RE.match(action):
            raise malformed(
                f"{where}.{action_key}: {action!r} is not an action; write SERVICE:ACTION such as "
                "'backup:ListBackupVaults', 'backup:List*' or '*'."
            )
    resource_key = _exactly_one(statement, ("Resource", "NotResource"), where)
    checked[resource_key] = _string_list(statement[resource_key], f"{where}.{resource_key}")
    for resource in checked[resource_key]:
        if resource != "*" and not resource.startswith("arn:"):
            raise malformed(f"{where}.{resource_key}: {resource!r} must be '*' or an ARN pattern (arn:...).")
    if resource_policy:
        principal_key = _exactly_one(statement, ("Principal", "NotPrincipal"), where)
        checked[principal_key] = _validate_principal(statement[principal_key], f"{where}.{principal_key}")
    elif "Principal" in statement or "NotPrincipal" in statement:
        raise malformed(f"{where}: a user's policy must not name a Principal (the user is the principal).")
    if "Condition" in statement:
        checked["Condition"] = _validate_condition(statement["Condition"], f"{where}.Condition")
    return checked


def _exactly_one(statement: Mapping[str, Any], keys: tuple[str, str], where: str) -> str:
    present = [key for key in keys if key in statement]
    if len(present) != 1:
        raise malformed(f"{where} must have exactly one of {keys[0]} or {keys[1]}.")
    return present[0]


def _string_list(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) and item for item in items):
        raise malformed(f"{where} must be a non-empty string or a non-empty list of strings.")
    return list(items)


def _validate_principal(value: Any, where: str) -> Any:
    if value == "*":
        return "*"
    if not isinstance(value, Mapping) or set(value) != {"AWS"}:
        raise malformed(f'{where} must be "*" or {{"AWS": ARN or account id, or a list of them}}.')
    principals = _string_list(value["AWS"], f"{where}.AWS")
    for principal in principals:
        if principal != "*" and not re.match(r"^\d{12}$", principal) and not principal.startswith("arn:"):
            raise malformed(f"{where}.AWS: {principal!r} must be '*', a 12-digit account id or an IAM ARN.")
    return {"AWS": principals}


def _validate_condition(value: Any, where: str) -> dict[str, dict[str, list[str]]]:
    if not isinstance(value, Mapping) or not value:
        raise malformed(f"{where} must be a non-empty object of operator: {{key: value(s)}}.")
    checked: dict[str, dict[str, list[str]]] = {}
    for operator, clauses in value.items():
        base = operator.removesuffix("IfExists")
        if base not in _STRING_OPERATORS:
            raise malformed(
                f"{where}: unsupported condition operator {operator!r}; supported: "
                f"{', '.join(_STRING_OPERATORS)} (optionally with IfExists)."
            )
        if not isinstance(clauses, Mapping) or not clauses:
            raise malformed(f"{where}.{operator} must be a non-empty object of key: value(s).")
        checked[operator] = {}
        for key, expected in clauses.items():
            if not isinstance(key, str) or key.lower() not in CONDITION_KEYS:
                raise malformed(
                    f"{where}.{operator}: unsupported condition key {key!r}; supported: "
                    f"{', '.join(CONDITION_KEYS)}."
                )
            checked[operator][key] = _string_list(expected, f"{where}.{operator}.{key}")
    return checked


# --- evaluation --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in text]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """Tell whether ``value`` matches ``pattern`` (``*`` any run of characters, ``?`` one)."""
    return _pattern(pattern, ignore_case).fullmatch(value) is not None


def action_matches(patterns: Iterable[str], action: str) -> bool:
    """Tell whether an action (``backup:ListBackupVaults``) matches any pattern, ignoring case."""
    return any(wildcard_match(pattern, action, ignore_case=True) for pattern in patterns)


def resource_matches(patterns: Iterable[str], resource: str) -> bool:
    """Tell whether a resource ARN matches any ARN pattern (case-sensitive, as IAM)."""
    return any(wildcard_match(pattern, resource) for pattern in patterns)


def principal_matches(principal: Any, principal_arn: str) -> bool:
    """Tell whether a resource policy's Principal names the caller (by ARN, account, or "*")."""
    if principal == "*":
        return True
    account = principal_arn.split(":")[4] if principal_arn.count(":") >= 5 else ""
    for entry in principal.get("AWS", []) if isinstance(principal, Mapping) else []:
        if entry in ("*", principal_arn, account):
            return True
        # arn:PARTITION:iam::ACCOUNT:root means every principal of that account.
        if entry.endswith(":root") and entry.split(":")[4:5] == [account]:
            return True
    return False


def _condition_holds(condition: Mapping[str, Mapping[str, Sequence[str]]], request: RequestContext) -> bool:
    values = request.condition_values()
    for operator, clauses in condition.items():
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists")
        negated = "Not" in base
        for key, expected in clauses.items():
            actual = values.get(key.lower())
            if actual is None:
                if if_exists or negated:
                    continue
                return False
            if base.startswith("StringLike") or base.startswith("StringNotLike"):
                found = any(wildcard_match(item, actual) for item in expected)
            elif base.endswith("IgnoreCase"):
                found = actual.casefold() in (item.casefold() for item in expected)
            else:
                found = actual in expected
            if found == negated:
                return False
    return True


def statement_applies(statement: Mapping[str, Any], request: RequestContext) -> bool:
    """Tell whether a (validated) statement covers the request: action, resource, principal, condition."""
    if "Action" in statement:
        if not action_matches(statement["Action"], request.action):
            return False
    elif action_matches(statement["NotAction"], request.action):
        return False
    if "Resource" in statement:
        if not resource_matches(statement["Resource"], request.resource):
            return False
    elif resource_matches(statement["NotResource"], request.resource):
        return False
    if "Principal" in statement and not principal_matches(statement["Principal"], request.principal_arn):
        return False
    if "NotPrincipal" in statement and principal_matches(statement["NotPrincipal"], request.principal_arn):
        return False
    return "Condition" not in statement or _condition_holds(statement["Condition"], request)


def evaluate_policies(
    documents: Iterable[Mapping[str, Any]], request: RequestContext, *, resource_policy: bool = False
) -> Decision:
    """Evaluate policy documents for a request: explicit Deny, else Allow, else implicit deny.

    Documents are validated first; one that fails validation denies (a broken policy must never
    grant anything), so stored documents should have been validated when they were written.
    """
    allowed = False
    for document in documents:
        try:
            checked = validate_policy_document(document, resource_policy=resource_policy)
        except InvalidParameterValueException:
            return Decision.DENY
        for statement in checked["Statement"]:
            if statement_applies(statement, request):
                if statement["Effect"] == "Deny":
                    return Decision.DENY
                allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


def combine_decisions(decisions: Iterable[Decision]) -> Decision:
    """Combine the decisions of several policy sets: any explicit Deny, else any Allow, else deny."""
    result = Decision.IMPLICIT_DENY
    for decision in decisions:
        if decision is Decision.DENY:
            return Decision.DENY
        if decision is Decision.ALLOW:
            result = Decision.ALLOW
    return result
