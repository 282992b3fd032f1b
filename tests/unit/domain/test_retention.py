"""Tests for the retention ("forget") policy.

The golden tests pin restic's semantics: every expected set below was worked out by hand from
restic's rules (newest first, one snapshot per bucket, -1 unlimited, the oldest snapshot kept
while a rule still has budget, keep-within measured from the newest snapshot with Go's AddDate)
and is written out literally on purpose. Do not regenerate them from the implementation.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backvault.domain.retention import (
    UNLIMITED,
    Decision,
    Duration,
    GroupKey,
    KeepPolicy,
    SnapshotRef,
    apply_policy,
    group_key,
    parse_duration,
)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _ids(text: str) -> set[str]:
    return set(text.split())


def _kept(decisions: list[Decision]) -> set[str]:
    return {d.snapshot.id for d in decisions if d.keep}


def _reasons(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.snapshot.id: d.reasons for d in decisions if d.keep}


# --------------------------------------------------------------------------------------------
# Golden data set: 40 snapshots, 2023-01-01 .. 2025-03-12, all UTC, one host and one path.
# Comments give weekday, ISO (year, week) and anything notable. Listed oldest first on purpose
# (apply_policy must sort); s01 is the oldest and s40 the newest.
# --------------------------------------------------------------------------------------------
_GOLDEN_TIMES: dict[str, str] = {
    "s01": "2023-01-01T10:00",  # Sun, ISO 2022-W52 (ISO year differs from calendar year)
    "s02": "2023-01-02T09:00",  # Mon, 2023-W01
    "s03": "2023-03-15T12:00",  # Wed, 2023-W11
    "s04": "2023-06-30T23:30",  # Fri, 2023-W26, June
    "s05": "2023-07-01T00:30",  # Sat, 2023-W26, July (same week, next month)
    "s06": "2023-12-31T22:00",  # Sun, 2023-W52
    "s07": "2024-01-01T01:00",  # Mon, 2024-W01
    "s08": "2024-02-29T12:00",  # Thu, 2024-W09, leap day
    "s09": "2024-03-31T08:00",  # Sun, 2024-W13
    "s10": "2024-04-30T18:00",  # Tue, 2024-W18
    "s11": "2024-05-31T20:00",  # Fri, 2024-W22
    "s12": "2024-09-01T06:00",  # Sun, 2024-W35 (after a three-month gap)
    "s13": "2024-12-22T12:00",  # Sun, 2024-W51
    "s14": "2024-12-28T15:00",  # Sat, 2024-W52
    "s15": "2024-12-29T23:59",  # Sun, 2024-W52
    "s16": "2024-12-30T00:01",  # Mon, ISO 2025-W01 although calendar year 2024
    "s17": "2024-12-31T23:00",  # Tue, ISO 2025-W01, last snapshot of calendar 2024
    "s18": "2025-01-01T00:00",  # Wed, 2025-W01
    "s19": "2025-01-05T18:00",  # Sun, 2025-W01
    "s20": "2025-01-06T07:00",  # Mon, 2025-W02
    "s21": "2025-01-31T12:00",  # Fri, 2025-W05
    "s22": "2025-02-01T12:00",  # Sat, 2025-W05
    "s23": "2025-02-28T23:00",  # Fri, 2025-W09
    "s24": "2025-03-01T01:00",  # Sat, 2025-W09
    "s25": "2025-03-03T09:00",  # Mon, 2025-W10
    "s26": "2025-03-08T10:00",  # Sat, 2025-W10
    "s27": "2025-03-09T08:00",  # Sun, 2025-W10
    "s28": "2025-03-09T20:00",  # Sun, 2025-W10
    "s29": "2025-03-10T00:15",  # Mon, 2025-W11
    "s30": "2025-03-10T09:05",  # Mon, hour 09 ...
    "s31": "2025-03-10T09:40",  # ... hour 09 again
    "s32": "2025-03-10T14:00",
    "s33": "2025-03-10T23:59",
    "s34": "2025-03-11T00:00",  # Tue
    "s35": "2025-03-11T06:10",  # hour 06 ...
    "s36": "2025-03-11T06:50",  # ... hour 06 again
    "s37": "2025-03-11T07:00",
    "s38": "2025-03-12T11:00",  # Wed, hour 11 ...
    "s39": "2025-03-12T11:30",  # ... hour 11 again
    "s40": "2025-03-12T12:00",  # newest
}
_GOLDEN_TAGS: dict[str, frozenset[str]] = {
    "s01": frozenset({"manual"}),
    "s05": frozenset({"pre-upgrade"}),
    "s12": frozenset({"manual", "pre-upgrade"}),
    "s30": frozenset({"manual"}),
}
GOLDEN: list[SnapshotRef] = [
    SnapshotRef(
        id=sid,
        time=_utc(when),
        hostname="db1",
        paths=("/var/lib/db",),
        tags=_GOLDEN_TAGS.get(sid, frozenset()),
    )
    for sid, when in _GOLDEN_TIMES.items()
]
ALL_IDS = frozenset(_GOLDEN_TIMES)


def test_golden_calendar_facts_hold() -> None:
    # Guards the hand-written comments above, which the expected sets were derived from.
    iso = {sid: _utc(t).isocalendar()[:2] for sid, t in _GOLDEN_TIMES.items()}
    assert iso["s01"] == (2022, 52)
    assert iso["s02"] == (2023, 1)
    assert iso["s15"] == (2024, 52)
    assert iso["s16"] == iso["s17"] == iso["s18"] == iso["s19"] == (2025, 1)
    assert iso["s20"] == (2025, 2)
    assert len(GOLDEN) == 40


GOLDEN_CASES: list[tuple[str, KeepPolicy, set[str]]] = [
    ("last 5", KeepPolicy(last=5), _ids("s40 s39 s38 s37 s36")),
    # s38 shares hour 11 with s39, s35 shares hour 06 with s36.
    ("hourly 6", KeepPolicy(hourly=6), _ids("s40 s39 s37 s36 s34 s33")),
    ("daily 7", KeepPolicy(daily=7), _ids("s40 s37 s33 s28 s26 s25 s24")),
    ("weekly 6", KeepPolicy(weekly=6), _ids("s40 s28 s24 s22 s20 s19")),
    # s16/s17 (30/31 Dec 2024) are in ISO week 2025-W01 together with s19, so they are not
    # separate weeks; the next week back is 2024-W52, whose newest is s15.
    ("weekly 10", KeepPolicy(weekly=10), _ids("s40 s28 s24 s22 s20 s19 s15 s13 s12 s11")),
    # 19 distinct ISO weeks exist; with 18 the budget runs out at s02 and s01 is not kept.
    (
        "weekly 18",
        KeepPolicy(weekly=18),
        _ids("s40 s28 s24 s22 s20 s19 s15 s13 s12 s11 s10 s09 s08 s07 s06 s05 s03 s02"),
    ),
    # s01 is alone in 2022-W52 (ISO), so it is a regular weekly snapshot here.
    (
        "weekly unlimited",
        KeepPolicy(weekly=UNLIMITED),
        _ids("s40 s28 s24 s22 s20 s19 s15 s13 s12 s11 s10 s09 s08 s07 s06 s05 s03 s02 s01"),
    ),
    ("monthly 4", KeepPolicy(monthly=4), _ids("s40 s23 s21 s17")),
    # Every month's newest, plus s01 as the oldest snapshot (same month as s02).
    (
        "monthly unlimited",
        KeepPolicy(monthly=-1),
        _ids("s40 s23 s21 s17 s12 s11 s10 s09 s08 s07 s06 s05 s04 s03 s02 s01"),
    ),
    ("yearly 2", KeepPolicy(yearly=2), _ids("s40 s17")),
    # Only three years exist, budget is left, so the oldest (s01) is kept additionally.
    ("yearly 5", KeepPolicy(yearly=5), _ids("s40 s17 s06 s01")),
    ("yearly unlimited", KeepPolicy(yearly=-1), _ids("s40 s17 s06 s01")),
    ("last unlimited", KeepPolicy(last=-1), set(ALL_IDS)),
    (
        "daily unlimited",
        KeepPolicy(daily=-1),
        set(ALL_IDS) - _ids("s39 s38 s36 s35 s34 s32 s31 s30 s29 s27"),
    ),
    ("hourly unlimited", KeepPolicy(hourly=-1), set(ALL_IDS) - _ids("s38 s35 s30")),
    # Cutoff 2025-03-10 12:00; s31 (09:40) is before it.
    ("within 2d", KeepPolicy(within=parse_duration("2d")), _ids("s40 s39 s38 s37 s36 s35 s34 s33 s32")),
    # Cutoff 2025-03-09 20:00 equals s28's time exactly: "within" is strictly after.
    (
        "within 2d16h",
        KeepPolicy(within=parse_duration("2d16h")),
        _ids("s40 s39 s38 s37 s36 s35 s34 s33 s32 s31 s30 s29"),
    ),
    # Cutoff 2025-02-12 12:00.
    (
        "within 1m",
        KeepPolicy(within=parse_duration("1m")),
        _ids("s40 s39 s38 s37 s36 s35 s34 s33 s32 s31 s30 s29 s28 s27 s26 s25 s24 s23"),
    ),
    # Cutoff 2024-01-09 12:00 minus 4 hours = 2024-01-09 08:00.
    (
        "within 1y2m3d4h",
        KeepPolicy(within=parse_duration("1y2m3d4h")),
        set(ALL_IDS) - _ids("s01 s02 s03 s04 s05 s06 s07"),
    ),
    # Cutoff 2023-03-12 12:00.
    ("within 2y", KeepPolicy(within=parse_duration("2y")), set(ALL_IDS) - _ids("s01 s02")),
    # Cutoff 2025-03-11 12:00: s40, s39, s38 are within; s38 shares s39's hour.
    ("within-hourly 1d", KeepPolicy(within_hourly=parse_duration("1d")), _ids("s40 s39")),
    # Cutoff 2025-03-09 12:00: s27 (08:00 that day) is outside.
    ("within-daily 3d", KeepPolicy(within_daily=parse_duration("3d")), _ids("s40 s37 s33 s28")),
    ("within-weekly 1m", KeepPolicy(within_weekly=parse_duration("1m")), _ids("s40 s28 s24")),
    # Cutoff 2024-03-12 12:00: s09 (31 Mar 2024) is the oldest within.
    (
        "within-monthly 1y",
        KeepPolicy(within_monthly=parse_duration("1y")),
        _ids("s40 s23 s21 s17 s12 s11 s10 s09"),
    ),
    # Everything is within; s01 is kept as the oldest, as for the count rules.
    ("within-yearly 5y", KeepPolicy(within_yearly=parse_duration("5y")), _ids("s40 s17 s06 s01")),
    ("tag manual", KeepPolicy(tags=frozenset({"manual"})), _ids("s30 s12 s01")),
    (
        "tag manual or pre-upgrade",
        KeepPolicy(tags=frozenset({"manual", "pre-upgrade"})),
        _ids("s30 s12 s05 s01"),
    ),
    # The empty tag matches snapshots that have no tags at all.
    ("tag empty", KeepPolicy(tags=frozenset({""})), set(ALL_IDS) - _ids("s01 s05 s12 s30")),
    ("hourly 3 + last 1", KeepPolicy(hourly=3, last=1), _ids("s40 s39 s37")),
    (
        "classic mix",
        KeepPolicy(last=2, daily=3, weekly=2, monthly=2, yearly=3),
        _ids("s40 s39 s37 s33 s28 s23 s17 s06"),
    ),
]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [pytest.param(policy, expected, id=name) for name, policy, expected in GOLDEN_CASES],
)
def test_golden_kept_sets(policy: KeepPolicy, expected: set[str]) -> None:
    decisions = apply_policy(GOLDEN, policy)
    assert _kept(decisions) == expected
    # Every snapshot gets exactly one decision, and keep <=> at least one reason.
    assert sorted(d.snapshot.id for d in decisions) == sorted(ALL_IDS)
    assert all(d.keep == bool(d.reasons) for d in decisions)


def test_golden_decisions_are_newest_first() -> None:
    decisions = apply_policy(GOLDEN, KeepPolicy(last=1))
    assert [d.snapshot.id for d in decisions] == [f"s{n:02d}" for n in range(40, 0, -1)]


def test_golden_combined_policy_reasons() -> None:
    policy = KeepPolicy(
        last=2,
        daily=3,
        weekly=2,
        monthly=2,
        yearly=3,
        within=parse_duration("2d"),
        tags=frozenset({"manual"}),
    )
    # Reason order is restic's: tags, within, last, hourly, daily, weekly, monthly, yearly.
    assert _reasons(apply_policy(GOLDEN, policy)) == {
        "s40": (
            "within 2d",
            "last snapshot",
            "daily snapshot",
            "weekly snapshot",
            "monthly snapshot",
            "yearly snapshot",
        ),
        "s39": ("within 2d", "last snapshot"),
        "s38": ("within 2d",),
        "s37": ("within 2d", "daily snapshot"),
        "s36": ("within 2d",),
        "s35": ("within 2d",),
        "s34": ("within 2d",),
        "s33": ("within 2d", "daily snapshot"),
        "s32": ("within 2d",),
        "s30": ("has tags [manual]",),
        "s28": ("weekly snapshot",),
        "s23": ("monthly snapshot",),
        "s17": ("yearly snapshot",),
        "s12": ("has tags [manual]",),
        "s06": ("yearly snapshot",),
        # The yearly budget (3) is used up by s06, so s01 is only kept for its tag.
        "s01": ("has tags [manual]",),
    }


def test_golden_oldest_reasons() -> None:
    assert _reasons(apply_policy(GOLDEN, KeepPolicy(yearly=5))) == {
        "s40": ("yearly snapshot",),
        "s17": ("yearly snapshot",),
        "s06": ("yearly snapshot",),
        "s01": ("oldest yearly snapshot",),
    }
    assert _reasons(apply_policy(GOLDEN, KeepPolicy(monthly=-1)))["s01"] == ("oldest monthly snapshot",)
    # s01 is a week of its own, so it is an ordinary (not "oldest") weekly snapshot.
    assert _reasons(apply_policy(GOLDEN, KeepPolicy(weekly=-1)))["s01"] == ("weekly snapshot",)
    assert _reasons(apply_policy(GOLDEN, KeepPolicy(within_yearly=Duration(years=5)))) == {
        "s40": ("yearly within 5y",),
        "s17": ("yearly within 5y",),
        "s06": ("yearly within 5y",),
        "s01": ("oldest yearly within 5y",),
    }


def test_golden_tag_and_within_bucket_reasons() -> None:
    policy = KeepPolicy(tags=frozenset({"pre-upgrade", "manual"}), within_daily=Duration(days=3))
    assert _reasons(apply_policy(GOLDEN, policy)) == {
        "s40": ("daily within 3d",),
        "s37": ("daily within 3d",),
        "s33": ("daily within 3d",),
        "s30": ("has tags [manual]",),
        "s28": ("daily within 3d",),
        "s12": ("has tags [manual]", "has tags [pre-upgrade]"),
        "s05": ("has tags [pre-upgrade]",),
        "s01": ("has tags [manual]",),
    }


def test_oldest_snapshot_of_a_bucket_is_kept_while_budget_remains() -> None:
    day = [
        SnapshotRef("early", _utc("2025-05-05T01:00")),
        SnapshotRef("noon", _utc("2025-05-05T12:00")),
        SnapshotRef("late", _utc("2025-05-05T23:00")),
    ]
    assert _reasons(apply_policy(day, KeepPolicy(daily=2))) == {
        "late": ("daily snapshot",),
        "early": ("oldest daily snapshot",),
    }
    # Budget of one is spent on "late"; nothing more is kept.
    assert _kept(apply_policy(day, KeepPolicy(daily=1))) == {"late"}


# --------------------------------------------------------------------------------------------
# keep-within calendar arithmetic (Go's AddDate rolls month ends over instead of clamping)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("newest", "duration", "cutoff"),
    [
        # "31 February 2024" rolls over to 2 March (2024 is a leap year) ...
        ("2024-03-31T12:00", "1m", "2024-03-02T12:00"),
        # ... and to 3 March in a common year.
        ("2025-03-31T12:00", "1m", "2025-03-03T12:00"),
        # "31 April" is 1 May: keep-within 1m from 31 May reaches back only to 1 May.
        ("2024-05-31T10:00", "1m", "2024-05-01T10:00"),
        # "29 February 2023" is 1 March 2023.
        ("2024-02-29T00:00", "1y", "2023-03-01T00:00"),
        # Day 0 of February is 31 January.
        ("2025-03-01T06:00", "1m1d", "2025-01-31T06:00"),
        ("2025-03-12T12:00", "1y2m3d4h", "2024-01-09T08:00"),
        ("2025-01-01T02:00", "3h", "2024-12-31T23:00"),
        ("2025-03-12T12:00", "14m", "2024-01-12T12:00"),
    ],
)
def test_duration_subtract_from(newest: str, duration: str, cutoff: str) -> None:
    assert parse_duration(duration).subtract_from(_utc(newest)) == _utc(cutoff)


def test_keep_within_month_end_leap_year() -> None:
    snaps = [
        SnapshotRef("newest", _utc("2024-03-31T12:00")),
        SnapshotRef("just-after", _utc("2024-03-02T12:01")),
        SnapshotRef("exactly-at", _utc("2024-03-02T12:00")),
        # A clamping implementation (cutoff 29 Feb) would keep these two.
        SnapshotRef("first-of-march", _utc("2024-03-01T12:00")),
        SnapshotRef("leap-day", _utc("2024-02-29T13:00")),
    ]
    decisions = apply_policy(snaps, KeepPolicy(within=Duration(months=1)))
    assert _reasons(decisions) == {"newest": ("within 1m",), "just-after": ("within 1m",)}


def test_keep_within_one_month_from_may_31_starts_may_1() -> None:
    snaps = [
        SnapshotRef("newest", _utc("2024-05-31T10:00")),
        SnapshotRef("may-1", _utc("2024-05-01T10:30")),
        SnapshotRef("april-30", _utc("2024-04-30T23:00")),
    ]
    assert _kept(apply_policy(snaps, KeepPolicy(within=Duration(months=1)))) == {"newest", "may-1"}


def test_keep_within_one_year_from_leap_day() -> None:
    snaps = [
        SnapshotRef("leap", _utc("2024-02-29T00:00")),
        SnapshotRef("mar-1", _utc("2023-03-01T00:30")),
        SnapshotRef("feb-28", _utc("2023-02-28T23:00")),
    ]
    assert _kept(apply_policy(snaps, KeepPolicy(within=Duration(years=1)))) == {"leap", "mar-1"}


def test_within_days_are_calendar_days_and_hours_are_elapsed_time() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # DST starts in Berlin on 2025-03-30, so that calendar day has 23 hours.
    newest = datetime(2025, 3, 30, 12, 0, tzinfo=berlin)  # 10:00 UTC
    before = datetime(2025, 3, 29, 11, 30, tzinfo=berlin)  # 10:30 UTC
    assert Duration(days=1).subtract_from(newest) == datetime(2025, 3, 29, 12, 0, tzinfo=berlin)
    assert Duration(hours=24).subtract_from(newest) == _utc("2025-03-29T10:00")
    snaps = [SnapshotRef("newest", newest), SnapshotRef("before", before)]
    assert _kept(apply_policy(snaps, KeepPolicy(within=Duration(days=1)))) == {"newest"}
    assert _kept(apply_policy(snaps, KeepPolicy(within=Duration(hours=24)))) == {"newest", "before"}


def test_keep_within_ignores_future_snapshots_as_reference_when_now_given() -> None:
    snaps = [
        SnapshotRef("future", _utc("2030-01-01T00:00")),
        SnapshotRef("p1", _utc("2025-03-12T12:00")),
        SnapshotRef("p2", _utc("2025-03-11T11:00")),
    ]
    policy = KeepPolicy(within=Duration(days=1))
    # Without `now` the newest snapshot (even a future one) is the reference.
    assert _kept(apply_policy(snaps, policy)) == {"future"}
    # With `now`, the newest non-future snapshot is; the future one is within and kept.
    assert _kept(apply_policy(snaps, policy, now=_utc("2025-03-13T00:00"))) == {"future", "p1"}
    # Every snapshot in the future: nothing to measure from, so all are within (as restic).
    assert _kept(apply_policy(snaps, policy, now=_utc("2020-01-01T00:00"))) == {"future", "p1", "p2"}


def test_keep_within_reaching_before_year_one_keeps_everything() -> None:
    snaps = [SnapshotRef("a", _utc("0005-01-01T00:00")), SnapshotRef("b", _utc("0001-01-01T05:00"))]
    assert _kept(apply_policy(snaps, KeepPolicy(within=Duration(years=10)))) == {"a", "b"}
    with pytest.raises(OverflowError, match="0005-01-01"):
        Duration(years=10).subtract_from(snaps[0].time)


# --------------------------------------------------------------------------------------------
# Buckets, ordering, grouping
# --------------------------------------------------------------------------------------------


def test_buckets_use_each_snapshots_own_wall_clock() -> None:
    plus_one = timezone(timedelta(hours=1))
    snaps = [
        # 2024-12-31 23:30 UTC, but 2025 on its own clock.
        SnapshotRef("a", datetime(2025, 1, 1, 0, 30, tzinfo=plus_one)),
        SnapshotRef("b", _utc("2024-12-31T22:00")),
        SnapshotRef("c", _utc("2024-06-01T12:00")),
    ]
    # In UTC, a and b would share 2024 and c would be kept as the oldest instead of b.
    assert _reasons(apply_policy(snaps, KeepPolicy(yearly=2))) == {
        "a": ("yearly snapshot",),
        "b": ("yearly snapshot",),
    }


def test_equal_times_keep_input_order() -> None:
    when = _utc("2025-01-01T00:00")
    snaps = [SnapshotRef("first", when), SnapshotRef("second", when)]
    decisions = apply_policy(snaps, KeepPolicy(last=1))
    assert [(d.snapshot.id, d.keep) for d in decisions] == [("first", True), ("second", False)]


_GROUPED = [
    SnapshotRef("a1", _utc("2025-01-01T10:00"), "a", ("/home",)),
    SnapshotRef("a2", _utc("2025-01-02T10:00"), "a", ("/home",)),
    SnapshotRef("b1", _utc("2025-01-01T12:00"), "b", ("/home",)),
    SnapshotRef("b2", _utc("2025-01-03T09:00"), "b", ("/home",), frozenset({"x"})),
    SnapshotRef("e1", _utc("2025-01-04T00:00"), "a", ("/etc",), frozenset({"x"})),
    SnapshotRef("m1", _utc("2025-01-05T08:00"), "a", ("/srv", "/home")),
    SnapshotRef("m2", _utc("2025-01-04T20:00"), "a", ("/home", "/srv")),
]


def test_group_by_host_and_paths_is_the_default() -> None:
    decisions = apply_policy(_GROUPED, KeepPolicy(last=1))
    # Path order does not matter (m1, m2 share a group); groups come in key order.
    assert [(d.snapshot.id, d.keep) for d in decisions] == [
        ("e1", True),
        ("a2", True),
        ("a1", False),
        ("m1", True),
        ("m2", False),
        ("b2", True),
        ("b1", False),
    ]


def test_group_by_variants() -> None:
    assert _kept(apply_policy(_GROUPED, KeepPolicy(last=1), group_by=())) == {"m1"}
    assert _kept(apply_policy(_GROUPED, KeepPolicy(last=1), group_by=("host",))) == {"m1", "b2"}
    assert _kept(apply_policy(_GROUPED, KeepPolicy(last=1), group_by=("tags",))) == {"m1", "e1"}
    assert _kept(apply_policy(_GROUPED, KeepPolicy(last=1), group_by=("paths",))) == {"e1", "b2", "m1"}


def test_keep_within_is_measured_per_group() -> None:
    # Host a's newest is m1 (cutoff 01-04 08:00); host b's newest is b2 (cutoff 01-02 09:00).
    decisions = apply_policy(_GROUPED, KeepPolicy(within=Duration(days=1)), group_by=("host",))
    assert _kept(decisions) == {"m1", "m2", "b2"}


def test_group_key() -> None:
    snap = _GROUPED[5]
    assert group_key(snap) == GroupKey(hostname="a", paths=("/home", "/srv"))
    assert group_key(snap, ("tags", "host")) == GroupKey(hostname="a", tags=())
    assert group_key(snap, ()) == GroupKey()


def test_group_by_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="'hostname'"):
        apply_policy(_GROUPED, KeepPolicy(last=1), group_by=("hostname",))
    with pytest.raises(TypeError, match="'host'"):
        apply_policy(_GROUPED, KeepPolicy(last=1), group_by="host")


def test_empty_input_gives_no_decisions() -> None:
    assert apply_policy([], KeepPolicy(last=1)) == []


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1y2m3d4h", Duration(1, 2, 3, 4)),
        ("7d", Duration(days=7)),
        (" 36h ", Duration(hours=36)),
        ("2d1y", Duration(years=1, days=2)),
        ("0d", Duration()),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "1w", "d", "5", "-1d", "1d2d", "1d 2h", "1D", "1.5d", "y1"])
def test_parse_duration_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


def test_duration_str_matches_restic() -> None:
    assert str(Duration(1, 2, 3, 4)) == "1y2m3d4h"
    assert str(Duration(days=2)) == "2d"
    assert str(Duration(years=1, hours=6)) == "1y6h"


def test_duration_rejects_negative_parts() -> None:
    with pytest.raises(ValueError, match="days"):
        Duration(days=-1)


@pytest.mark.parametrize("field", ["last", "hourly", "daily", "weekly", "monthly", "yearly"])
def test_negative_counts_other_than_minus_one_are_rejected(field: str) -> None:
    unlimited: dict[str, Any] = {field: -1}
    too_negative: dict[str, Any] = {field: -2}
    assert getattr(KeepPolicy(**unlimited), field) == UNLIMITED
    with pytest.raises(ValueError, match=field):
        KeepPolicy(**too_negative)


def test_is_empty() -> None:
    assert KeepPolicy().is_empty()
    # A zero duration means "not set", as in restic.
    assert KeepPolicy(within=Duration(), within_daily=parse_duration("0h")).is_empty()
    assert not KeepPolicy(last=-1).is_empty()
    assert not KeepPolicy(within_monthly=Duration(months=1)).is_empty()
    assert not KeepPolicy(tags=frozenset({""})).is_empty()


def test_empty_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="empty retention policy"):
        apply_policy(GOLDEN, KeepPolicy())


def test_snapshot_time_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SnapshotRef("x", datetime(2025, 1, 1))


def test_duplicate_ids_are_rejected() -> None:
    snap = SnapshotRef("x", _utc("2025-01-01T00:00"))
    with pytest.raises(ValueError, match="duplicate"):
        apply_policy([snap, snap], KeepPolicy(last=1))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_OFFSETS = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
_times = st.datetimes(
    min_value=datetime(2021, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.sampled_from(_OFFSETS)
)


@st.composite
def _snapshot_lists(draw: st.DrawFn) -> list[SnapshotRef]:
    rows = draw(
        st.lists(
            st.tuples(
                _times,
                st.sampled_from(["h1", "h2"]),
                st.frozensets(st.sampled_from(["a", "b", "c"]), max_size=2),
            ),
            max_size=30,
        )
    )
    return [SnapshotRef(f"s{i}", when, host, ("/data",), tags) for i, (when, host, tags) in enumerate(rows)]


_counts = st.one_of(st.just(UNLIMITED), st.integers(min_value=0, max_value=6))
_durations = st.one_of(
    st.none(),
    st.builds(
        Duration,
        years=st.integers(0, 1),
        months=st.integers(0, 3),
        days=st.integers(0, 20),
        hours=st.integers(0, 48),
    ),
)
_policies = st.builds(
    KeepPolicy,
    last=_counts,
    hourly=_counts,
    daily=_counts,
    weekly=_counts,
    monthly=_counts,
    yearly=_counts,
    within=_durations,
    within_hourly=_durations,
    within_daily=_durations,
    within_weekly=_durations,
    within_monthly=_durations,
    within_yearly=_durations,
    tags=st.frozensets(st.sampled_from(["a", "b", "c", ""]), max_size=2),
).filter(lambda policy: not policy.is_empty())


def _single_rule_policies(policy: KeepPolicy) -> list[KeepPolicy]:
    """Split a policy into one policy per rule, in restic's reason order."""
    parts: list[KeepPolicy] = []
    single: dict[str, Any]
    if policy.tags:
        parts.append(KeepPolicy(tags=policy.tags))
    if policy.within is not None and not policy.within.is_zero():
        parts.append(KeepPolicy(within=policy.within))
    for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        if getattr(policy, name):
            single = {name: getattr(policy, name)}
            parts.append(KeepPolicy(**single))
    for name in ("within_hourly", "within_daily", "within_weekly", "within_monthly", "within_yearly"):
        duration = getattr(policy, name)
        if duration is not None and not duration.is_zero():
            single = {name: duration}
            parts.append(KeepPolicy(**single))
    return parts


@settings(max_examples=300, deadline=None)
@given(snaps=_snapshot_lists(), policy=_policies)
def test_combined_policy_is_union_of_its_rules(snaps: list[SnapshotRef], policy: KeepPolicy) -> None:
    combined = apply_policy(snaps, policy)
    singles = [apply_policy(snaps, part) for part in _single_rule_policies(policy)]
    assert _kept(combined) == set().union(*(_kept(single) for single in singles))
    # Stronger: each snapshot's reasons are the concatenation of the single rules' reasons.
    expected_reasons = {
        d.snapshot.id: tuple(r for single in singles for r in _reasons(single).get(d.snapshot.id, ()))
        for d in combined
    }
    assert {d.snapshot.id: d.reasons for d in combined} == expected_reasons


@settings(max_examples=300, deadline=None)
@given(snaps=_snapshot_lists(), n=st.integers(min_value=1, max_value=40))
def test_keep_last_keeps_exactly_the_n_newest(snaps: list[SnapshotRef], n: int) -> None:
    decisions = apply_policy(snaps, KeepPolicy(last=n), group_by=())
    newest_first = [s.id for s in sorted(snaps, key=lambda s: s.time, reverse=True)]
    assert [d.snapshot.id for d in decisions] == newest_first
    assert [d.snapshot.id for d in decisions if d.keep] == newest_first[: min(n, len(snaps))]
    assert all(d.reasons == ("last snapshot",) for d in decisions if d.keep)


@settings(max_examples=300, deadline=None)
@given(snaps=_snapshot_lists(), policy=_policies)
def test_every_snapshot_decided_once_and_newest_kept(snaps: list[SnapshotRef], policy: KeepPolicy) -> None:
    decisions = apply_policy(snaps, policy)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snaps)
    assert all(d.keep == bool(d.reasons) for d in decisions)
    tags_only = replace(policy, tags=frozenset()).is_empty()
    if not tags_only:
        # Any count or within rule keeps the newest snapshot of every group.
        for host in {s.hostname for s in snaps}:
            group = [d for d in decisions if d.snapshot.hostname == host]
            assert group[0].keep
