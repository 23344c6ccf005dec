"""Times as the execution list shows them: short words that fit a narrow column, the full time on hover."""

from datetime import datetime

from django.utils import timezone
from django.utils.html import format_html

UNITS = [(86400, "d"), (3600, "h"), (60, "min")]


def relative_time(moment: datetime | None, now: datetime | None = None) -> str:
    """ "3 min ago" in a <time> element whose title is the full local time."""
    if moment is None:
        return "—"
    seconds = max(((now or timezone.now()) - moment).total_seconds(), 0)
    words = "just now" if seconds < 60 else f"{_amount(seconds)} ago"
    local = timezone.localtime(moment)
    return format_html('<time datetime="{}" title="{}">{}</time>', local.isoformat(),
                       f"{local:%Y-%m-%d %H:%M:%S %Z}", words)  # fmt: skip


def duration_words(ms: int) -> str:
    """1234 -> "1.2 s", 95000 -> "1 min 35 s"; under a second in ms."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _amount(seconds: float) -> str:
    for size, unit in UNITS:
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"
