"""The schedule as a person reads it: in words, and the next fire times in the package's zone and in UTC.

Shown on the package page (PackageAdmin.schedule_preview) and answered while someone types into the form
(`preview_answer`, the admin's schedule-preview endpoint): one rendering for both, so the live preview and the
saved page never disagree.
"""

from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from . import cron
from .models import Package

PREVIEW_COUNT = 5
# What the saved page shows for a schedule the form refused: the field's own error above says why, once.
SEE_THE_ERROR = "Fix the schedule above to see when it runs."
# The package form's error for a zone that is not one of the suggestions (a %-format of Django's ChoiceField).
UNKNOWN_ZONE = "Unknown time zone “%(value)s”: type a few letters of a city (e.g. Berl) and pick a suggestion."


def schedule_preview_html(expression: str, tz, now: datetime) -> str:
    if not expression:
        return "Not scheduled."
    try:
        schedule = cron.parse(expression)
    except cron.CronError:
        return SEE_THE_ERROR
    return _preview(schedule, tz, schedule.next_fire_times(now, tz, PREVIEW_COUNT))


def _preview(schedule: cron.Cron, tz, fires: list[datetime]) -> str:
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td></tr>",
        (
            (fire.strftime("%a %Y-%m-%d %H:%M %Z"), fire.astimezone(UTC).strftime("%a %Y-%m-%d %H:%M UTC"))
            for fire in fires
        ),
    )
    return format_html(
        "<p>{}</p><table><thead><tr><th>Next runs ({})</th><th>UTC</th></tr></thead><tbody>{}</tbody></table>",
        schedule.describe(),
        tz,
        rows or format_html("<tr><td colspan=2>{}</td></tr>", "No run in the foreseeable future."),
    )


def preview_answer(expression: str, zone_name: str, now: datetime) -> tuple[int, dict]:
    """(HTTP status, JSON body) for a schedule and time zone as typed into the package form, not yet saved.

    200: `html` (what the page shows), `words` and `next_runs` (each `at` in the zone and `utc`, ISO 8601);
    an empty schedule is 200 with html "Not scheduled.". 400: `field` ("schedule" or "timezone") and `error`, the
    same sentence a save would show next to that field. The input is checked with the model's own field, so the
    preview accepts exactly what a save accepts.
    """
    tz = _zone(zone_name)
    if isinstance(tz, ValidationError):
        return 400, {"field": "timezone", "error": " ".join(tz.messages)}
    expression = expression.strip()
    if not expression:
        return 200, {"html": "Not scheduled.", "words": "", "next_runs": []}
    if len(expression) > Package._meta.get_field("schedule").max_length:
        return 400, {"field": "schedule", "error": "The schedule is too long to be a cron expression."}
    try:
        schedule = cron.parse(expression)
    except cron.CronError as exc:
        return 400, {"field": "schedule", "error": str(exc)}
    fires = schedule.next_fire_times(now, tz, PREVIEW_COUNT)
    return 200, {
        "html": _preview(schedule, tz, fires),
        "words": schedule.describe(),
        "next_runs": [{"at": fire.isoformat(), "utc": fire.astimezone(UTC).isoformat()} for fire in fires],
    }


def _zone(name: str):
    """The zone `name` names, or the ValidationError the package form would show for it."""
    field = Package._meta.get_field("timezone").formfield(error_messages={"invalid_choice": UNKNOWN_ZONE})
    try:
        return field.clean(name.strip()[:100])
    except ValidationError as exc:
        return exc
