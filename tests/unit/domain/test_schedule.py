"""AWS schedule expressions: concrete run times, DST behaviour, limits and errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from backvault.domain.errors import InvalidParameterValueException
from backvault.domain.schedule import CronSchedule, RateSchedule, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def runs(expression: str, start: datetime, count: int, tz: str = "Etc/UTC") -> list[datetime]:
    schedule = parse_schedule(expression)
    result: list[datetime] = []
    moment = start
    for _ in range(count):
        following = schedule.next_after(moment, tz)
        assert following is not None
        result.append(following)
        moment = following
    return result


def test_weekdays_at_five_skip_the_weekend() -> None:
    schedule = parse_schedule("cron(0 5 ? * MON-FRI *)")
    friday_after_run = utc(2025, 1, 3, 6, 0)
    assert schedule.next_after(friday_after_run) == utc(2025, 1, 6, 5, 0)
    assert schedule.previous_at_or_before(friday_after_run) == utc(2025, 1, 3, 5, 0)
    assert runs("cron(0 5 ? * MON-FRI *)", utc(2025, 1, 3, 6, 0), 5) == [
        utc(2025, 1, 6, 5),
        utc(2025, 1, 7, 5),
        utc(2025, 1, 8, 5),
        utc(2025, 1, 9, 5),
        utc(2025, 1, 10, 5),
    ]


def test_next_is_strictly_after_and_previous_is_inclusive() -> None:
    schedule = parse_schedule("cron(0 5 ? * * *)")
    at_run = utc(2025, 6, 1, 5, 0)
    assert schedule.next_after(at_run) == utc(2025, 6, 2, 5, 0)
    assert schedule.previous_at_or_before(at_run) == at_run
    assert schedule.previous_at_or_before(at_run - timedelta(seconds=1)) == utc(2025, 5, 31, 5, 0)


def test_last_day_of_month_handles_leap_years() -> None:
    assert runs("cron(0 12 L * ? *)", utc(2024, 2, 1), 3) == [
        utc(2024, 2, 29, 12),
        utc(2024, 3, 31, 12),
        utc(2024, 4, 30, 12),
    ]
    assert parse_schedule("cron(0 12 L * ? *)").next_after(utc(2023, 2, 1)) == utc(2023, 2, 28, 12)


def test_third_friday_with_hash() -> None:
    assert runs("cron(0 0 ? * 6#3 *)", utc(2025, 1, 1), 3) == [
        utc(2025, 1, 17),
        utc(2025, 2, 21),
        utc(2025, 3, 21),
    ]


def test_fifth_occurrence_only_in_months_that_have_one() -> None:
    # Mondays: 2025-03-31 and 2025-06-30 are the only fifth Mondays in March-June 2025.
    assert runs("cron(0 0 ? * MON#5 *)", utc(2025, 3, 1), 2) == [utc(2025, 3, 31), utc(2025, 6, 30)]


def test_last_friday_and_l_alone_is_saturday() -> None:
    assert parse_schedule("cron(0 0 ? * 6L *)").next_after(utc(2025, 1, 1)) == utc(2025, 1, 31)
    assert parse_schedule("cron(0 0 ? * FRIL *)").next_after(utc(2025, 2, 1)) == utc(2025, 2, 28)
    assert runs("cron(0 0 ? * L *)", utc(2025, 1, 1), 2) == [utc(2025, 1, 4), utc(2025, 1, 11)]


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        ("cron(0 9 LW * ? *)", utc(2025, 8, 1), utc(2025, 8, 29, 9)),  # Aug 31 is a Sunday
        ("cron(0 9 LW * ? *)", utc(2025, 5, 1), utc(2025, 5, 30, 9)),  # May 31 is a Saturday
        ("cron(0 9 15W * ? *)", utc(2025, 2, 1), utc(2025, 2, 14, 9)),  # Sat 15th -> Fri 14th
        ("cron(0 9 15W * ? *)", utc(2025, 6, 1), utc(2025, 6, 16, 9)),  # Sun 15th -> Mon 16th
        ("cron(0 9 1W * ? *)", utc(2025, 3, 1), utc(2025, 3, 3, 9)),  # Sat 1st -> Mon 3rd, same month
        ("cron(0 9 31W * ? *)", utc(2025, 8, 1), utc(2025, 8, 29, 9)),  # Sun 31st -> Fri 29th
        ("cron(0 9 31W * ? *)", utc(2025, 4, 1), utc(2025, 5, 30, 9)),  # April has no 31st
    ],
)
def test_weekday_nearest(expression: str, start: datetime, expected: datetime) -> None:
    assert parse_schedule(expression).next_after(start) == expected


def test_names_equal_numbers_and_aws_day_numbering() -> None:
    named = runs("cron(0 8 ? JAN,JUL SUN *)", utc(2025, 1, 1), 6)
    numbered = runs("cron(0 8 ? 1,7 1 *)", utc(2025, 1, 1), 6)
    assert named == numbered
    assert all(moment.weekday() == 6 for moment in named)  # AWS 1 is Sunday
    saturday = parse_schedule("cron(0 8 ? * 7 *)").next_after(utc(2025, 1, 1))
    assert saturday == utc(2025, 1, 4, 8)


def test_year_field_limits() -> None:
    once = parse_schedule("cron(0 0 1 1 ? 2030)")
    assert once.next_after(utc(2025, 6, 1)) == utc(2030, 1, 1)
    assert once.next_after(utc(2030, 1, 1)) is None
    past = parse_schedule("cron(0 0 1 1 ? 2020-2022)")
    assert past.next_after(utc(2025, 1, 1)) is None
    assert past.previous_at_or_before(utc(2025, 1, 1)) == utc(2022, 1, 1)
    last = parse_schedule("cron(0 0 31 12 ? *)")
    assert last.next_after(utc(2199, 6, 1)) == utc(2199, 12, 31)
    assert last.next_after(utc(2199, 12, 31)) is None
    assert parse_schedule("cron(0 0 1 1 ? 2026/2)").next_after(utc(2026, 1, 1)) == utc(2028, 1, 1)


def test_spring_forward_skips_the_missing_wall_time() -> None:
    # Europe/Berlin jumps from 02:00 to 03:00 on 2025-03-30: 02:30 does not exist that day.
    assert runs("cron(30 2 * * ? *)", datetime(2025, 3, 29, 12, tzinfo=BERLIN), 2, "Europe/Berlin") == [
        datetime(2025, 3, 31, 2, 30, tzinfo=BERLIN),
        datetime(2025, 4, 1, 2, 30, tzinfo=BERLIN),
    ]
    first = parse_schedule("cron(30 2 * * ? *)").next_after(utc(2025, 3, 29, 12), "Europe/Berlin")
    assert first == utc(2025, 3, 31, 0, 30)


def test_fall_back_runs_a_repeated_wall_time_once() -> None:
    # Europe/Berlin repeats 02:00-03:00 on 2025-10-26; the first 02:30 (CEST, 00:30 UTC) runs, not the second.
    got = runs("cron(30 2 * * ? *)", utc(2025, 10, 25, 12), 2, "Europe/Berlin")
    assert [moment.astimezone(UTC) for moment in got] == [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]
    hourly = runs("cron(15 * ? * * *)", utc(2025, 10, 26, 0, 0), 3, "Europe/Berlin")
    assert [moment.astimezone(UTC) for moment in hourly] == [
        utc(2025, 10, 26, 0, 15),  # 02:15 CEST
        utc(2025, 10, 26, 2, 15),  # 03:15 CET; 02:15 CET is the repeat and is skipped
        utc(2025, 10, 26, 3, 15),
    ]


def test_a_local_after_inside_the_repeated_hour_compares_as_an_instant() -> None:
    # 02:15 CET (fold=1) is 01:15 UTC, later than 02:30 CEST (00:30 UTC), so 02:30 is not next again.
    second_0215 = datetime(2025, 10, 26, 2, 15, tzinfo=BERLIN, fold=1)
    schedule = parse_schedule("cron(30 * ? * * *)")
    following = schedule.next_after(second_0215, "Europe/Berlin")
    assert following is not None and following.astimezone(UTC) == utc(2025, 10, 26, 2, 30)
    previous = schedule.previous_at_or_before(second_0215, "Europe/Berlin")
    assert previous is not None and previous.astimezone(UTC) == utc(2025, 10, 26, 0, 30)


def test_local_time_follows_the_offset_change() -> None:
    got = runs("cron(0 5 ? * * *)", utc(2025, 3, 29, 0), 2, "Europe/Berlin")
    assert [moment.astimezone(UTC) for moment in got] == [utc(2025, 3, 29, 4), utc(2025, 3, 30, 3)]
    assert got[0].tzinfo == BERLIN


def test_previous_at_or_before_in_a_time_zone() -> None:
    schedule = parse_schedule("cron(0 23 ? * * *)")
    # 2025-07-01 22:30 UTC is already 00:30 on July 2nd in Berlin: the latest run is 23:00 CEST on July 1st.
    assert schedule.previous_at_or_before(utc(2025, 7, 1, 22, 30), "Europe/Berlin") == utc(2025, 7, 1, 21, 0)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("cron(0 5 * * * *)", "exactly one of Day-of-month"),
        ("cron(0 5 ? * ? *)", "exactly one of Day-of-month"),
        ("cron(0 5 ? * 8 *)", "outside 1-7"),
        ("cron(0 5 ? * 0 *)", "outside 1-7"),
        ("cron(60 5 ? * * *)", "outside 0-59"),
        ("cron(0 24 ? * * *)", "outside 0-23"),
        ("cron(0 5 32 * ? *)", "outside 1-31"),
        ("cron(0 5 ? 13 * *)", "outside 1-12"),
        ("cron(0 5 ? * * 1969)", "outside 1970-2199"),
        ("cron(0 5 ? * * 2200)", "outside 1970-2199"),
        ("cron(0 5 ? * *)", "takes 6 fields"),
        ("cron(0 5 ? * * * *)", "takes 6 fields"),
        ("cron(0 5 ? * 6#6 *)", "1-5"),
        ("cron(0 5 L,15 * ? *)", "not in a list"),
        ("cron(0 5 ? * 2,6L *)", "not in a list"),
        ("cron(0 5 5-1 * ? *)", "low to high"),
        ("cron(0 5 ? * MON-FRI/0 *)", "increment"),
        ("cron(0 5 ? FOO * *)", "expected a number or a name"),
        ("cron(0 x ? * * *)", "expected a number"),
        ("cron(0/30 * ? * * *)", "shouldn't be less than 60 minutes"),
        ("cron(0,30 5 ? * * *)", "shouldn't be less than 60 minutes"),
        ("cron(* 5 ? * * *)", "shouldn't be less than 60 minutes"),
        ("rate(30 minutes)", "shouldn't be less than 60 minutes"),
        ("rate(1 hours)", "singular"),
        ("rate(2 hour)", "plural"),
        ("rate(0 hours)", ">= 1"),
        ("rate(5 weeks)", "expected rate(VALUE UNIT)"),
        ("every day at 5", "expected cron("),
        ("0 5 * * *", "expected cron("),
    ],
)
def test_invalid_expressions(expression: str, fragment: str) -> None:
    with pytest.raises(InvalidParameterValueException) as info:
        parse_schedule(expression)
    assert info.value.code == "InvalidParameterValueException"
    assert info.value.http_status == 400
    assert fragment in info.value.message


def test_min_interval_can_be_lifted_for_other_schedulers() -> None:
    schedule = parse_schedule("cron(0/15 * ? * * *)", enforce_min_interval=False)
    assert schedule.next_after(utc(2025, 1, 1, 0, 50)) == utc(2025, 1, 1, 1, 0)
    assert schedule.next_after(utc(2025, 1, 1, 1, 0)) == utc(2025, 1, 1, 1, 15)
    assert parse_schedule("rate(5 minutes)", enforce_min_interval=False).expression == "rate(5 minutes)"


def test_hourly_is_the_most_frequent_allowed() -> None:
    assert isinstance(parse_schedule("cron(0 * ? * * *)"), CronSchedule)
    assert isinstance(parse_schedule("rate(60 minutes)"), RateSchedule)
    assert isinstance(parse_schedule("rate(1 hour)"), RateSchedule)


def test_rate_counts_fixed_periods_from_the_anchor() -> None:
    schedule = parse_schedule("rate(12 hours)")
    anchor = utc(2025, 1, 1, 0, 0)
    assert schedule.next_after(utc(2024, 12, 31), anchor=anchor) == anchor
    assert schedule.next_after(anchor, anchor=anchor) == utc(2025, 1, 1, 12)
    assert schedule.next_after(utc(2025, 1, 3, 7, 59), anchor=anchor) == utc(2025, 1, 3, 12)
    assert schedule.previous_at_or_before(utc(2025, 1, 1, 11, 59), anchor=anchor) == anchor
    assert schedule.previous_at_or_before(utc(2025, 1, 3, 12), anchor=anchor) == utc(2025, 1, 3, 12)
    assert schedule.previous_at_or_before(utc(2024, 12, 31), anchor=anchor) is None


def test_rate_days_are_24_hours_even_across_dst() -> None:
    schedule = parse_schedule("rate(1 day)")
    anchor = datetime(2025, 3, 29, 5, 0, tzinfo=BERLIN)  # 04:00 UTC
    following = schedule.next_after(anchor, "Europe/Berlin", anchor=anchor)
    assert following == datetime(2025, 3, 30, 6, 0, tzinfo=BERLIN)
    assert following is not None and following.astimezone(UTC) == utc(2025, 3, 30, 4)


def test_rate_needs_an_anchor_and_aware_times() -> None:
    with pytest.raises(ValueError, match="anchor"):
        parse_schedule("rate(1 day)").next_after(utc(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_schedule("cron(0 5 ? * * *)").next_after(datetime(2025, 1, 1))


def test_unknown_time_zone_is_a_parameter_error() -> None:
    with pytest.raises(InvalidParameterValueException, match="Mars/Olympus"):
        parse_schedule("cron(0 5 ? * * *)").next_after(utc(2025, 1, 1), "Mars/Olympus")


# croniter, given the Unix translation (day-of-week shifted by one), must agree in UTC.
_TRANSLATIONS = [
    ("cron(15 * ? * MON-FRI *)", "15 * * * 1-5"),
    ("cron(0 5 1,15 * ? *)", "0 5 1,15 * *"),
    ("cron(0 3 ? * 1 *)", "0 3 * * 0"),
    ("cron(0 3 ? * 7 *)", "0 3 * * 6"),
    ("cron(0 3 ? * 2-4 *)", "0 3 * * 1-3"),
    ("cron(0 12 L * ? *)", "0 12 L * *"),
    ("cron(0 0 ? * 6#3 *)", "0 0 * * 5#3"),
    ("cron(0 9 15W * ? *)", "0 9 15W * *"),
    ("cron(0 */2 ? JAN-MAR SAT *)", "0 */2 * 1-3 6"),
    ("cron(45 4/6 10-20/5 * ? *)", "45 4-23/6 10-20/5 * *"),
]


@pytest.mark.parametrize(("aws", "unix"), _TRANSLATIONS)
def test_agrees_with_croniter_in_utc(aws: str, unix: str) -> None:
    start = utc(2024, 1, 1)
    expected = croniter(unix, start)
    assert runs(aws, start, 60) == [expected.get_next(datetime) for _ in range(60)]


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    expression=st.sampled_from(
        ["cron(30 2 * * ? *)", "cron(0 5 ? * MON-FRI *)", "cron(0 12 L * ? *)", "cron(15 * ? * * *)"]
    ),
)
def test_previous_and_next_bracket_any_moment(moment: datetime, expression: str) -> None:
    at = moment.replace(tzinfo=UTC)
    schedule = parse_schedule(expression)
    previous = schedule.previous_at_or_before(at, "Europe/Berlin")
    following = schedule.next_after(at, "Europe/Berlin")
    assert previous is not None and following is not None
    assert previous <= at < following
    # No run hides between the two.
    assert schedule.next_after(previous, "Europe/Berlin") == following
