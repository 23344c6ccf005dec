import logging

from django import template
from django.conf import settings

from packages import access

from .. import dashboard

logger = logging.getLogger(__name__)

register = template.Library()


@register.inclusion_tag("admin/executions/dashboard.html", takes_context=True)
def executor_dashboard(context):
    user = context["request"].user  # every figure counts only this user's projects
    days = dashboard.executions_per_day(user)
    slowest = dashboard.time_per_package(user)
    return {
        "days": days,
        "statuses": dashboard.STATUSES,
        "busiest": max((day.total for day in days), default=0) or 1,
        "failures": dashboard.latest_failures(user),
        "running": dashboard.running_now(user),
        "slowest": slowest,
        "longest_ms": max((row["average_ms"] for row in slowest), default=0) or 1,
        **_health(user),
    }


def _health(user) -> dict:
    """The lanes' waits, the processes (superusers), and the warnings about either, most urgent first."""
    context = {"lane_waits": dashboard.lane_waits(user), **_processes(user)}
    warnings = [("error", process.problem) for process in context.get("processes", []) if process.problem]
    if context.get("processes_unreadable"):
        warnings.append(("error", "Redis cannot be read: the health of workers and beat is unknown."))
    limit = duration(settings.EXECUTOR_LANE_WAIT_WARNING_SECONDS)
    warnings += [
        ("warning", f"Lane {wait.lane}: its oldest pending execution has waited {duration(wait.waited_seconds)} "
                    f"(more than {limit}; {wait.pending} pending). Are its workers running and consuming?")
        for wait in context["lane_waits"]
        if wait.too_long
    ]  # fmt: skip
    return {**context, "health_warnings": warnings}


def _processes(user) -> dict:
    """The workers and beat, for superusers (the platform's, like its settings); the page still renders, saying
    so, when Redis cannot be read."""
    if not access.is_superuser(user):
        return {"show_processes": False}
    try:
        return {"show_processes": True, "processes": dashboard.processes()}
    except Exception as exc:  # redis-py's errors: the dashboard must not answer 500 for them
        logger.warning("dashboard: could not read the processes' liveness from Redis (%s)", type(exc).__name__)
        return {"show_processes": True, "processes": [], "processes_unreadable": True}


@register.filter
def percent_of(value: int, whole: int) -> float:
    return round(100 * (value or 0) / whole, 1) if whole else 0


@register.filter
def get(mapping: dict, key):
    return mapping.get(key, 0)


@register.filter
def duration(seconds: int) -> str:
    """45 s, 7 min, 3 h 20 min: how long ago, or how long waited, at the precision a glance needs."""
    seconds = int(seconds or 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} days"
