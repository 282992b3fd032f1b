"""The resources an AWS Backup request acts on, as ARNs for authorization.

IAM policies (and vault access policies) name resources by ARN, but most requests name them by vault
name, plan id or legal hold id. This module turns an operation's input into the ARNs AWS's
"Actions, resources and condition keys for AWS Backup" page lists for it. Vault and plan ARNs are read
from the catalog (a vault's region is its storage location); objects that do not exist yet get the
ARN they would have in the default location.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from backvault.control.catalog.models import BackupPlan, BackupVault
from backvault.control.context import ServiceContext
from backvault.domain.arn import backup_plan_arn, backup_vault_arn, legal_hold_arn
from backvault.domain.errors import BackupServiceError

ANY_RESOURCE = "*"

# Members that name a vault, a plan or an ARN directly (filters of List operations are not resources).
_VAULT_NAME_MEMBERS = ("BackupVaultName", "SourceBackupVaultName")
_ARN_MEMBERS = ("RecoveryPointArn", "DestinationBackupVaultArn", "ResourceArn")
# Operations whose ResourceArn is the protected resource, not the object acted on: AWS authorizes
# StartBackupJob on the target vault only.
_RESOURCE_ARN_IS_DATA = frozenset({"StartBackupJob"})


def operation_resource_arns(
    context: ServiceContext, operation_name: str, parameters: Mapping[str, Any]
) -> list[str]:
    """Return the ARNs an operation acts on, or ["*"] when it acts on no particular resource."""
    arns: list[str] = []
    for member in _VAULT_NAME_MEMBERS:
        name = parameters.get(member)
        if isinstance(name, str) and name:
            arns.append(_vault_arn(context, name))
    plan_id = parameters.get("BackupPlanId")
    if isinstance(plan_id, str) and plan_id:
        arns.append(_plan_arn(context, plan_id))
    hold_id = parameters.get("LegalHoldId")
    if isinstance(hold_id, str) and hold_id:
        arns.append(_safe(lambda: legal_hold_arn(context.arn_context(), hold_id)))
    for member in _ARN_MEMBERS:
        if member == "ResourceArn" and operation_name in _RESOURCE_ARN_IS_DATA:
            continue
        value = parameters.get(member)
        if isinstance(value, str) and value:
            arns.append(value)
    unique = list(dict.fromkeys(arn for arn in arns if arn))
    return unique or [ANY_RESOURCE]


def _vault_arn(context: ServiceContext, name: str) -> str:
    with context.catalog.transaction() as session:
        arn = session.scalars(select(BackupVault.arn).where(BackupVault.name == name)).first()
    return arn or _safe(lambda: backup_vault_arn(context.arn_context(), name))


def _plan_arn(context: ServiceContext, plan_id: str) -> str:
    with context.catalog.transaction() as session:
        arn = session.scalars(select(BackupPlan.arn).where(BackupPlan.id == plan_id)).first()
    return arn or _safe(lambda: backup_plan_arn(context.arn_context(), plan_id))


def _safe(build: Any) -> str:
    # An identifier no ARN can be built from names no resource; the service will refuse it with a
    # precise message, so authorization just checks the action against any resource.
    try:
        arn: str = build()
    except BackupServiceError:
        return ANY_RESOURCE
    return arn
