"""Small builders shared by the control-plane tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from backvault.control.catalog import Catalog, RecoveryPoint

ROLE = "arn:aws:iam::000000000000:role/service-role/AWSBackupDefaultServiceRole"
PG_RESOURCE = "arn:aws:backvault:local:000000000000:postgresql:pg/orders"
START = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward."""
        self.current += delta


def plan_document(name: str = "daily", vault: str = "main", **rule: Any) -> dict[str, Any]:
    """Return a one-rule BackupPlanInput; keyword arguments override or add rule members."""
    body: dict[str, Any] = {"RuleName": "nightly", "TargetBackupVaultName": vault}
    body.update(rule)
    return {"BackupPlanName": name, "Rules": [body]}


def selection_document(name: str = "tagged", **members: Any) -> dict[str, Any]:
    """Return a BackupSelection selecting by tag unless members say otherwise."""
    body: dict[str, Any] = {
        "SelectionName": name,
        "IamRoleArn": ROLE,
        "ListOfTags": [
            {"ConditionType": "STRINGEQUALS", "ConditionKey": "backup", "ConditionValue": "daily"}
        ],
    }
    body.update(members)
    return body


def add_recovery_point(catalog: Catalog, vault_name: str, vault_arn: str, created: datetime) -> str:
    """Record a recovery point in a vault (as a backup job will) and return its id."""
    point_id = uuid.uuid4().hex
    region_and_account = vault_arn.split(":")[3:5]
    with catalog.transaction() as session:
        session.add(
            RecoveryPoint(
                id=point_id,
                arn=f"arn:aws:backup:{':'.join(region_and_account)}:recovery-point:{point_id}",
                vault_name=vault_name,
                resource_arn=PG_RESOURCE,
                resource_type="PostgreSQL",
                status="COMPLETED",
                creation_date=created,
                storage_class="WARM",
            )
        )
    return point_id
