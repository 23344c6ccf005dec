"""The schedule as a person reads it: in words, and the next fire times in the package's zone and in UTC."""

from datetime import UTC, datetime

from django.utils.html import format_html, format_html_join

from . import cron

PREVIEW_COUNT = 5


def schedule_preview_html(expression: str, tz, now: datetime) -> str:
    if not expression:
        return "Not scheduled."
    try:
        schedule = cron.parse(expression)
    except cron.CronError as exc:
        return format_html('<span class="errornote">{}</span>', str(exc))
    fires = schedule.next_fire_times(now, tz, PREVIEW_COUNT)
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
