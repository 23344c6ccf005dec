"""The dashboard on the admin's front page: the last two weeks of executions at a glance.

Every query is bounded by time (the created_at indexes) or by status, so the page stays quick on a ledger of
millions of executions. Every figure counts only the executions of the viewer's projects (all of them for a
superuser): a count is data too.
"""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Avg, Count, F, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from packages import access
from packages.access import Action

from .models import Execution, ExecutionStatus

DAYS = 14
STATUSES = [ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED,
            ExecutionStatus.IN_PROGRESS, ExecutionStatus.PENDING, ExecutionStatus.SKIPPED]  # fmt: skip


@dataclass(frozen=True)
class Day:
    day: date
    counts: dict[str, int]  # status -> executions created that day
    total: int


def visible_executions(user) -> QuerySet:
    return access.scoped(Execution.objects.all(), user, Action.VIEW, "package__project")


def executions_per_day(user, today: date | None = None) -> list[Day]:
    today = today or timezone.localdate()
    since = today - timedelta(days=DAYS - 1)
    start = timezone.make_aware(datetime.combine(since, time.min))  # a range the created_at index serves
    rows = (
        visible_executions(user)
        .filter(created_at__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values("day", "status")
        .annotate(n=Count("id"))
    )
    counts: dict[date, dict[str, int]] = {since + timedelta(days=n): {} for n in range(DAYS)}
    for row in rows:
        counts.setdefault(row["day"], {})[row["status"]] = row["n"]
    return [Day(day, by_status, sum(by_status.values())) for day, by_status in sorted(counts.items())]


def latest_failures(user, limit: int = 8):
    return (
        visible_executions(user)
        .filter(status=ExecutionStatus.FAILED)
        .select_related("package")
        .order_by("-created_at")[:limit]
    )


def running_now(user, limit: int = 20):
    return (
        visible_executions(user)
        .filter(status=ExecutionStatus.IN_PROGRESS)
        .select_related("package")
        .order_by("started_at")[:limit]
    )


def time_per_package(user, limit: int = 10) -> list[dict]:
    """Average and longest execution time (ms) per package over the last DAYS days, slowest first."""
    since = timezone.now() - timedelta(days=DAYS)
    rows = (
        visible_executions(user)
        .filter(created_at__gte=since, status=ExecutionStatus.COMPLETED, started_at__isnull=False)
        .values("package__name", "package_id")
        .annotate(average=Avg(F("finished_at") - F("started_at")), runs=Count("id"))
        .order_by("-average")[:limit]
    )
    return [{**row, "average_ms": round(row["average"].total_seconds() * 1000)} for row in rows]
