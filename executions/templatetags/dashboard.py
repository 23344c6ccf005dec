from django import template

from .. import dashboard

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
    }


@register.filter
def percent_of(value: int, whole: int) -> float:
    return round(100 * (value or 0) / whole, 1) if whole else 0


@register.filter
def get(mapping: dict, key):
    return mapping.get(key, 0)
