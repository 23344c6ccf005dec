"""FX cron expressions: parse, validate, describe, and compute fire times. No Django, no Celery.

Syntax: five fields ``minute hour day-of-month month day-of-week`` separated by whitespace. A field is ``*``, a
number, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (= a up to the field's maximum, every n), or a
comma-separated list of those. Month names ``jan`` ... ``dec`` and day names ``mon`` ... ``sun`` are accepted in
any case, also in ranges (``mon-fri``). Macros: ``@hourly``, ``@daily``/``@midnight``, ``@weekly`` (midnight
Sunday), ``@monthly``, ``@yearly``/``@annually``.

Day of week follows the FX convention **0 = Monday ... 6 = Sunday** (Python's ``date.weekday()``); 7 is refused
rather than guessed. Celery counts 0 = Sunday, so `Cron.celery_crontab_kwargs` expands the field into a set of
days first and maps each day d to (d + 1) % 7; ranges and steps are never passed through textually.

Day of month AND day of week: classic cron fires when *either* matches if both are restricted; Celery's crontab
fires only when *both* match. The schedule is executed by Celery, so this module follows Celery (AND) everywhere,
and `Cron.describe` says so whenever both fields are restricted.

Time zones and DST (fire times are wall-clock times in the schedule's zone). The rules below reproduce what
Celery 5.7's crontab does for a beat that runs continuously (checked against it in tests/packages/test_cron.py):

* a wall-clock time that does not exist (spring forward) is not skipped: it fires shifted forward by the size of
  the gap (``30 2 * * *`` fires at 03:30 on the day Europe/Zurich jumps from 02:00 to 03:00). Only the first such
  time in a gap fires; later matches inside the gap, and real times up to the shifted one, are not separate
  fires (``0,30 2 * * *`` fires once, at 03:00, that day);
* a wall-clock time that happens twice (fall back) fires once, at its first occurrence (``fold=0``).

Known divergence: if beat was down and catches up inside a repeated hour, Celery can fire at the second
occurrence; `Cron.latest_fire_time` then attributes that tick to the first occurrence.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from cron_descriptor import ExpressionDescriptor, Options

__all__ = ["Cron", "CronError", "parse"]

MACROS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 6",  # 6 = Sunday in FX numbering: midnight Sunday, like classic cron
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = FX day number

# A matching wall-clock time may shift by at most this much across a DST transition (real gaps are 30 min to
# 2 h); used to widen searches so that shifted and repeated times are not missed.
_MAX_SHIFT = timedelta(hours=3)
# The Gregorian calendar repeats every 400 years: a possible date schedule fires within that span.
_FORWARD_YEARS = 400
_BACKWARD_DAYS = 366


class CronError(ValueError):
    """An invalid cron expression. `field` names the part at fault; str() is a sentence for the user."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    hint: str = ""  # appended to range errors, explains the numbering


_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY_OF_MONTH = _Field("day of month", 1, 31)
_MONTH = _Field("month", 1, 12, MONTH_NAMES, " (or jan ... dec)")
_DAY_OF_WEEK = _Field("day of week", 0, 6, DAY_NAMES, " (0 = Monday ... 6 = Sunday)")
_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: one expanded set of allowed values per field."""

    expression: str  # as given, stripped
    minutes: frozenset[int]  # 0-59
    hours: frozenset[int]  # 0-23
    days_of_month: frozenset[int]  # 1-31
    months: frozenset[int]  # 1-12
    days_of_week: frozenset[int]  # FX convention: 0 = Monday ... 6 = Sunday
    # The field restricts the days, i.e. it is not "*" or equivalent to it (such as 1-31 or mon-sun). Only when
    # both are restricted does Celery's AND differ from classic cron's OR.
    day_of_month_restricted: bool
    day_of_week_restricted: bool

    def celery_crontab_kwargs(self) -> dict[str, str]:
        """Keyword arguments for celery.schedules.crontab / django_celery_beat's CrontabSchedule.

        Each value is "*" or a sorted comma-separated list of numbers. Day of week is in Celery's numbering
        (0 = Sunday ... 6 = Saturday); 7 is never emitted, since Celery rejects it.
        """
        return {
            "minute": _celery_list(self.minutes, 60),
            "hour": _celery_list(self.hours, 24),
            "day_of_month": _celery_list(self.days_of_month, 31),
            "month_of_year": _celery_list(self.months, 12),
            "day_of_week": _celery_list({(day + 1) % 7 for day in self.days_of_week}, 7),
        }

    def describe(self) -> str:
        """The schedule in English words, with 24-hour times, e.g. "At 09:00, only on Monday"."""
        minute, hour, day_of_month, month, _ = _split(self.expression)
        sets = (self.minutes, self.hours, self.days_of_month, self.months)
        fields = [
            "*" if len(values) == spec.high - spec.low + 1 else text
            for text, values, spec in zip(
                (minute, hour, day_of_month, month), sets, (_MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH), strict=True
            )
        ]
        # Day of week goes to cron-descriptor as names built from our expanded set: it numbers days from
        # Sunday, so passing our numbers (or our steps, such as */2) through would name the wrong days.
        fields.append(_day_names(self.days_of_week) if self.day_of_week_restricted else "*")
        options = Options()
        options.locale_code = "en_US"  # not the process locale: the text around it is English
        options.use_24hour_time_format = True
        try:
            text = ExpressionDescriptor(" ".join(fields), options).get_description()
        except Exception:  # a phrasing problem in cron-descriptor must not break a valid schedule
            canonical = [_ranges(values) for values in sets]
            text = ExpressionDescriptor(" ".join([*canonical, fields[-1]]), options).get_description()
        if self.day_of_month_restricted and self.day_of_week_restricted:
            text += " (only on days that match both the day of month and the day of week)"
        return text

    def next_fire_times(self, after: datetime, tz: ZoneInfo, count: int = 5) -> list[datetime]:
        """The next `count` fire times strictly after `after` (aware), as aware datetimes in `tz`.

        Fewer are returned only if the schedule can never fire again (e.g. 0 0 31 2 *) or within 400 years.
        DST handling: see the module docstring.
        """
        _require_aware(after)
        fires: list[datetime] = []
        if count <= 0 or not self._possible():
            return fires
        start = _wall(after, tz) - _MAX_SHIFT
        end = datetime(min(start.year + _FORWARD_YEARS, 9999), 12, 31, 23, 59)
        for wall in self._walls_forward(start, end):
            instant = _instant(wall, tz)
            if instant <= after or self._absorbed(wall, tz):
                continue
            fires.append(instant.astimezone(tz))
            if len(fires) == count:
                break
        return fires

    def latest_fire_time(self, at: datetime, tz: ZoneInfo) -> datetime | None:
        """The most recent fire time at or before `at` (aware), in `tz`; None if none in the last 366 days.

        Exact to the minute, as the idempotency key of a scheduled tick: for * * * * * and 12:34:56 it is
        12:34:00. DST handling: see the module docstring.
        """
        _require_aware(at)
        if not self._possible():
            return None
        wall_at = _wall(at, tz)
        not_before = at.astimezone(UTC) - timedelta(days=_BACKWARD_DAYS)
        for wall in self._walls_backward(wall_at + _MAX_SHIFT, wall_at - timedelta(days=_BACKWARD_DAYS)):
            instant = _instant(wall, tz)
            if instant > at or self._absorbed(wall, tz):
                continue
            return instant.astimezone(tz) if instant >= not_before else None
        return None

    # Fire-time machinery. Matching wall-clock times are enumerated in order (month by month, then the allowed
    # days, hours and minutes) rather than minute by minute; each maps to an instant with fold=0. Filtered by
    # _absorbed, that mapping is increasing, so the first match found in either direction is the answer.

    def _possible(self) -> bool:
        """False if no allowed day of month exists in any allowed month (e.g. 31 February), even in leap years."""
        return any(day <= _days_in_month(2000, month) for month in self.months for day in self.days_of_month)

    def _dates(self, first: date, last: date, reverse: bool) -> Iterator[date]:
        years = range(last.year, first.year - 1, -1) if reverse else range(first.year, last.year + 1)
        months = sorted(self.months, reverse=reverse)
        days = sorted(self.days_of_month, reverse=reverse)
        for year in years:
            for month in months:
                if not (first.year, first.month) <= (year, month) <= (last.year, last.month):
                    continue
                length = _days_in_month(year, month)
                for day in days:
                    if day > length:
                        continue
                    candidate = date(year, month, day)
                    # AND semantics, as Celery: the day must match day of month and day of week.
                    if first <= candidate <= last and candidate.weekday() in self.days_of_week:
                        yield candidate

    def _walls_forward(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Matching naive wall-clock times in [start, end], ascending."""
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        for day in self._dates(start.date(), end.date(), reverse=False):
            for hour in hours:
                for minute in minutes:
                    wall = datetime.combine(day, time(hour, minute))
                    if wall > end:
                        return
                    if wall >= start:
                        yield wall

    def _walls_backward(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Matching naive wall-clock times in [end, start], descending."""
        hours, minutes = sorted(self.hours, reverse=True), sorted(self.minutes, reverse=True)
        for day in self._dates(end.date(), start.date(), reverse=True):
            for hour in hours:
                for minute in minutes:
                    wall = datetime.combine(day, time(hour, minute))
                    if wall < end:
                        return
                    if wall <= start:
                        yield wall

    def _absorbed(self, wall: datetime, tz: ZoneInfo) -> bool:
        """True if Celery does not fire for `wall` because it already fired for an earlier, nonexistent time.

        Celery computes the next run from the wall-clock time of the last run. After firing a time from a DST
        gap (shifted forward by the gap's size), every match up to that shifted wall-clock time is behind it.
        """
        since = wall - 2 * _MAX_SHIFT
        gain = _offset(wall, tz) - _offset(since, tz)
        if gain <= timedelta(0):
            return False  # no spring-forward shortly before `wall`
        # Find the transition instant by bisection over whole minutes (zones change offset on the minute).
        before = _offset(since, tz)
        low, high = _instant(since, tz), _instant(wall, tz)
        while high - low > timedelta(minutes=1):
            middle = low + timedelta(minutes=(high - low) // timedelta(minutes=2))
            if middle.astimezone(tz).utcoffset() == before:
                low = middle
            else:
                high = middle
        gap_start = _wall(high, tz) - gain
        gap_end = gap_start + gain
        first_in_gap = next(self._walls_forward(gap_start, gap_end - timedelta(minutes=1)), None)
        return first_in_gap is not None and first_in_gap < wall <= first_in_gap + gain


def parse(expression: str) -> Cron:
    """Parse and validate an FX cron expression (see the module docstring); raises CronError."""
    stripped = expression.strip()
    minute, hour, day_of_month, month, day_of_week = _split(stripped)
    days_of_month = _expand(day_of_month, _DAY_OF_MONTH)
    days_of_week = _expand(day_of_week, _DAY_OF_WEEK)
    return Cron(
        expression=stripped,
        minutes=_expand(minute, _MINUTE),
        hours=_expand(hour, _HOUR),
        days_of_month=days_of_month,
        months=_expand(month, _MONTH),
        days_of_week=days_of_week,
        day_of_month_restricted=len(days_of_month) < 31,
        day_of_week_restricted=len(days_of_week) < 7,
    )


def _split(expression: str) -> list[str]:
    if not expression:
        raise CronError("expression", "the schedule is empty; expected minute hour day-of-month month day-of-week.")
    if expression.startswith("@"):
        macro = expression.lower()
        if macro not in MACROS:
            known = ", ".join(MACROS)
            raise CronError("expression", f"unknown macro {expression!r}; known macros are {known}.")
        expression = MACROS[macro]
    fields = expression.split()
    if len(fields) != 5:
        raise CronError(
            "expression",
            f"expected 5 fields (minute hour day-of-month month day-of-week) separated by spaces, "
            f"got {len(fields)}: {expression!r}.",
        )
    return fields


def _expand(text: str, spec: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(spec.name, f"empty item in {text!r} (two commas, or a comma at either end).")
        values.update(_expand_item(item, spec))
    return frozenset(values)


def _expand_item(item: str, spec: _Field) -> range:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not _NUMBER.fullmatch(step_text):
            raise CronError(spec.name, f"step {step_text!r} in {item!r} must be a whole number of 1 or more.")
        step = int(step_text)
        if step == 0:
            raise CronError(spec.name, f"step 0 in {item!r} must be at least 1.")
    if base == "*":
        return range(spec.low, spec.high + 1, step)
    start_text, dash, end_text = base.partition("-")
    if dash and (not start_text or not end_text):
        raise CronError(spec.name, f"{item!r} is not a valid range; write it as a-b, such as 1-5.")
    start = _value(start_text, item, spec)
    end = _value(end_text, item, spec) if dash else (spec.high if slash else start)
    if start > end:
        raise CronError(
            spec.name, f"range {base!r} is reversed; write the smaller value first ({end_text}-{start_text})."
        )
    return range(start, end + 1, step)


def _value(text: str, item: str, spec: _Field) -> int:
    if _NUMBER.fullmatch(text):
        number = int(text)
        if not spec.low <= number <= spec.high:
            message = f"{number} is out of range {spec.low}-{spec.high}{spec.hint}"
            if spec is _DAY_OF_WEEK and number == 7:
                message += "; 7 is not accepted, write 6 or sun for Sunday"
            raise CronError(spec.name, message + ".")
        return number
    if text.lower() in spec.names:
        return spec.low + spec.names.index(text.lower())
    if spec.names:
        raise CronError(
            spec.name,
            f"{text!r} in {item!r} is neither a number nor a known name; "
            f"use {spec.low}-{spec.high} or {spec.names[0]} ... {spec.names[-1]}.",
        )
    raise CronError(
        spec.name, f"{text!r} in {item!r} is not a number; use *, a number, a range a-b, a list a,b or a step */n."
    )


def _celery_list(values: set[int] | frozenset[int], size: int) -> str:
    return "*" if len(values) == size else ",".join(str(value) for value in sorted(values))


def _ranges(values: frozenset[int]) -> str:
    """A compact cron list for a set of numbers: {1, 2, 3, 5} -> "1-3,5"."""
    parts: list[str] = []
    ordered = sorted(values)
    start = previous = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if value is not None:
            start = previous = value
    return ",".join(parts)


def _day_names(days: frozenset[int]) -> str:
    """Days as upper-case names, runs of three or more as ranges: {0, 1, 2, 3, 4, 6} -> "MON-FRI,SUN"."""
    parts = []
    for run in _ranges(days).split(","):
        first, _, last = run.partition("-")
        if last and int(last) - int(first) >= 2:
            parts.append(f"{DAY_NAMES[int(first)]}-{DAY_NAMES[int(last)]}".upper())
        else:
            parts.extend(DAY_NAMES[day].upper() for day in range(int(first), int(last or first) + 1))
    return ",".join(parts)


def _days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _require_aware(moment: datetime) -> None:
    if moment.utcoffset() is None:
        raise ValueError(f"{moment!r} is naive; pass a timezone-aware datetime.")


def _wall(moment: datetime, tz: ZoneInfo) -> datetime:
    """The naive wall-clock time in `tz` at an instant."""
    # Via UTC: astimezone() to the datetime's own zone returns it unchanged, even a nonexistent wall time.
    return moment.astimezone(UTC).astimezone(tz).replace(tzinfo=None, fold=0)


def _instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant (UTC) Celery fires for a wall-clock time: the first occurrence of a repeated time, and a
    nonexistent time shifted forward by the gap (both what fold=0 means, PEP 495)."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _offset(wall: datetime, tz: ZoneInfo) -> timedelta:
    """The UTC offset in force at the instant a wall-clock time maps to."""
    return _instant(wall, tz).astimezone(tz).utcoffset() or timedelta(0)
