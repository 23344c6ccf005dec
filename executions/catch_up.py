"""Missed schedule times: a fire time whose tick never arrived is caught up, or recorded as missed, from the database.

Beat keeps no record of a tick it could not publish (Redis down or full at that minute), nor of the minutes it
was down itself, so those runs were lost for good. The reaper calls `catch_up_missed` every cycle: for each active
package with an enabled schedule it takes the latest fire time F at least EXECUTOR_SCHEDULE_CATCH_UP_GRACE_SECONDS
old, and if no execution has F's key (the one its tick would have used, packages/schedules.py), it acts per the
package's `missed_runs` policy: catch up once (start the run now, marked "caught up" in its description) or skip
(a `skipped` execution saying the run was missed, no steps). A tick that arrives later finds that execution and
starts nothing, as a repeated tick does.

Only F counts, never the times before it (no flood after a long outage), and only if it is within
EXECUTOR_SCHEDULE_CATCH_UP_SECONDS and after Package.schedule_since (a schedule set at 15:53 does not owe the 15:52
run). A cycle costs two queries however many packages there are: the candidates, and their keys' executions.

Saved runs' own schedules (executions/saved_runs.py) are not caught up: a saved run keeps no "schedule since".
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db import transaction
from django.db.models import CharField, Exists, OuterRef, Q, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from packages import cron
from packages.models import MissedRunPolicy, Package
from packages.schedules import fire_time_key, periodic_task_name

from . import transitions
from .models import Execution, ExecutionStatus, TriggerType
from .services import TriggerRefused, trigger_execution

logger = logging.getLogger(__name__)

# How a caught-up run and a recorded miss are told apart from ordinary scheduled runs (package page, tests).
CAUGHT_UP = "caught up:"
MISSED = "missed:"
NOT_STARTED = "not started:"
# The package page lists missed and caught-up runs this recent.
RECENT = timedelta(days=7)


@dataclass(frozen=True)
class _Due:
    package: Package
    fire_time: datetime
    key: str


def catch_up_missed(now: datetime | None = None) -> int:
    """Catch up or record each package's latest missed fire time; returns how many were handled."""
    now = now or timezone.now()
    due = _latest_fire_times(now)
    if not due:
        return 0
    taken = set(Execution.objects.filter(idempotency_key__in=[item.key for item in due]).values_list(
        "idempotency_key", flat=True))  # fmt: skip
    return sum(_handle(item, now) for item in due if item.key not in taken)


def _latest_fire_times(now: datetime) -> list[_Due]:
    look_back = settings.EXECUTOR_SCHEDULE_CATCH_UP_SECONDS
    if not look_back:
        return []
    latest = now - timedelta(seconds=settings.EXECUTOR_SCHEDULE_CATCH_UP_GRACE_SECONDS)
    earliest = now - timedelta(seconds=look_back)
    due = []
    minute = latest.replace(second=0, microsecond=0)  # fire times are whole minutes: the same answer all minute
    for package in _candidates():
        try:
            fire_time = _latest_fire_time(package.schedule, package.timezone, minute)
        except cron.CronError:
            continue  # refused by every form; a row written around them must not stop the reaper for the others
        if fire_time is not None and fire_time >= earliest and fire_time > package.schedule_since:
            due.append(_Due(package, fire_time, fire_time_key(f"schedule:{package.pk}", fire_time)))
    return due


def _candidates():
    """Active packages with a schedule beat is told to fire: a task disabled or deleted by hand owes nothing."""
    task_name = Concat(Value(periodic_task_name("")), Cast(OuterRef("pk"), output_field=CharField()))
    enabled_task = PeriodicTask.objects.filter(name=task_name, enabled=True)
    return (
        Package.objects.filter(active=True, schedule_since__isnull=False)
        .exclude(schedule="")
        .filter(Exists(enabled_task))
        .only("name", "package_name", "schedule", "timezone", "schedule_since", "missed_runs", "active", "entrypoint")
    )


@lru_cache(maxsize=4096)
def _latest_fire_time(expression: str, tz, minute: datetime) -> datetime | None:
    # Every few seconds for every scheduled package: computed once a minute per distinct schedule and zone.
    return cron.parse(expression).latest_fire_time(minute, tz)


def _handle(item: _Due, now: datetime) -> int:
    when = item.fire_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    package = item.package
    if package.missed_runs == MissedRunPolicy.SKIP:
        reason = f"{MISSED} the {when} run was not started (beat down or broker unreachable); the package skips those"
        return _record_skipped(item, reason, now)
    try:
        execution = _start_late(item, when)
    except TriggerRefused as exc:
        # Recorded, so that the next cycle does not try (and log) again until the next fire time.
        return _record_skipped(item, f"{NOT_STARTED} the {when} run was missed and could not be caught up: {exc}", now)
    if execution is None:
        return 0  # its tick arrived meanwhile
    logger.warning("package %s: the %s run was not started (beat down or broker unreachable); caught up as "
                   "execution %s", package.package_name, when, execution.id)  # fmt: skip
    return 1


def _start_late(item: _Due, when: str) -> Execution | None:
    """The caught-up execution, or None if a tick created this fire time's execution first."""
    correlation_id = uuid.uuid4().hex  # ours: tells our new execution from one a racing tick made
    with transaction.atomic():  # the mark is written before the worker can see the run (enqueued on commit)
        execution = trigger_execution(
            item.package, trigger_type=TriggerType.SCHEDULED, idempotency_key=item.key, correlation_id=correlation_id
        )
        if execution.correlation_id != correlation_id:
            return None
        # The description, not the status reason: a completed run clears its reason, and this must stay visible.
        execution.description = f"{CAUGHT_UP} the {when} tick was not delivered (beat down or broker unreachable)"
        Execution.objects.filter(pk=execution.pk).update(description=execution.description)
    return execution


def _record_skipped(item: _Due, reason: str, now: datetime) -> int:
    if not transitions.record_skipped(item.package, item.key, reason, now):
        return 0  # its tick arrived meanwhile and started the run
    logger.warning("package %s: %s", item.package.package_name, reason)
    return 1


def recent_missed(package: Package, now: datetime, limit: int = 5) -> list[Execution]:
    """The package's latest caught-up or missed runs (package page), newest first, from the last RECENT only:
    that bounds the scan of a package with millions of executions."""
    missed = Q(status_reason__startswith=MISSED) | Q(status_reason__startswith=NOT_STARTED)
    marked = Q(description__startswith=CAUGHT_UP) | Q(missed, status=ExecutionStatus.SKIPPED)
    recent = Execution.objects.filter(package=package, trigger_type=TriggerType.SCHEDULED, created_at__gte=now - RECENT)
    return list(recent.filter(marked).only("id", "status", "status_reason", "description", "created_at")[:limit])
