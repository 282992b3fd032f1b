"""Retention ("forget") policy: decide which snapshots to keep, with restic's semantics.

Pure logic, no I/O. The rules mirror ``restic forget`` (``--keep-last``, ``--keep-hourly`` ...
``--keep-yearly``, ``--keep-within``, ``--keep-within-{hourly,...,yearly}``, ``--keep-tag``)
including restic's less obvious details: buckets use each snapshot's own wall clock, weeks are
ISO weeks, ``-1`` means unlimited, a count rule that still has budget left also keeps the oldest
snapshot of the group, and keep-within is measured from the newest snapshot with Go's
``AddDate`` calendar arithmetic (which rolls over month ends instead of clamping).
See docs/retention.md for the user-facing description.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

__all__ = [
    "UNLIMITED",
    "Decision",
    "Duration",
    "GroupKey",
    "KeepPolicy",
    "SnapshotRef",
    "apply_policy",
    "group_key",
    "parse_duration",
]

UNLIMITED = -1
"""Count value meaning "no limit" for the keep-last/hourly/.../yearly rules (restic's ``unlimited``)."""

_DURATION_TOKEN = re.compile(r"([0-9]+)([ymdh])")
_DURATION_UNITS = {"y": "years", "m": "months", "d": "days", "h": "hours"}


@dataclass(frozen=True)
class Duration:
    """A calendar duration in restic's ``1y2m3d4h`` form; all parts are non-negative."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        for name in ("years", "months", "days", "hours"):
            value = getattr(self, name)
            # bool is an int subclass; Duration(days=True) is a bug, not one day.
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Duration.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"Duration.{name} must not be negative, got {value}")

    def is_zero(self) -> bool:
        """Return True if every part is zero (restic treats such a duration as "not set")."""
        return self.years == 0 and self.months == 0 and self.days == 0 and self.hours == 0

    def __str__(self) -> str:
        # Same rendering as restic (zero parts omitted), because it appears in keep reasons.
        text = "".join(
            f"{value}{unit}"
            for value, unit in ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h"))
            if value
        )
        return text or "0h"

    def subtract_from(self, moment: datetime) -> datetime:
        """Return ``moment`` minus this duration, computed exactly like restic's keep-within cutoff."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"moment must be timezone-aware, got {moment!r}")
        try:
            # restic uses Go's AddDate(-y, -m, -d) on the wall clock. Go normalises out-of-range
            # dates instead of clamping them: 31 March minus 1 month is "31 February", which
            # becomes 2 or 3 March. Building the date from the 1st of the target month plus a
            # day offset reproduces that rollover (also for days that go below 1).
            month_index = moment.year * 12 + (moment.month - 1) - self.years * 12 - self.months
            year, month0 = divmod(month_index, 12)
            day = date(year, month0 + 1, 1) + timedelta(days=moment.day - 1 - self.days)
            wall = moment.replace(year=day.year, month=day.month, day=day.day, fold=0)
            if not self.hours:
                return wall
            # Hours are elapsed time in restic (time.Add), not wall-clock hours; that differs
            # from wall-clock arithmetic across a DST change.
            shifted = wall.astimezone(UTC) - timedelta(hours=self.hours)
            return shifted.astimezone(wall.tzinfo)
        except (ValueError, OverflowError) as exc:
            raise OverflowError(
                f"{moment.isoformat()} minus {self} is out of the supported date range"
            ) from exc


def parse_duration(text: str) -> Duration:
    """Parse a restic duration such as ``"1y2m3d4h"``, ``"7d"`` or ``"36h"``."""
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"invalid duration {text!r}: it is empty; expected e.g. '1y2m3d4h'")
    if "-" in stripped:
        raise ValueError(f"invalid duration {text!r}: negative durations are not allowed")
    values: dict[str, int] = {}
    pos = 0
    while pos < len(stripped):
        match = _DURATION_TOKEN.match(stripped, pos)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}: expected <number><unit> at {stripped[pos:]!r}, "
                "where unit is y (years), m (months), d (days) or h (hours)"
            )
        number, unit = match.groups()
        field_name = _DURATION_UNITS[unit]
        # restic silently lets a repeated unit override the earlier one; "1d2d" is far more
        # likely a typo than an intent, so it is rejected here.
        if field_name in values:
            raise ValueError(f"invalid duration {text!r}: unit {unit!r} appears more than once")
        values[field_name] = int(number)
        pos = match.end()
    return Duration(**values)


@dataclass(frozen=True)
class SnapshotRef:
    """The parts of a snapshot the retention policy looks at."""

    id: str
    time: datetime
    hostname: str = ""
    paths: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"snapshot {self.id!r}: time must be timezone-aware, got {self.time!r}")
        # A bare string would otherwise be split into one-character paths/tags.
        if isinstance(self.paths, str):
            raise TypeError(f"snapshot {self.id!r}: paths must be a tuple of str, not a str")
        if isinstance(self.tags, str):
            raise TypeError(f"snapshot {self.id!r}: tags must be a frozenset of str, not a str")


@dataclass(frozen=True)
class KeepPolicy:
    """Which snapshots to keep; a snapshot is kept if any rule keeps it. Counts: 0 off, -1 unlimited."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    within_hourly: Duration | None = None
    within_daily: Duration | None = None
    within_weekly: Duration | None = None
    within_monthly: Duration | None = None
    within_yearly: Duration | None = None
    # Each entry is one tag; a snapshot carrying any of them is kept. "" matches untagged snapshots.
    tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name, _, _ in _COUNT_RULES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"KeepPolicy.{name} must be an int, got {value!r}")
            if value < UNLIMITED:
                raise ValueError(
                    f"KeepPolicy.{name} = {value}: negative values other than -1 (unlimited) are not allowed"
                )
        for name in _DURATION_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Duration):
                raise TypeError(f"KeepPolicy.{name} must be a Duration or None, got {value!r}")
        if isinstance(self.tags, str) or not isinstance(self.tags, frozenset):
            raise TypeError(f"KeepPolicy.tags must be a frozenset of str, got {self.tags!r}")

    def is_empty(self) -> bool:
        """Return True if no rule is set (applying it would keep nothing, so callers should refuse)."""
        if self.tags:
            return False
        if any(getattr(self, name) != 0 for name, _, _ in _COUNT_RULES):
            return False
        return all(_duration_unset(getattr(self, name)) for name in _DURATION_FIELDS)


@dataclass(frozen=True)
class Decision:
    """The verdict for one snapshot; ``reasons`` is empty exactly when ``keep`` is False."""

    snapshot: SnapshotRef
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GroupKey:
    """What a snapshot group has in common; a field is None when it is not part of the grouping."""

    hostname: str | None = None
    paths: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None


# A bucketer maps (snapshot time, position in the newest-first list) to a bucket number. Only
# keep-last uses the position, which makes every snapshot its own bucket.
_Bucketer = Callable[[datetime, int], int]


def _hour_bucket(moment: datetime, _position: int) -> int:
    return moment.year * 1_000_000 + moment.month * 10_000 + moment.day * 100 + moment.hour


def _day_bucket(moment: datetime, _position: int) -> int:
    return moment.year * 10_000 + moment.month * 100 + moment.day


def _week_bucket(moment: datetime, _position: int) -> int:
    # ISO week and ISO week-based year: 30 Dec 2024 belongs to week 1 of 2025.
    iso = moment.isocalendar()
    return iso.year * 100 + iso.week


def _month_bucket(moment: datetime, _position: int) -> int:
    return moment.year * 100 + moment.month


def _year_bucket(moment: datetime, _position: int) -> int:
    return moment.year


def _position_bucket(_moment: datetime, position: int) -> int:
    return position


# (KeepPolicy field, bucketer, reason). The order is restic's and fixes the order of reasons.
_COUNT_RULES: tuple[tuple[str, _Bucketer, str], ...] = (
    ("last", _position_bucket, "last snapshot"),
    ("hourly", _hour_bucket, "hourly snapshot"),
    ("daily", _day_bucket, "daily snapshot"),
    ("weekly", _week_bucket, "weekly snapshot"),
    ("monthly", _month_bucket, "monthly snapshot"),
    ("yearly", _year_bucket, "yearly snapshot"),
)

_WITHIN_RULES: tuple[tuple[str, _Bucketer, str], ...] = (
    ("within_hourly", _hour_bucket, "hourly within"),
    ("within_daily", _day_bucket, "daily within"),
    ("within_weekly", _week_bucket, "weekly within"),
    ("within_monthly", _month_bucket, "monthly within"),
    ("within_yearly", _year_bucket, "yearly within"),
)

_DURATION_FIELDS = ("within", *(name for name, _, _ in _WITHIN_RULES))

_GROUP_FIELDS = {
    "host": "host",
    "hosts": "host",
    "path": "paths",
    "paths": "paths",
    "tag": "tags",
    "tags": "tags",
}

# Marks "no bucket kept yet"; bucket numbers are never negative.
_NO_BUCKET = -1


def _duration_unset(duration: Duration | None) -> bool:
    return duration is None or duration.is_zero()


def _normalise_group_by(group_by: Sequence[str]) -> frozenset[str]:
    if isinstance(group_by, str):
        raise TypeError(f"group_by must be a sequence of field names, not the string {group_by!r}")
    fields: set[str] = set()
    for name in group_by:
        canonical = _GROUP_FIELDS.get(name)
        if canonical is None:
            raise ValueError(f"unknown group_by field {name!r}; expected 'host', 'paths' or 'tags'")
        fields.add(canonical)
    return frozenset(fields)


def _key_for(snapshot: SnapshotRef, fields: frozenset[str]) -> GroupKey:
    # Paths and tags are compared as sorted lists (as restic does), so ("/b", "/a") and
    # ("/a", "/b") land in the same group.
    return GroupKey(
        hostname=snapshot.hostname if "host" in fields else None,
        paths=tuple(sorted(snapshot.paths)) if "paths" in fields else None,
        tags=tuple(sorted(snapshot.tags)) if "tags" in fields else None,
    )


def group_key(snapshot: SnapshotRef, group_by: Sequence[str] = ("host", "paths")) -> GroupKey:
    """Return the group ``snapshot`` belongs to when grouping by ``group_by``."""
    return _key_for(snapshot, _normalise_group_by(group_by))


def _has_tag(snapshot: SnapshotRef, tag: str) -> bool:
    # restic: the empty tag matches snapshots without any tag.
    if tag == "":
        return not snapshot.tags
    return tag in snapshot.tags


def _reference_time(newest_first: Sequence[SnapshotRef], now: datetime | None) -> datetime | None:
    if now is None:
        return newest_first[0].time
    # restic measures keep-within from the newest snapshot that is not in the future, so a
    # snapshot with a skewed clock cannot make everything else look old.
    past = [snap.time for snap in newest_first if snap.time < now]
    return max(past) if past else None


def _cutoff(reference: datetime | None, duration: Duration) -> datetime | None:
    """Lower bound for keep-within rules; None means "no bound" (everything is within)."""
    if reference is None:
        # restic then measures from Go's zero time (year 1), so every snapshot is within.
        return None
    try:
        return duration.subtract_from(reference)
    except OverflowError:
        return None


def _is_within(moment: datetime, cutoff: datetime | None) -> bool:
    # Strictly after the cutoff, as in restic (time.After).
    return cutoff is None or moment > cutoff


def _apply_to_group(
    snapshots: Sequence[SnapshotRef], policy: KeepPolicy, now: datetime | None
) -> list[Decision]:
    # Newest first; sorted() is stable, so equal times keep their input order, like restic's sort.Stable.
    ordered = sorted(snapshots, key=lambda snap: snap.time, reverse=True)
    reference = _reference_time(ordered, now)
    oldest_position = len(ordered) - 1

    within = None if _duration_unset(policy.within) else policy.within
    within_cutoff = None if within is None else _cutoff(reference, within)

    # Per count rule: [remaining budget, last kept bucket]. Every rule has its own state, which
    # is why a combined policy keeps exactly the union of what its rules keep on their own.
    count_rules = [(getattr(policy, name), bucketer, reason) for name, bucketer, reason in _COUNT_RULES]
    count_state = [[count, _NO_BUCKET] for count, _, _ in count_rules]
    within_rules: list[tuple[Duration, datetime | None, _Bucketer, str]] = []
    for name, bucketer, reason in _WITHIN_RULES:
        duration: Duration | None = getattr(policy, name)
        if duration is not None and not duration.is_zero():
            within_rules.append((duration, _cutoff(reference, duration), bucketer, reason))
    within_last = [_NO_BUCKET] * len(within_rules)

    decisions: list[Decision] = []
    for position, snap in enumerate(ordered):
        reasons: list[str] = []
        is_oldest = position == oldest_position

        # Tags are not counted; sorted so the reasons are deterministic.
        reasons.extend(f"has tags [{tag}]" for tag in sorted(policy.tags) if _has_tag(snap, tag))

        if within is not None and _is_within(snap.time, within_cutoff):
            reasons.append(f"within {within}")

        for index, (_, bucketer, reason) in enumerate(count_rules):
            remaining, last_bucket = count_state[index]
            if remaining == 0:
                continue
            bucket = bucketer(snap.time, position)
            # restic also keeps the group's oldest snapshot while a rule has budget left, to
            # stretch the kept history as far back as possible.
            if bucket != last_bucket or is_oldest:
                prefix = "oldest " if bucket == last_bucket else ""
                reasons.append(prefix + reason)
                count_state[index] = [remaining - 1 if remaining > 0 else remaining, bucket]

        for index, (duration, cutoff, bucketer, reason) in enumerate(within_rules):
            if not _is_within(snap.time, cutoff):
                continue
            bucket = bucketer(snap.time, position)
            if bucket != within_last[index] or is_oldest:
                prefix = "oldest " if bucket == within_last[index] else ""
                reasons.append(f"{prefix}{reason} {duration}")
                within_last[index] = bucket

        decisions.append(Decision(snapshot=snap, keep=bool(reasons), reasons=tuple(reasons)))
    return decisions


def apply_policy(
    snapshots: Sequence[SnapshotRef],
    policy: KeepPolicy,
    group_by: Sequence[str] = ("host", "paths"),
    *,
    now: datetime | None = None,
) -> list[Decision]:
    """Decide keep/remove for every snapshot, per group; groups in key order, newest first within each."""
    if policy.is_empty():
        # restic refuses an empty policy too: it would remove every snapshot.
        raise ValueError("empty retention policy: it would remove every snapshot; set at least one keep rule")
    fields = _normalise_group_by(group_by)
    if now is not None and (now.tzinfo is None or now.utcoffset() is None):
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    seen: set[str] = set()
    groups: dict[GroupKey, list[SnapshotRef]] = {}
    for snap in snapshots:
        if snap.id in seen:
            raise ValueError(f"duplicate snapshot id {snap.id!r}")
        seen.add(snap.id)
        groups.setdefault(_key_for(snap, fields), []).append(snap)

    def order(key: GroupKey) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return (key.hostname or "", key.paths or (), key.tags or ())

    decisions: list[Decision] = []
    for key in sorted(groups, key=order):
        decisions.extend(_apply_to_group(groups[key], policy, now))
    return decisions
