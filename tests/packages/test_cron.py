"""packages/cron.py: FX cron (0 = Monday) parsed, described, converted for Celery, and its fire times.

Fire times are checked against what Celery itself computes (`celery_fire_times`): django-celery-beat's
TzAwareCrontab built from our celery_crontab_kwargs(), asked for each next run from the previous one, as beat does.
"""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from django_celery_beat.tzcrontab import TzAwareCrontab

from packages import cron
from packages.cron import Cron, CronError

ZURICH = ZoneInfo("Europe/Zurich")
NEW_YORK = ZoneInfo("America/New_York")
CELERY_APP = Celery("test_cron", set_as_current=False)


def at(zone: ZoneInfo, *args: int) -> datetime:
    """A wall-clock time in `zone` (fold=0: the first occurrence of a repeated time)."""
    return datetime(*args, tzinfo=zone)


def utc(moments: list[datetime]) -> list[datetime]:
    # Compare instants: Python never considers a repeated local time equal to a datetime in another zone.
    return [moment.astimezone(UTC) for moment in moments]


def celery_fire_times(schedule: Cron, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    clock = after.astimezone(UTC)  # in UTC, so that adding Celery's remaining time is elapsed time
    crontab = TzAwareCrontab(**schedule.celery_crontab_kwargs(), tz=tz, app=CELERY_APP)
    crontab.nowfun = lambda: clock.astimezone(tz)  # beat asks right after the last run
    fires = []
    for _ in range(count):
        clock = clock + crontab.remaining_estimate(clock)
        fires.append(clock.astimezone(tz))
    return fires


# --- Day of week: FX 0 = Monday ... 6 = Sunday; Celery 0 = Sunday ... 6 = Saturday ---------------------------

DAY_OF_WEEK_TO_CELERY = [
    ("0", "1"),  # Monday
    ("1", "2"),
    ("2", "3"),
    ("3", "4"),
    ("4", "5"),
    ("5", "6"),  # Saturday
    ("6", "0"),  # Sunday
    ("mon", "1"),
    ("SUN", "0"),
    ("0-4", "1,2,3,4,5"),
    ("mon-fri", "1,2,3,4,5"),
    ("Mon-Fri", "1,2,3,4,5"),
    ("5-6", "0,6"),
    ("sat-sun", "0,6"),
    ("fri-sun", "0,5,6"),
    ("4-6", "0,5,6"),
    ("0,6", "0,1"),
    ("mon,wed,fri", "1,3,5"),
    ("*/2", "0,1,3,5"),  # Mon, Wed, Fri, Sun
    ("1-5/2", "2,4,6"),  # Tue, Thu, Sat
    ("3/2", "4,6"),  # Thu, Sat
    ("tue/3", "2,5"),  # Tue, Fri
    ("0-6", "*"),
    ("mon-sun", "*"),
    ("*", "*"),
]


@pytest.mark.parametrize(("field", "celery_days"), DAY_OF_WEEK_TO_CELERY)
def test_it_converts_day_of_week_to_celery_numbering(field: str, celery_days: str) -> None:
    assert cron.parse(f"0 12 * * {field}").celery_crontab_kwargs()["day_of_week"] == celery_days


@pytest.mark.parametrize(("field", "celery_days"), DAY_OF_WEEK_TO_CELERY)
def test_it_fires_on_the_same_weekdays_as_celery(field: str, celery_days: str) -> None:
    schedule = cron.parse(f"0 12 * * {field}")
    after = datetime(2026, 5, 4, tzinfo=UTC)  # a Monday
    ours = schedule.next_fire_times(after, UTC, count=14)
    theirs = celery_fire_times(schedule, UTC, after, count=14)
    assert ours == theirs
    assert all(fire < after + timedelta(weeks=2) for fire in ours[: len(schedule.days_of_week) * 2])
    celery_weekdays = {fire.isoweekday() % 7 for fire in ours}  # Celery's numbering: 0 = Sunday
    assert TzAwareCrontab(day_of_week=celery_days, app=CELERY_APP).day_of_week == celery_weekdays
    assert {fire.weekday() for fire in ours} == schedule.days_of_week  # FX numbering is Python's weekday()


def test_it_never_gives_celery_a_7() -> None:
    for field in ["6", "sun", "*/2", "5-6", "0-6", "*/3", "6/1"]:
        days = cron.parse(f"0 0 * * {field}").celery_crontab_kwargs()["day_of_week"]
        assert "7" not in days.split(",")


# --- Parsing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "attribute", "values"),
    [
        ("* * * * *", "minutes", set(range(60))),
        ("5 * * * *", "minutes", {5}),
        ("05 * * * *", "minutes", {5}),
        ("1,2,30 * * * *", "minutes", {1, 2, 30}),
        ("10-15 * * * *", "minutes", set(range(10, 16))),
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("10-30/10 * * * *", "minutes", {10, 20, 30}),
        ("50/4 * * * *", "minutes", {50, 54, 58}),
        ("0 9-17/4,22 * * *", "hours", {9, 13, 17, 22}),
        ("0 0 */10 * *", "days_of_month", {1, 11, 21, 31}),
        ("0 0 * jan,JUN-Aug *", "months", {1, 6, 7, 8}),
        ("0 0 * */3 *", "months", {1, 4, 7, 10}),
        ("0 0 * * 6", "days_of_week", {6}),
        ("0 0 * * wed-fri,sun", "days_of_week", {2, 3, 4, 6}),
    ],
)
def test_it_expands_each_field_into_a_set(expression: str, attribute: str, values: set[int]) -> None:
    assert getattr(cron.parse(expression), attribute) == values


def test_it_keeps_the_expression_stripped_and_accepts_any_whitespace() -> None:
    schedule = cron.parse("  20\t*  * *\n*  ")
    assert schedule.expression == "20\t*  * *\n*"
    assert schedule.minutes == {20}


def test_it_gives_celery_stars_and_sorted_lists() -> None:
    assert cron.parse("*/20 17,9 1,15 mar/11 mon-fri").celery_crontab_kwargs() == {
        "minute": "0,20,40",
        "hour": "9,17",
        "day_of_month": "1,15",
        "month_of_year": "3",
        "day_of_week": "1,2,3,4,5",
    }
    assert cron.parse("0-59 */1 1-31 jan-dec 0-6").celery_crontab_kwargs() == {
        "minute": "*",
        "hour": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "day_of_week": "*",
    }


@pytest.mark.parametrize(
    ("expression", "day_of_month_restricted", "day_of_week_restricted"),
    [
        ("0 0 * * *", False, False),
        ("0 0 1 * *", True, False),
        ("0 0 * * mon", False, True),
        ("0 0 13 * fri", True, True),
        ("0 0 1-31 * mon-sun", False, False),  # the same as * *
    ],
)
def test_it_tells_whether_the_day_fields_restrict(
    expression: str, day_of_month_restricted: bool, day_of_week_restricted: bool
) -> None:
    schedule = cron.parse(expression)
    assert schedule.day_of_month_restricted is day_of_month_restricted
    assert schedule.day_of_week_restricted is day_of_week_restricted


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 6"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_it_expands_macros(macro: str, equivalent: str) -> None:
    schedule, expected = cron.parse(macro), cron.parse(equivalent)
    assert schedule.expression == macro
    assert schedule.celery_crontab_kwargs() == expected.celery_crontab_kwargs()
    assert schedule.describe() == expected.describe()


def test_it_runs_weekly_at_midnight_on_sunday() -> None:
    schedule = cron.parse("@weekly")
    assert schedule.celery_crontab_kwargs()["day_of_week"] == "0"
    assert schedule.next_fire_times(datetime(2026, 5, 5, tzinfo=UTC), UTC, count=1) == [
        datetime(2026, 5, 10, tzinfo=UTC)
    ]


# --- Errors: every message names the field and the bad part ---------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "field", "fragment"),
    [
        ("", "expression", "empty"),
        ("   ", "expression", "empty"),
        ("* * * *", "expression", "expected 5 fields (minute hour day-of-month month day-of-week)"),
        ("* * * *", "expression", "got 4"),
        ("0 0 * * * 2026", "expression", "got 6"),
        ("@fortnightly", "expression", "unknown macro '@fortnightly'"),
        ("60 * * * *", "minute", "60 is out of range 0-59"),
        ("0 24 * * *", "hour", "24 is out of range 0-23"),
        ("0 0 0 * *", "day of month", "0 is out of range 1-31"),
        ("0 0 32 * *", "day of month", "32 is out of range 1-31"),
        ("0 0 * 13 *", "month", "13 is out of range 1-12"),
        ("0 0 * * 1-7", "day of week", "7 is out of range 0-6 (0 = Monday ... 6 = Sunday)"),
        ("1,,2 * * * *", "minute", "empty item in '1,,2'"),
        ("0 0 * * 1,", "day of week", "empty item in '1,'"),
        ("5-2 * * * *", "minute", "range '5-2' is reversed; write the smaller value first (2-5)"),
        ("0 0 * * fri-mon", "day of week", "range 'fri-mon' is reversed; write the smaller value first (mon-fri)"),
        ("*/0 * * * *", "minute", "step 0 in '*/0' must be at least 1"),
        ("0 */ * * *", "hour", "step '' in '*/'"),
        ("0 */x * * *", "hour", "step 'x' in '*/x'"),
        ("0 0 * foo *", "month", "'foo' in 'foo' is neither a number nor a known name; use 1-12 or jan ... dec"),
        ("0 0 * * funday", "day of week", "'funday' in 'funday' is neither a number nor a known name"),
        ("0 0 * mon *", "month", "'mon'"),
        ("mon * * * *", "minute", "'mon' in 'mon' is not a number"),
        ("0 0 ? * *", "day of month", "'?' in '?' is not a number"),
        ("0 0 L * *", "day of month", "'L' in 'L' is not a number"),
        ("-5 * * * *", "minute", "'-5' is not a valid range"),
        ("0 9- * * *", "hour", "'9-' is not a valid range"),
    ],
)
def test_it_refuses_invalid_expressions_naming_the_field(expression: str, field: str, fragment: str) -> None:
    with pytest.raises(CronError) as caught:
        cron.parse(expression)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert fragment in str(caught.value)


def test_it_refuses_7_for_sunday_and_says_what_to_write_instead() -> None:
    with pytest.raises(CronError) as caught:
        cron.parse("0 0 * * 7")
    assert str(caught.value) == (
        "day of week: 7 is out of range 0-6 (0 = Monday ... 6 = Sunday); 7 is not accepted, write 6 or sun for Sunday."
    )


def test_its_error_is_a_value_error() -> None:
    assert issubclass(CronError, ValueError)


# --- describe() ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "description"),
    [
        ("20 * * * *", "At 20 minutes past the hour"),
        ("0 9 * * 0", "At 09:00, only on Monday"),
        ("0 9 * * 6", "At 09:00, only on Sunday"),
        ("0 17 * * mon-fri", "At 17:00, Monday through Friday"),
        ("0 17 * * 0-4", "At 17:00, Monday through Friday"),
        ("0 9 * * */2", "At 09:00, only on Monday, Wednesday, Friday, and Sunday"),
        ("0 9 * * 5-6", "At 09:00, only on Saturday and Sunday"),
        ("*/15 8-18 * jan-mar *", "Every 15 minutes, between 08:00 and 18:59, January through March"),
        ("@daily", "At 00:00"),
    ],
)
def test_it_describes_the_schedule_in_words(expression: str, description: str) -> None:
    assert cron.parse(expression).describe() == description


def test_it_says_when_both_day_fields_must_match() -> None:
    assert cron.parse("0 9 13 * fri").describe() == (
        "At 09:00, on day 13 of the month, only on Friday"
        " (only on days that match both the day of month and the day of week)"
    )
    assert "both" not in cron.parse("0 9 13 * *").describe()
    assert "both" not in cron.parse("0 9 * * fri").describe()


# --- Fire times ----------------------------------------------------------------------------------------------


def test_it_lists_the_next_five_fire_times() -> None:
    fires = cron.parse("20 * * * *").next_fire_times(datetime(2026, 5, 5, 12, 34, 56, tzinfo=UTC), UTC)
    assert fires == [datetime(2026, 5, 5, hour, 20, tzinfo=UTC) for hour in range(13, 18)]


def test_it_lists_fire_times_strictly_after_and_in_the_schedules_zone() -> None:
    after = at(ZURICH, 2026, 5, 5, 13, 20)
    fires = cron.parse("20 * * * *").next_fire_times(after.astimezone(UTC), ZURICH, count=2)
    assert fires == [at(ZURICH, 2026, 5, 5, 14, 20), at(ZURICH, 2026, 5, 5, 15, 20)]
    assert all(fire.tzinfo is ZURICH for fire in fires)


def test_it_fires_only_when_day_of_month_and_day_of_week_both_match() -> None:
    friday_the_13th = cron.parse("0 0 13 * fri")
    after = datetime(2026, 1, 1, tzinfo=UTC)
    fires = friday_the_13th.next_fire_times(after, UTC, count=3)
    assert fires == [
        datetime(2026, 2, 13, tzinfo=UTC),
        datetime(2026, 3, 13, tzinfo=UTC),
        datetime(2026, 11, 13, tzinfo=UTC),
    ]
    assert fires == celery_fire_times(friday_the_13th, UTC, after, count=3)


def test_it_finds_leap_days_years_ahead() -> None:
    fires = cron.parse("0 0 29 2 *").next_fire_times(datetime(2026, 5, 5, tzinfo=UTC), UTC, count=3)
    assert fires == [datetime(year, 2, 29, tzinfo=UTC) for year in (2028, 2032, 2036)]
    # A leap day that is also a Monday: 2044 is the next.
    assert cron.parse("0 0 29 2 mon").next_fire_times(datetime(2026, 5, 5, tzinfo=UTC), UTC, count=1) == [
        datetime(2044, 2, 29, tzinfo=UTC)
    ]


@pytest.mark.parametrize("expression", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 mon"])
def test_it_gives_up_on_a_schedule_that_can_never_fire(expression: str) -> None:
    schedule = cron.parse(expression)  # valid syntax: each value is in range
    assert schedule.next_fire_times(datetime(2026, 5, 5, tzinfo=UTC), UTC) == []
    assert schedule.latest_fire_time(datetime(2026, 5, 5, tzinfo=UTC), UTC) is None


def test_it_refuses_naive_datetimes() -> None:
    schedule = cron.parse("* * * * *")
    with pytest.raises(ValueError, match="naive"):
        schedule.next_fire_times(datetime(2026, 5, 5), UTC)
    with pytest.raises(ValueError, match="naive"):
        schedule.latest_fire_time(datetime(2026, 5, 5), UTC)


# --- DST: the schedule's wall clock, as Celery runs it ----------------------------------------------------------
# Europe/Zurich: 2026-03-29 02:00 -> 03:00 (02:xx does not exist); 2026-10-25 03:00 -> 02:00 (02:xx twice).
# America/New_York: 2026-03-08 02:00 -> 03:00; 2026-11-01 02:00 -> 01:00 (01:xx twice).


def test_it_fires_a_nonexistent_time_shifted_forward_by_the_gap() -> None:
    fires = cron.parse("30 2 * * *").next_fire_times(at(ZURICH, 2026, 3, 28, 12, 0), ZURICH, count=3)
    assert fires == [at(ZURICH, 2026, 3, 29, 3, 30), at(ZURICH, 2026, 3, 30, 2, 30), at(ZURICH, 2026, 3, 31, 2, 30)]
    assert fires[0].utcoffset() == timedelta(hours=2)


def test_it_fires_once_for_all_nonexistent_times_of_a_gap() -> None:
    fires = cron.parse("0,30 2 * * *").next_fire_times(at(ZURICH, 2026, 3, 28, 12, 0), ZURICH, count=3)
    assert fires == [at(ZURICH, 2026, 3, 29, 3, 0), at(ZURICH, 2026, 3, 30, 2, 0), at(ZURICH, 2026, 3, 30, 2, 30)]
    every_half_hour = cron.parse("*/30 * * * *").next_fire_times(at(ZURICH, 2026, 3, 29, 1, 0), ZURICH, count=3)
    assert every_half_hour == [
        at(ZURICH, 2026, 3, 29, 1, 30),
        at(ZURICH, 2026, 3, 29, 3, 0),
        at(ZURICH, 2026, 3, 29, 3, 30),
    ]


def test_it_fires_a_repeated_time_once_at_its_first_occurrence() -> None:
    fires = cron.parse("30 2 * * *").next_fire_times(at(ZURICH, 2026, 10, 24, 12, 0), ZURICH, count=2)
    assert utc(fires) == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]
    assert fires[0].utcoffset() == timedelta(hours=2)  # 02:30 summer time, not 02:30 winter time an hour later
    night = cron.parse("*/30 * * * *").next_fire_times(at(ZURICH, 2026, 10, 25, 1, 15), ZURICH, count=4)
    assert [fire.strftime("%H:%M%z") for fire in night] == ["01:30+0200", "02:00+0200", "02:30+0200", "03:00+0100"]


def test_it_handles_new_york_dst() -> None:
    spring = cron.parse("30 2 * * *").next_fire_times(at(NEW_YORK, 2026, 3, 7, 12, 0), NEW_YORK, count=2)
    assert [fire.isoformat() for fire in spring] == ["2026-03-08T03:30:00-04:00", "2026-03-09T02:30:00-04:00"]
    fall = cron.parse("30 1 * * *").next_fire_times(at(NEW_YORK, 2026, 10, 31, 12, 0), NEW_YORK, count=2)
    assert [fire.isoformat() for fire in fall] == ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]


@pytest.mark.parametrize(
    ("zone", "expression", "after"),
    [
        (ZURICH, "30 2 * * *", at(ZURICH, 2026, 3, 27, 12, 0)),
        (ZURICH, "0,30 2 * * *", at(ZURICH, 2026, 3, 28, 12, 0)),
        (ZURICH, "*/20 1-3 * * *", at(ZURICH, 2026, 3, 28, 12, 0)),
        (ZURICH, "15 * * * *", at(ZURICH, 2026, 3, 29, 0, 0)),
        (ZURICH, "30 2 * * *", at(ZURICH, 2026, 10, 23, 12, 0)),
        (ZURICH, "*/15 * * * *", at(ZURICH, 2026, 10, 25, 1, 0)),
        (ZURICH, "0 2 * * sun", at(ZURICH, 2026, 10, 1, 0, 0)),
        (NEW_YORK, "30 2 * * *", at(NEW_YORK, 2026, 3, 6, 12, 0)),
        (NEW_YORK, "*/30 1-3 * * *", at(NEW_YORK, 2026, 3, 7, 12, 0)),
        (NEW_YORK, "30 1 * * *", at(NEW_YORK, 2026, 10, 30, 12, 0)),
        (NEW_YORK, "*/20 * * * *", at(NEW_YORK, 2026, 11, 1, 0, 30)),
    ],
)
def test_it_agrees_with_celery_across_dst_changes(zone: ZoneInfo, expression: str, after: datetime) -> None:
    schedule = cron.parse(expression)
    ours = schedule.next_fire_times(after, zone, count=12)
    assert utc(ours) == utc(celery_fire_times(schedule, zone, after, count=12))


# --- latest_fire_time(): the idempotency key of a scheduled tick -------------------------------------------------


def test_it_gives_the_latest_fire_time_exact_to_the_minute() -> None:
    every_minute = cron.parse("* * * * *")
    assert every_minute.latest_fire_time(datetime(2026, 5, 5, 12, 34, 56, tzinfo=UTC), UTC) == datetime(
        2026, 5, 5, 12, 34, tzinfo=UTC
    )
    assert every_minute.latest_fire_time(datetime(2026, 5, 5, 12, 34, tzinfo=UTC), UTC) == datetime(
        2026, 5, 5, 12, 34, tzinfo=UTC
    )


def test_it_gives_the_latest_fire_time_at_or_before_the_moment() -> None:
    hourly_at_20 = cron.parse("20 * * * *")
    just_before = datetime(2026, 5, 5, 12, 19, 59, 999999, tzinfo=UTC)
    assert hourly_at_20.latest_fire_time(just_before, UTC) == datetime(2026, 5, 5, 11, 20, tzinfo=UTC)
    assert hourly_at_20.latest_fire_time(just_before, ZURICH) == at(ZURICH, 2026, 5, 5, 13, 20)
    assert hourly_at_20.latest_fire_time(just_before, ZURICH).tzinfo is ZURICH


def test_it_attributes_a_tick_to_the_fire_time_celery_fired_for() -> None:
    daily_at_2_30 = cron.parse("30 2 * * *")
    # Spring forward: the shifted 03:30 is that day's fire time, not yesterday's.
    shifted = at(ZURICH, 2026, 3, 29, 3, 30)
    assert daily_at_2_30.latest_fire_time(shifted + timedelta(seconds=5), ZURICH) == shifted
    assert daily_at_2_30.latest_fire_time(shifted - timedelta(seconds=1), ZURICH) == at(ZURICH, 2026, 3, 28, 2, 30)
    # Fall back: during the second 02:30 the latest fire is still the first one.
    second_occurrence = at(ZURICH, 2026, 10, 25, 2, 45).replace(fold=1)
    latest = daily_at_2_30.latest_fire_time(second_occurrence, ZURICH)
    assert latest.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "expression", "after"),
    [
        (UTC, "*/7 9-10 * * mon-fri", datetime(2026, 5, 1, tzinfo=UTC)),
        (ZURICH, "*/30 * * * *", at(ZURICH, 2026, 3, 29, 0, 0)),
        (ZURICH, "0,30 2 * * *", at(ZURICH, 2026, 3, 28, 12, 0)),
        (ZURICH, "*/20 * * * *", at(ZURICH, 2026, 10, 25, 1, 0)),
        (NEW_YORK, "30 1 * * *", at(NEW_YORK, 2026, 10, 30, 12, 0)),
    ],
)
def test_it_gives_each_fire_its_own_latest_fire_time(zone: ZoneInfo, expression: str, after: datetime) -> None:
    schedule = cron.parse(expression)
    fires = utc(schedule.next_fire_times(after, zone, count=10))
    for previous, fire in zip(fires, fires[1:], strict=False):
        assert schedule.latest_fire_time(fire, zone).astimezone(UTC) == fire
        assert schedule.latest_fire_time(fire + timedelta(seconds=59), zone).astimezone(UTC) == fire
        assert schedule.latest_fire_time(fire - timedelta(microseconds=1), zone).astimezone(UTC) == previous


def test_it_looks_back_at_most_366_days() -> None:
    leap_day = cron.parse("0 0 29 2 *")
    assert leap_day.latest_fire_time(datetime(2028, 3, 1, tzinfo=UTC), UTC) == datetime(2028, 2, 29, tzinfo=UTC)
    assert leap_day.latest_fire_time(datetime(2029, 2, 28, tzinfo=UTC), UTC) == datetime(2028, 2, 29, tzinfo=UTC)
    assert leap_day.latest_fire_time(datetime(2029, 3, 2, tzinfo=UTC), UTC) is None
