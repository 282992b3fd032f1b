"""AWS schedule expressions: ``cron(Minutes Hours Day-of-month Month Day-of-week Year)`` and ``rate(N unit)``.

Syntax and limits are EventBridge's, which AWS Backup uses: minutes 0-59, hours 0-23, day-of-month
1-31 with ``L``, ``LW`` and ``nW``, months 1-12 or JAN-DEC, day-of-week 1-7 (1=SUN ... 7=SAT, unlike
Unix cron's 0=SUN) or SUN-SAT with ``L`` (Saturday), ``nL`` (last such weekday of the month) and
``n#k`` (k-th such weekday), years 1970-2199; ``,``, ``-``, ``*`` and ``/`` everywhere; exactly one
of day-of-month and day-of-week must be ``?``. AWS Backup refuses schedules that can run more often
than hourly ("The interval between backup jobs shouldn't be less than 60 minutes"): a cron
expression must name a single minute and a rate must be at least 60 minutes.

Times are evaluated on the wall clock of ``ScheduleExpressionTimezone`` with EventBridge Scheduler's
daylight-saving rules: a wall time skipped when clocks spring forward does not run that day, and a
wall time that happens twice when clocks fall back runs once, at its first occurrence. croniter is
not used for evaluation because it does neither (it runs 02:30 at 03:00 on spring-forward day and
twice on fall-back day) and has no ``LW``; tests cross-check this module against croniter in UTC.

``rate()`` is a fixed duration (a day is 24 hours, as in EventBridge Scheduler) counted from an
anchor the caller supplies (for a backup rule: when the rule's plan version was created).
"""

from __future__ import annotations

import calendar
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backvault.domain.errors import InvalidParameterValueException

MIN_YEAR = 1970
MAX_YEAR = 2199
DEFAULT_TIMEZONE = "Etc/UTC"
MIN_INTERVAL_MESSAGE = "The interval between backup jobs shouldn't be less than 60 minutes."

_MONTH_NAMES = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}
_DAY_NAMES = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}


def zone_for(name: str) -> ZoneInfo:
    """Return the IANA time zone of that name, or raise InvalidParameterValueException."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidParameterValueException(
            f"ScheduleExpressionTimezone {name!r} is not a known IANA time zone (for example Etc/UTC or "
            "Europe/Berlin)."
        ) from None


class Schedule(ABC):
    """A parsed schedule expression that can list its run times."""

    expression: str

    @abstractmethod
    def next_after(
        self, after: datetime, tz: str = DEFAULT_TIMEZONE, anchor: datetime | None = None
    ) -> datetime | None:
        """Return the first run time strictly after ``after`` (in ``tz``), or None if there is none."""

    @abstractmethod
    def previous_at_or_before(
        self, at: datetime, tz: str = DEFAULT_TIMEZONE, anchor: datetime | None = None
    ) -> datetime | None:
        """Return the latest run time at or before ``at`` (in ``tz``), or None if there is none."""

    def __str__(self) -> str:
        return self.expression


def parse_schedule(expression: str, *, enforce_min_interval: bool = True) -> Schedule:
    """Parse a ``cron()`` or ``rate()`` expression, raising InvalidParameterValueException if invalid."""
    if not isinstance(expression, str):
        raise InvalidParameterValueException("ScheduleExpression must be a string.")
    text = expression.strip()
    if text.startswith("cron(") and text.endswith(")"):
        return _parse_cron(text, enforce_min_interval)
    if text.startswith("rate(") and text.endswith(")"):
        return _parse_rate(text, enforce_min_interval)
    raise InvalidParameterValueException(
        f"Invalid ScheduleExpression {expression!r}: expected cron(Minutes Hours Day-of-month Month "
        "Day-of-week Year), for example cron(0 5 ? * * *), or rate(N hours)."
    )


# --- rate() --------------------------------------------------------------------------------------

_RATE_RE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_MINUTES = {"minute": 1, "hour": 60, "day": 1440}


@dataclass(frozen=True)
class RateSchedule(Schedule):
    """``rate(N unit)``: runs every fixed period counted from an anchor."""

    expression: str
    value: int
    unit: str

    @property
    def period(self) -> timedelta:
        """The fixed time between two runs."""
        return timedelta(minutes=self.value * _UNIT_MINUTES[self.unit.rstrip("s")])

    def next_after(
        self, after: datetime, tz: str = DEFAULT_TIMEZONE, anchor: datetime | None = None
    ) -> datetime | None:
        """Return the first run strictly after ``after``: the anchor plus a whole number of periods."""
        start = self._anchor(anchor)
        after = _as_utc(after, "after")
        if after < start:
            return start.astimezone(zone_for(tz))
        periods = (after - start) // self.period + 1
        return (start + periods * self.period).astimezone(zone_for(tz))

    def previous_at_or_before(
        self, at: datetime, tz: str = DEFAULT_TIMEZONE, anchor: datetime | None = None
    ) -> datetime | None:
        """Return the latest run at or before ``at``, or None before the anchor."""
        start = self._anchor(anchor)
        at = _as_utc(at, "at")
        if at < start:
            return None
        return (start + ((at - start) // self.period) * self.period).astimezone(zone_for(tz))

    def _anchor(self, anchor: datetime | None) -> datetime:
        if anchor is None:
            raise ValueError(f"{self.expression} needs an anchor time to count periods from.")
        return _as_utc(anchor, "anchor")


def _parse_rate(text: str, enforce_min_interval: bool) -> RateSchedule:
    match = _RATE_RE.match(text)
    if not match:
        raise InvalidParameterValueException(
            f"Invalid ScheduleExpression {text!r}: expected rate(VALUE UNIT) with UNIT one of minute, "
            "minutes, hour, hours, day, days."
        )
    value, unit = int(match.group(1)), match.group(2)
    if value < 1:
        raise InvalidParameterValueException(f"Invalid ScheduleExpression {text!r}: the value must be >= 1.")
    # EventBridge's rule: singular unit exactly when the value is 1.
    if (value == 1) != (not unit.endswith("s")):
        fixed = f"rate({value} {unit.rstrip('s') if value == 1 else unit + 's'})"
        raise InvalidParameterValueException(
            f"Invalid ScheduleExpression {text!r}: the unit is singular for 1 and plural otherwise; "
            f"write {fixed}."
        )
    schedule = RateSchedule(text, value, unit)
    if enforce_min_interval and schedule.period < timedelta(hours=1):
        raise InvalidParameterValueException(
            f"{MIN_INTERVAL_MESSAGE} {text!r} runs every {value} minute(s); use rate(1 hour) or longer."
        )
    return schedule


# --- cron() --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_MINUTES = _Field("Minutes", 0, 59, {})
_HOURS = _Field("Hours", 0, 23, {})
_DAY_OF_MONTH = _Field("Day-of-month", 1, 31, {})
_MONTH = _Field("Month", 1, 12, _MONTH_NAMES)
_DAY_OF_WEEK = _Field("Day-of-week", 1, 7, _DAY_NAMES)
_YEAR = _Field("Year", MIN_YEAR, MAX_YEAR, {})


@dataclass(frozen=True)
class DayRule:
    """How a cron expression picks days in a month (one of day-of-month or day-of-week)."""

    # "values" are days of the month, "weekdays" AWS day numbers 1-7; the rest are L, LW, nW, nL, n#k.
    kind: Literal["values", "weekdays", "last", "last_weekday", "nearest_weekday", "last_of", "nth_of"]
    values: tuple[int, ...] = ()
    number: int = 0  # the day (nearest_weekday), weekday 1-7 (last_of, nth_of)
    nth: int = 0

    def days(self, year: int, month: int) -> list[int]:
        """Return the matching days of that month, ascending."""
        first_weekday, length = calendar.monthrange(year, month)
        if self.kind == "values":
            return [d for d in self.values if d <= length]
        if self.kind == "weekdays":
            return [d for d in range(1, length + 1) if _aws_weekday(first_weekday, d) in self.values]
        if self.kind == "last":
            return [length]
        if self.kind == "last_weekday":
            return [_nearest_weekday(first_weekday, length, length)]
        if self.kind == "nearest_weekday":
            return [] if self.number > length else [_nearest_weekday(first_weekday, length, self.number)]
        first = 1 + ((self.number - 2) % 7 - first_weekday) % 7
        if self.kind == "last_of":
            return [first + 7 * ((length - first) // 7)]
        day = first + 7 * (self.nth - 1)
        return [day] if day <= length else []


def _aws_weekday(first_weekday: int, day: int) -> int:
    # calendar counts MON=0..SUN=6; AWS counts SUN=1..SAT=7.
    return (first_weekday + day) % 7 + 1


def _nearest_weekday(first_weekday: int, length: int, day: int) -> int:
    # Quartz's W: the weekday nearest to `day` without leaving the month.
    weekday = (first_weekday + day - 1) % 7
    if weekday == 5:  # Saturday: Friday before, unless that is in the previous month
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: Monday after, unless that is in the next month
        return day + 1 if day < length else day - 2
    return day


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """A parsed ``cron()`` expression."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    day_rule: DayRule
    years: tuple[int, ...]

    def next_after(
        self, after: datetime, tz: str = DEFAULT_TIMEZONE, anchor: datetime | None = None
    ) -> datetime | None:
        """Return the first run strictly after ``after`` on ``tz``'s wall clock (anchor is ignored)."""
        after = _as_utc(after, "after")
        zone = zone_for(tz)
        for day in self._dates(after.astimezone(zone).date(), forward=True):
            for hour in self.hours:
                for minute in self.minutes:
                    moment = _wall_time(day, hour, minute, zone)
                    if moment is not None and moment.astimezone(UTC) > after:
                        return moment
        return None

    def previous_at_or_before(
        self, at: datetime, tz: str = DEFAULT_TIMEZONE, anchor: datetime | None = None
    ) -> datetime | None:
        """Return the latest run at or before ``at`` on ``tz``'s wall clock (anchor is ignored)."""
        at = _as_utc(at, "at")
        zone = zone_for(tz)
        for day in self._dates(at.astimezone(zone).date(), forward=False):
            for hour in reversed(self.hours):
                for minute in reversed(self.minutes):
                    moment = _wall_time(day, hour, minute, zone)
                    if moment is not None and moment.astimezone(UTC) <= at:
                        return moment
        return None

    def _dates(self, start: date, forward: bool) -> Iterator[date]:
        """Matching dates from ``start`` onwards (or backwards), bounded by the Year field's range."""
        years: Sequence[int] = self.years if forward else self.years[::-1]
        months: Sequence[int] = self.months if forward else self.months[::-1]
        for year in years:
            if (year < start.year) if forward else (year > start.year):
                continue
            for month in months:
                if year == start.year and ((month < start.month) if forward else (month > start.month)):
                    continue
                days = self.day_rule.days(year, month)
                for day in days if forward else reversed(days):
                    candidate = date(year, month, day)
                    if (candidate >= start) if forward else (candidate <= start):
                        yield candidate


def _wall_time(day: date, hour: int, minute: int, zone: ZoneInfo) -> datetime | None:
    """The instant a wall-clock time happens in ``zone`` (first occurrence), or None if it is skipped."""
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)  # fold=0: first occurrence
    normalised = local.astimezone(UTC).astimezone(zone)
    if normalised.replace(tzinfo=None) != local.replace(tzinfo=None):
        return None  # inside a spring-forward gap: EventBridge Scheduler skips it
    return normalised


def _as_utc(moment: datetime, name: str) -> datetime:
    # Arithmetic and comparisons between datetimes sharing a tzinfo use wall-clock time (Python's
    # rule), which is wrong across DST changes; working in UTC avoids that.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {moment!r}.")
    return moment.astimezone(UTC)


def _parse_cron(text: str, enforce_min_interval: bool) -> CronSchedule:
    fields = text[len("cron(") : -1].split()
    if len(fields) != 6:
        raise InvalidParameterValueException(
            f"Invalid ScheduleExpression {text!r}: cron() takes 6 fields (Minutes Hours Day-of-month Month "
            f"Day-of-week Year), got {len(fields)}."
        )
    minute_text, hour_text, dom_text, month_text, dow_text, year_text = fields
    if (dom_text == "?") == (dow_text == "?"):
        raise InvalidParameterValueException(
            f"Invalid ScheduleExpression {text!r}: exactly one of Day-of-month ({dom_text!r}) and "
            f"Day-of-week ({dow_text!r}) must be '?', e.g. cron(0 5 ? * MON-FRI *) or cron(0 5 1 * ? *)."
        )
    minutes = _parse_values(minute_text, _MINUTES, text)
    hours = _parse_values(hour_text, _HOURS, text)
    months = _parse_values(month_text, _MONTH, text)
    years = _parse_values(year_text, _YEAR, text)
    rule = _parse_day_of_month(dom_text, text) if dow_text == "?" else _parse_day_of_week(dow_text, text)
    if enforce_min_interval and len(minutes) > 1:
        # Two minutes of the same hour are less than 60 minutes apart, and every listed hour runs.
        raise InvalidParameterValueException(
            f"{MIN_INTERVAL_MESSAGE} {text!r} runs at minutes {', '.join(map(str, minutes))} of each hour; "
            "use a single minute, e.g. cron(0 * ? * * *) for hourly backups."
        )
    return CronSchedule(text, minutes, hours, months, rule, years)


def _parse_values(field_text: str, field: _Field, text: str) -> tuple[int, ...]:
    """Expand a list of values, ranges and increments (``*``, ``a-b``, ``a/n``, ``a-b/n``, ``*/n``)."""
    values: set[int] = set()
    for item in field_text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _number(step_text, field, text, what="increment")
            if step < 1 or step > field.high - field.low + 1:
                raise _field_error(text, field, item, f"the increment must be 1-{field.high - field.low + 1}")
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(first, field, text), _value(last, field, text)
            if low > high:
                raise _field_error(text, field, item, "a range must go from low to high (split it in two)")
        else:
            low = _value(base, field, text)
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    return tuple(sorted(values))


def _value(token: str, field: _Field, text: str) -> int:
    upper = token.upper()
    if upper in field.names:
        return field.names[upper]
    number = _number(token, field, text, what="value")
    if not field.low <= number <= field.high:
        hint = " (1=SUN ... 7=SAT)" if field is _DAY_OF_WEEK else ""
        raise _field_error(text, field, token, f"it is outside {field.low}-{field.high}{hint}")
    return number


def _number(token: str, field: _Field, text: str, what: str) -> int:
    if not token.isdigit():
        named = " or a name" if field.names and what == "value" else ""
        raise _field_error(text, field, token, f"expected a number{named} as {what}")
    return int(token)


def _field_error(text: str, field: _Field, token: str, why: str) -> InvalidParameterValueException:
    return InvalidParameterValueException(
        f"Invalid ScheduleExpression {text!r}: {field.name} field {token!r}: {why}."
    )


_NEAREST_RE = re.compile(r"^(\d{1,2})W$", re.IGNORECASE)
_LAST_OF_RE = re.compile(r"^(\w+)L$", re.IGNORECASE)
_NTH_RE = re.compile(r"^(\w+)#(\d+)$")


def _parse_day_of_month(token: str, text: str) -> DayRule:
    upper = token.upper()
    if upper == "L":
        return DayRule("last")
    if upper == "LW":
        return DayRule("last_weekday")
    match = _NEAREST_RE.match(token)
    if match:
        return DayRule("nearest_weekday", number=_value(match.group(1), _DAY_OF_MONTH, text))
    if any(ch in upper for ch in "LW#"):
        raise _field_error(text, _DAY_OF_MONTH, token, "use L, LW or nW (e.g. 15W) alone, not in a list")
    return DayRule("values", values=_parse_values(token, _DAY_OF_MONTH, text))


def _parse_day_of_week(token: str, text: str) -> DayRule:
    upper = token.upper()
    if upper == "L":
        return DayRule("weekdays", values=(7,))  # L alone is the last day of the week: Saturday
    match = _NTH_RE.match(token)
    if match:
        nth = int(match.group(2))
        if not 1 <= nth <= 5:
            raise _field_error(text, _DAY_OF_WEEK, token, "the occurrence after # must be 1-5")
        return DayRule("nth_of", number=_value(match.group(1), _DAY_OF_WEEK, text), nth=nth)
    match = _LAST_OF_RE.match(token)
    if match:
        return DayRule("last_of", number=_value(match.group(1), _DAY_OF_WEEK, text))
    if "#" in upper or "L" in upper:  # no day name contains an L, so this is a misplaced nL
        raise _field_error(text, _DAY_OF_WEEK, token, "use nL or n#k (e.g. 6L, 6#3) alone, not in a list")
    return DayRule("weekdays", values=_parse_values(token, _DAY_OF_WEEK, text))
