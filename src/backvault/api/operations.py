"""AWS Backup operations -> control-plane services.

Most operations map one to one onto a service function named like the operation in snake_case
(``ListBackupPlanVersions`` -> ``backvault.control.plans.list_backup_plan_versions``) whose keyword
arguments are the input members in snake_case (``SNSTopicArn`` -> ``sns_topic_arn``). Binding is
checked against the function's signature, so a member the service does not take is refused by name
instead of being silently dropped. Service modules are imported when first used: an operation whose
service has not been built answers UnsupportedOperationException instead of breaking the server.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from backvault.api.protocol import UnsupportedOperationException
from backvault.control.context import ServiceContext
from backvault.domain.arn import ResourceType
from backvault.domain.errors import (
    InvalidParameterValueException,
    MissingParameterValueException,
)
from backvault.domain.plans import parse_backup_plan

OperationHandler = Callable[[ServiceContext, dict[str, Any]], dict[str, Any]]

_VAULTS = "vaults"
_VAULT_SETTINGS = "vault_settings"
_PLANS = "plans"
_SELECTIONS = "selections"
_BACKUP_JOBS = "backup_jobs"
_RESTORE_JOBS = "restore_jobs"
_COPY_JOBS = "copy_jobs"
_RECOVERY_POINTS = "recovery_points"
_LEGAL_HOLDS = "legal_holds"
_TAGS = "tags"
_DISCOVERY = "discovery"

# Operation -> the backvault.control module holding its service function.
SERVICE_MODULES: dict[str, str] = {
    "CreateBackupVault": _VAULTS,
    "DescribeBackupVault": _VAULTS,
    "DeleteBackupVault": _VAULTS,
    "ListBackupVaults": _VAULTS,
    "PutBackupVaultAccessPolicy": _VAULT_SETTINGS,
    "GetBackupVaultAccessPolicy": _VAULT_SETTINGS,
    "DeleteBackupVaultAccessPolicy": _VAULT_SETTINGS,
    "PutBackupVaultNotifications": _VAULT_SETTINGS,
    "GetBackupVaultNotifications": _VAULT_SETTINGS,
    "DeleteBackupVaultNotifications": _VAULT_SETTINGS,
    "PutBackupVaultLockConfiguration": _VAULT_SETTINGS,
    "DeleteBackupVaultLockConfiguration": _VAULT_SETTINGS,
    "CreateBackupPlan": _PLANS,
    "GetBackupPlan": _PLANS,
    "UpdateBackupPlan": _PLANS,
    "DeleteBackupPlan": _PLANS,
    "ListBackupPlans": _PLANS,
    "ListBackupPlanVersions": _PLANS,
    "CreateBackupSelection": _SELECTIONS,
    "GetBackupSelection": _SELECTIONS,
    "DeleteBackupSelection": _SELECTIONS,
    "ListBackupSelections": _SELECTIONS,
    "StartBackupJob": _BACKUP_JOBS,
    "DescribeBackupJob": _BACKUP_JOBS,
    "ListBackupJobs": _BACKUP_JOBS,
    "StopBackupJob": _BACKUP_JOBS,
    "StartRestoreJob": _RESTORE_JOBS,
    "DescribeRestoreJob": _RESTORE_JOBS,
    "ListRestoreJobs": _RESTORE_JOBS,
    "ListRestoreJobsByProtectedResource": _RESTORE_JOBS,
    "GetRestoreJobMetadata": _RESTORE_JOBS,
    "GetRecoveryPointRestoreMetadata": _RESTORE_JOBS,
    "StartCopyJob": _COPY_JOBS,
    "DescribeCopyJob": _COPY_JOBS,
    "ListCopyJobs": _COPY_JOBS,
    "ListRecoveryPointsByBackupVault": _RECOVERY_POINTS,
    "ListRecoveryPointsByResource": _RECOVERY_POINTS,
    "DescribeRecoveryPoint": _RECOVERY_POINTS,
    "UpdateRecoveryPointLifecycle": _RECOVERY_POINTS,
    "DeleteRecoveryPoint": _RECOVERY_POINTS,
    "CreateLegalHold": _LEGAL_HOLDS,
    "GetLegalHold": _LEGAL_HOLDS,
    "CancelLegalHold": _LEGAL_HOLDS,
    "ListLegalHolds": _LEGAL_HOLDS,
    "ListRecoveryPointsByLegalHold": _LEGAL_HOLDS,
    "TagResource": _TAGS,
    "UntagResource": _TAGS,
    "ListTags": _TAGS,
    "ListProtectedResources": _DISCOVERY,
    "DescribeProtectedResource": _DISCOVERY,
    "ListProtectedResourcesByBackupVault": _DISCOVERY,
    **dict.fromkeys(
        ("CreateFramework", "DescribeFramework", "UpdateFramework", "DeleteFramework", "ListFrameworks"),
        "frameworks",
    ),
    **dict.fromkeys(
        (
            "CreateReportPlan",
            "DescribeReportPlan",
            "UpdateReportPlan",
            "DeleteReportPlan",
            "ListReportPlans",
            "StartReportJob",
            "DescribeReportJob",
            "ListReportJobs",
        ),
        "reports",
    ),
    **dict.fromkeys(
        (
            "CreateRestoreTestingPlan",
            "GetRestoreTestingPlan",
            "UpdateRestoreTestingPlan",
            "DeleteRestoreTestingPlan",
            "ListRestoreTestingPlans",
            "CreateRestoreTestingSelection",
            "GetRestoreTestingSelection",
            "UpdateRestoreTestingSelection",
            "DeleteRestoreTestingSelection",
            "ListRestoreTestingSelections",
        ),
        "restore_testing",
    ),
    "PutRestoreValidationResult": "restore_testing_results",
    "GetRestoreTestingInferredMetadata": "restore_testing_runs",
}

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """Return an AWS member or operation name in snake_case (SNSTopicArn -> sns_topic_arn)."""
    return _WORD_BOUNDARY.sub("_", name).lower()


def operation_handler(operation_name: str) -> OperationHandler:
    """Return the handler of an operation, or one answering UnsupportedOperationException."""
    special = _SPECIAL.get(operation_name)
    if special is not None:
        return special
    module = SERVICE_MODULES.get(operation_name)
    if module is None:
        return _unsupported(operation_name)
    return _service_call(operation_name, module)


def available_operations() -> list[str]:
    """Return the operations whose service is present in this installation."""
    return sorted(name for name in [*SERVICE_MODULES, *_SPECIAL] if _service_function(name) is not None)


# --- generic binding ------------------------------------------------------------------------------


def _service_function(operation_name: str) -> Callable[..., dict[str, Any]] | None:
    if operation_name in _SPECIAL:
        return _SPECIAL[operation_name]
    module_name = SERVICE_MODULES.get(operation_name)
    if module_name is None:
        return None
    module = importlib.import_module(f"backvault.control.{module_name}")
    function = getattr(module, snake_case(operation_name), None)
    return function if callable(function) else None


def _service_call(operation_name: str, module_name: str) -> OperationHandler:
    def handle(context: ServiceContext, parameters: dict[str, Any]) -> dict[str, Any]:
        function = _service_function(operation_name)
        if function is None:
            raise _unavailable(operation_name)
        return call_with_members(function, context, parameters, operation_name)

    handle.__name__ = snake_case(operation_name)
    return handle


def call_with_members(
    function: Callable[..., dict[str, Any]],
    context: ServiceContext,
    parameters: Mapping[str, Any],
    operation_name: str,
) -> dict[str, Any]:
    """Call a service function with the input members as snake_case keyword arguments."""
    signature = inspect.signature(function)
    accepted = list(signature.parameters.values())[1:]  # the first one is the context
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in accepted)
    names = {parameter.name for parameter in accepted}
    keywords: dict[str, Any] = {}
    for member, value in parameters.items():
        keyword = snake_case(member)
        if keyword not in names and not takes_any:
            raise InvalidParameterValueException(
                f"{operation_name}: parameter {member} is not supported by backvault; remove it from the "
                "request."
            )
        keywords[keyword] = value
    for parameter in accepted:
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and parameter.name not in keywords:
            member = "".join(part.capitalize() for part in parameter.name.split("_"))
            raise MissingParameterValueException(
                f"{operation_name}: missing required parameter {member} (backvault needs it)."
            )
    return function(context, **keywords)


def _unavailable(operation_name: str) -> UnsupportedOperationException:
    return UnsupportedOperationException(
        f"{operation_name} is an AWS Backup operation that this backvault server does not provide yet."
    )


def _unsupported(operation_name: str) -> OperationHandler:
    def handle(context: ServiceContext, parameters: dict[str, Any]) -> dict[str, Any]:
        raise _unavailable(operation_name)

    return handle


# --- operations without a one-to-one service function ---------------------------------------------


def get_backup_plan_from_json(context: ServiceContext, backup_plan_template_json: str) -> dict[str, Any]:
    """GetBackupPlanFromJSON: validate a plan document given as JSON text and return it as a BackupPlan."""
    try:
        document = json.loads(backup_plan_template_json)
    except ValueError as error:
        raise InvalidParameterValueException(f"BackupPlanTemplateJson is not valid JSON: {error}.") from None
    return {"BackupPlan": parse_backup_plan(document).to_aws()}


def export_backup_plan_template(context: ServiceContext, backup_plan_id: str) -> dict[str, Any]:
    """ExportBackupPlanTemplate: the plan's current version as JSON text, without its rule ids."""
    from backvault.control.plans import get_backup_plan

    plan = get_backup_plan(context, backup_plan_id)["BackupPlan"]
    rules = [{key: value for key, value in rule.items() if key != "RuleId"} for rule in plan.get("Rules", [])]
    template = {**plan, "Rules": rules}
    return {"BackupPlanTemplateJson": json.dumps(template, sort_keys=True, default=str)}


def get_supported_resource_types(context: ServiceContext) -> dict[str, Any]:
    """GetSupportedResourceTypes: the resource types backvault has connectors for."""
    return {"ResourceTypes": [kind.value for kind in ResourceType]}


def _bind(function: Callable[..., dict[str, Any]], operation_name: str) -> OperationHandler:
    def handle(context: ServiceContext, parameters: dict[str, Any]) -> dict[str, Any]:
        return call_with_members(function, context, parameters, operation_name)

    return handle


_SPECIAL: dict[str, OperationHandler] = {
    "GetBackupPlanFromJSON": _bind(get_backup_plan_from_json, "GetBackupPlanFromJSON"),
    "ExportBackupPlanTemplate": _bind(export_backup_plan_template, "ExportBackupPlanTemplate"),
    "GetSupportedResourceTypes": _bind(get_supported_resource_types, "GetSupportedResourceTypes"),
}
