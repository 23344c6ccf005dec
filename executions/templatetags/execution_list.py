from django import template
from django.utils import timezone

from ..list_times import duration_words
from ..models import ExecutionStatus

register = template.Library()

ACTIVE = frozenset({ExecutionStatus.PENDING, ExecutionStatus.IN_PROGRESS})


@register.filter
def any_running(executions) -> bool:
    """Is any execution on this page of the list still pending or in progress? Then the page refreshes itself."""
    return any(execution.status in ACTIVE for execution in executions)


@register.filter
def running_for(started) -> str:
    """How long something that started at `started` has been running: "12.3 s", "2 min 5 s"."""
    return duration_words(round((timezone.now() - started).total_seconds() * 1000))
