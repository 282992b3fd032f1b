"""TagResource, UntagResource and ListTags for vaults, plans, recovery points and legal holds.

The resource is named by its ARN, as in AWS. Tags follow AWS's rules (keys 1-128 characters, values
up to 256, no ``aws:`` prefix). Other taggable kinds (frameworks, report plans, restore testing
plans) answer InvalidParameterValueException until their services store tags.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from backvault.control.catalog.activity import LegalHold, RecoveryPoint
from backvault.control.catalog.models import BackupPlan, BackupVault
from backvault.control.context import ServiceContext
from backvault.control.pagination import decode_token, encode_token, page_size
from backvault.domain.arn import BackupArnKind, parse_backup_arn
from backvault.domain.errors import (
    InvalidParameterValueException,
    ResourceNotFoundException,
    expect_list,
    expect_str,
)
from backvault.domain.plans import validate_recovery_point_tags

MAX_TAGS_PER_RESOURCE = 50  # AWS's limit of user tags per resource

Taggable = BackupVault | BackupPlan | RecoveryPoint | LegalHold


def tag_resource(context: ServiceContext, resource_arn: str, tags: dict[str, str]) -> dict[str, Any]:
    """Add or overwrite tags on a resource."""
    checked = validate_recovery_point_tags(tags, "Tags")
    with context.catalog.transaction() as session:
        row = _taggable(session, resource_arn, for_update=True)
        merged = {**(row.tags or {}), **checked}
        if len(merged) > MAX_TAGS_PER_RESOURCE:
            raise InvalidParameterValueException(
                f"{resource_arn} would have {len(merged)} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed."
            )
        row.tags = merged  # a new object: JSON columns are not mutation-tracked
        return {}


def untag_resource(context: ServiceContext, resource_arn: str, tag_key_list: list[str]) -> dict[str, Any]:
    """Remove tags by key (keys that are not there are ignored, as in AWS)."""
    keys = {expect_str(key, "TagKeyList[]") for key in expect_list(tag_key_list, "TagKeyList")}
    with context.catalog.transaction() as session:
        row = _taggable(session, resource_arn, for_update=True)
        row.tags = {key: value for key, value in (row.tags or {}).items() if key not in keys}
        return {}


def list_tags(
    context: ServiceContext,
    resource_arn: str,
    *,
    next_token: str | None = None,
    max_results: int | None = None,
) -> dict[str, Any]:
    """Return ListTags' answer, by tag key."""
    size = page_size(max_results)
    after = decode_token(next_token, "ListTags", 1)
    with context.catalog.transaction() as session:
        tags = dict(_taggable(session, resource_arn).tags or {})
    keys = sorted(key for key in tags if after is None or key > str(after[0]))
    response: dict[str, Any] = {"Tags": {key: tags[key] for key in keys[:size]}}
    if len(keys) > size:
        response["NextToken"] = encode_token("ListTags", [keys[size - 1]])
    return response


def _taggable(session: Session, resource_arn: str, *, for_update: bool = False) -> Taggable:
    arn = parse_backup_arn(expect_str(resource_arn, "ResourceArn"))
    model: type[Taggable]
    if arn.kind == BackupArnKind.BACKUP_VAULT:
        model, column = BackupVault, BackupVault.arn
    elif arn.kind == BackupArnKind.BACKUP_PLAN:
        model, column = BackupPlan, BackupPlan.arn
    elif arn.kind == BackupArnKind.RECOVERY_POINT:
        model, column = RecoveryPoint, RecoveryPoint.arn
    elif arn.kind == BackupArnKind.LEGAL_HOLD:
        model, column = LegalHold, LegalHold.arn
    else:
        raise InvalidParameterValueException(
            f"Tags on {arn.kind} resources are not supported; tag backup vaults, backup plans, recovery "
            "points or legal holds."
        )
    statement = select(model).where(column == resource_arn)
    row = session.scalars(statement.with_for_update() if for_update else statement).first()
    if row is None:
        raise ResourceNotFoundException(f"Resource {resource_arn} does not exist.")
    return cast(Taggable, row)
