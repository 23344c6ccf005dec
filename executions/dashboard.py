"""The dashboard on the admin's front page: the last two weeks of executions at a glance, the lanes whose runs
wait too long, and the health of the workers and beat.

Every query is bounded by time (the created_at indexes) or by status, so the page stays quick on a ledger of
millions of executions. Every figure counts only the executions of the viewer's projects (all of them for a
superuser): a count is data too. The processes (workers, beat) belong to no project: the platform's, shown to
superusers only (packages/access.py), read in one HGETALL (executor_project/liveness.py).
"""

import time as clock
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db.models import Avg, Case, Count, F, Min, QuerySet, Value, When
from django.db.models.functions import TruncDate
from django.utils import timezone

from executor_project import liveness
from packages import access
from packages.access import Action

from .models import Execution, ExecutionStatus, TriggerType

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


# executions/queueing.py:lane_for in SQL (scheduled runs on their lane, the others by Package.lane's priority
# bands), so one GROUP BY finds each lane's oldest pending run; tests/test_health_dashboard.py holds them equal.
LANE = Case(
    When(trigger_type=TriggerType.SCHEDULED, then=Value("scheduled")),
    When(package__priority__lte=3, then=Value("priority")),
    When(package__priority__lte=7, then=Value("default")),
    default=Value("slow"),
)


@dataclass(frozen=True)
class LaneWait:
    lane: str
    pending: int
    oldest: datetime  # created_at of its oldest pending execution
    waited_seconds: int
    too_long: bool  # longer than EXECUTOR_LANE_WAIT_WARNING_SECONDS


def lane_waits(user, now: datetime | None = None) -> list[LaneWait]:
    """Per lane with pending executions (of the viewer's projects): how many, and how long the oldest has waited.
    One query on the (status, created_at) index: only pending rows are read."""
    now = now or timezone.now()
    limit = settings.EXECUTOR_LANE_WAIT_WARNING_SECONDS
    rows = (
        visible_executions(user)
        .filter(status=ExecutionStatus.PENDING)
        .annotate(lane=LANE)
        .order_by()
        .values("lane")
        .annotate(pending=Count("id"), oldest=Min("created_at"))
    )
    waits = []
    for row in sorted(rows, key=lambda row: row["oldest"]):
        waited = max(0, int((now - row["oldest"]).total_seconds()))
        waits.append(LaneWait(row["lane"], row["pending"], row["oldest"], waited, waited > limit))
    return waits


@dataclass(frozen=True)
class Process:
    name: str
    kind: str  # worker | beat
    lanes: list[str]
    slots: int | None
    running: int | None  # run_execution tasks running now: one step each
    seen_seconds_ago: int  # since its last heartbeat (a worker) or tick (beat)
    problem: str | None  # liveness.judge: None when healthy


def processes(now: float | None = None) -> list[Process]:
    """Every worker and beat that recorded its liveness, workers first, by name. Raises redis.RedisError when Redis
    cannot be read (the caller says so on the page)."""
    now = clock.time() if now is None else now
    stale = settings.EXECUTOR_HEALTH_STALE_SECONDS
    found = []
    for name, entry in liveness.read_all().items():
        kind = entry.get("kind")
        if kind not in ("worker", "beat"):
            continue
        lanes = entry.get("lanes") if isinstance(entry.get("lanes"), list) else []
        found.append(Process(name, kind, [str(lane) for lane in lanes], _count(entry.get("slots")),
                             _count(entry.get("running")), max(0, int(now - entry["at"])),
                             liveness.judge(entry, now, stale)))  # fmt: skip
    return sorted(found, key=lambda process: (process.kind != "worker", process.name))


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
