"""Legal holds: AWS shapes, selection by vault/resource/date, and blocking deletion and expiry."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from control_helpers import FakeClock
from point_helpers import RESOURCE, back_up_point, make_data, point_row

from backvault.control.context import ServiceContext
from backvault.control.legal_holds import (
    cancel_legal_hold,
    create_legal_hold,
    get_legal_hold,
    list_legal_holds,
    list_recovery_points_by_legal_hold,
    points_under_hold,
)
from backvault.control.lifecycle_engine import run_lifecycle
from backvault.control.recovery_points import delete_recovery_point, get_point_row
from backvault.control.vaults import create_backup_vault
from backvault.domain.errors import (
    InvalidParameterValueException,
    InvalidRequestException,
    InvalidResourceStateException,
    MissingParameterValueException,
    ResourceNotFoundException,
)

OTHER = "arn:aws:backvault:local:000000000000:filesystem:files/other"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_data(tmp_path / "projects", size=200 * 1024)


def test_create_get_list_and_cancel(context: ServiceContext, clock: FakeClock) -> None:
    start = clock.current
    selection = {
        "VaultNames": ["main"],
        "DateRange": {"FromDate": start - timedelta(days=1), "ToDate": start + timedelta(days=1)},
    }
    created = create_legal_hold(
        context, "Case 42", "Keep everything", idempotency_token="token-1", recovery_point_selection=selection
    )
    assert created["Status"] == "ACTIVE" and created["Title"] == "Case 42"
    assert created["LegalHoldArn"].startswith("arn:aws:backup:local:000000000000:legal-hold:")
    assert created["RecoveryPointSelection"] == selection
    assert created["CreationDate"] == start
    again = create_legal_hold(
        context, "Case 42", "Keep everything", idempotency_token="token-1", recovery_point_selection=selection
    )
    assert again["LegalHoldId"] == created["LegalHoldId"]

    hold_id = created["LegalHoldId"]
    got = get_legal_hold(context, hold_id)
    assert got["RecoveryPointSelection"] == selection and got["Description"] == "Keep everything"
    listed = list_legal_holds(context)["LegalHolds"]
    assert [item["LegalHoldId"] for item in listed] == [hold_id]

    clock.advance(timedelta(hours=2))
    assert cancel_legal_hold(context, hold_id, "settled", retain_record_in_days=30) == {}
    got = get_legal_hold(context, hold_id)
    assert got["Status"] == "CANCELED" and got["CancelDescription"] == "settled"
    assert got["CancellationDate"] == clock.current
    assert got["RetainRecordUntil"] == clock.current + timedelta(days=30)
    with pytest.raises(InvalidResourceStateException):
        cancel_legal_hold(context, hold_id, "again")
    with pytest.raises(ResourceNotFoundException):
        get_legal_hold(context, "missing")


def test_bad_requests_are_refused_with_the_reason(context: ServiceContext, clock: FakeClock) -> None:
    with pytest.raises(MissingParameterValueException, match="RecoveryPointSelection"):
        create_legal_hold(context, "t", "d")
    with pytest.raises(MissingParameterValueException, match="at least one"):
        create_legal_hold(context, "t", "d", recovery_point_selection={})
    with pytest.raises(InvalidParameterValueException, match="FromDate"):
        create_legal_hold(
            context,
            "t",
            "d",
            recovery_point_selection={
                "DateRange": {"FromDate": clock.current, "ToDate": clock.current - timedelta(days=1)}
            },
        )
    with pytest.raises(InvalidParameterValueException, match="Title"):
        create_legal_hold(context, " ", "d", recovery_point_selection={"VaultNames": ["main"]})
    with pytest.raises(InvalidParameterValueException, match="not valid"):
        create_legal_hold(context, "t", "d", recovery_point_selection={"VaultNames": ["bad name!"]})
    hold = create_legal_hold(context, "t", "d", recovery_point_selection={"VaultNames": ["main"]})
    with pytest.raises(InvalidParameterValueException, match="RetainRecordInDays"):
        cancel_legal_hold(context, hold["LegalHoldId"], "x", retain_record_in_days=-1)
    assert get_legal_hold(context, hold["LegalHoldId"])["Status"] == "ACTIVE"


def test_selection_picks_points_by_vault_resource_and_date(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "main")
    create_backup_vault(context, "other")
    early = back_up_point(context, "main", source)
    clock.advance(timedelta(days=3))
    late = back_up_point(context, "main", source)
    elsewhere = back_up_point(context, "other", source)
    other_resource = back_up_point(context, "main", source, resource_arn=OTHER)

    by_vault_and_resource = create_legal_hold(
        context,
        "t",
        "d",
        recovery_point_selection={"VaultNames": ["main"], "ResourceIdentifiers": [RESOURCE]},
    )["LegalHoldId"]
    by_date = create_legal_hold(
        context,
        "t",
        "d",
        recovery_point_selection={
            "DateRange": {
                "FromDate": clock.current - timedelta(days=4),
                "ToDate": clock.current - timedelta(days=1),
            }
        },
    )["LegalHoldId"]
    by_type = create_legal_hold(
        context, "t", "d", recovery_point_selection={"ResourceIdentifiers": ["Filesystem"]}
    )["LegalHoldId"]

    def held(hold_id: str, **page: int | str) -> set[str]:
        answer = list_recovery_points_by_legal_hold(context, hold_id, **page)  # type: ignore[arg-type]
        return {item["RecoveryPointArn"] for item in answer["RecoveryPoints"]}

    assert held(by_vault_and_resource) == {early, late}
    assert held(by_date) == {early}
    assert held(by_type) == {early, late, elsewhere, other_resource}
    first = list_recovery_points_by_legal_hold(context, by_type, max_results=3)
    assert len(first["RecoveryPoints"]) == 3
    rest = held(by_type, next_token=first["NextToken"])
    assert len(rest) == 1 and rest | {p["RecoveryPointArn"] for p in first["RecoveryPoints"]} == held(by_type)
    with context.catalog.transaction() as session:
        assert points_under_hold(session, get_point_row(session, other_resource))
    cancel_legal_hold(context, by_type, "done")
    with context.catalog.transaction() as session:
        assert not points_under_hold(session, get_point_row(session, other_resource))
        assert points_under_hold(session, get_point_row(session, early))


def test_a_hold_blocks_expiry_and_deletion_until_it_is_cancelled(
    context: ServiceContext, clock: FakeClock, source: Path
) -> None:
    create_backup_vault(context, "main")
    arn = back_up_point(context, "main", source, lifecycle={"DeleteAfterDays": 2})
    free = back_up_point(context, "main", source, resource_arn=OTHER, lifecycle={"DeleteAfterDays": 2})
    hold = create_legal_hold(context, "t", "d", recovery_point_selection={"ResourceIdentifiers": [RESOURCE]})

    clock.advance(timedelta(days=3))
    report = run_lifecycle(context, prune_grace_seconds=0)
    assert report.held_by_legal_hold == [arn]
    assert report.expired == [free]
    assert point_row(context, arn) is not None and point_row(context, free) is None
    with pytest.raises(InvalidRequestException, match="legal hold"):
        delete_recovery_point(context, "main", arn)
    # a point created after the hold is covered as well
    newer = back_up_point(context, "main", source, lifecycle={"DeleteAfterDays": 1})
    clock.advance(timedelta(days=2))
    assert set(run_lifecycle(context, prune_grace_seconds=0).held_by_legal_hold) == {arn, newer}

    cancel_legal_hold(context, hold["LegalHoldId"], "released")
    report = run_lifecycle(context, prune_grace_seconds=0)
    assert set(report.expired) == {arn, newer}
    assert point_row(context, arn) is None and point_row(context, newer) is None
