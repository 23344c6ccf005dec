"""Later runs a script asks for (FX `context.scheduler.retry` / `schedule`): one-off and kept in the database.

Each becomes a one-off clocked PeriodicTask of django-celery-beat, so it survives a restart of any process and
fires from the same beat as package schedules. When it fires, `executor.later_run` starts the execution through
the one tick path (executions/ticks.py), keyed so that a repeated tick starts it once. The cron expression FX sends
is read in the package's time zone, which is also the steps' TZ (workers/runner.py), so "in 5 minutes" means 5
minutes.

A fired task is of no further use: `delete_fired`, called from the reaper's round (workers/reaper.py), deletes it
with its ClockedSchedule, so neither piles up. `manage.py sync_schedules` does the same and also removes clocked
schedules that lost their task.
"""

import json
import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, PeriodicTask, PeriodicTasks

from packages import cron

from .models import Execution

logger = logging.getLogger(__name__)

LATER_RUN_TASK = "executor.later_run"
TASK_PREFIX = "executor.later."


def periodic_task_name(request_id: str) -> str:
    return f"{TASK_PREFIX}{request_id}"


def schedule_later_run(parent: Execution, *, cron_expression: str, params: dict, request_id: str) -> datetime:
    """Ask beat to run `parent`'s package once, at the next time `cron_expression` matches. Raises CronError."""
    package = parent.package
    fire_times = cron.parse(cron_expression).next_fire_times(timezone.now(), package.timezone, count=1)
    if not fire_times:
        raise cron.CronError("schedule", f"{cron_expression!r} never matches a coming time")
    with transaction.atomic():  # a clocked schedule is never left without its task
        PeriodicTask.objects.create(
            name=periodic_task_name(request_id),
            task=LATER_RUN_TASK,
            clocked=ClockedSchedule.objects.create(clocked_time=fire_times[0]),
            one_off=True,
            queue="scheduled",
            kwargs=json.dumps(
                {
                    "package_id": package.pk,
                    "params": params,
                    "parent_execution_id": str(parent.id),
                    "request_id": request_id,
                }
            ),  # fmt: skip
            description=f"Later run of {package.package_name} asked for by execution {parent.id} ({cron_expression})",
        )
    return fire_times[0]


def delete_fired(now: datetime | None = None) -> int:
    """Delete the later-run tasks beat has fired, with their clocked schedules; how many tasks.

    How beat leaves a one-off task it fired (django-celery-beat's DatabaseScheduler): it writes last_run_at at its
    next sync, still enabled, then disables it when it next reloads the schedule, and PeriodicTask.save() empties
    last_run_at as it disables. So a task is deleted once it is disabled and its time has passed, not as soon as
    last_run_at appears: until beat has disabled it, beat may still hold the row in memory and write it back. A
    task still waiting for its time is never touched, disabled or not; a disabled one whose time passed fired, or
    was stopped by hand before it could, and runs no more either way. Called every reaper round, so cheap with
    nothing to do: one query on PeriodicTask's name index, which holds the few later runs still pending.
    """
    fired = PeriodicTask.objects.filter(
        name__startswith=TASK_PREFIX, one_off=True, enabled=False, clocked__clocked_time__lte=now or timezone.now()
    )
    found = list(fired.values_list("pk", "clocked_id"))
    if not found:
        return 0
    with transaction.atomic():
        deleted = fired.filter(pk__in=[pk for pk, _ in found]).delete()[1].get(PeriodicTask._meta.label, 0)
        # Each later run has a clocked schedule of its own; one a person has reused for a task of theirs stays.
        ClockedSchedule.objects.filter(pk__in=[clocked for _, clocked in found], periodictask=None).delete()
        # A row beat last wrote has no_changes set, and deleting it does not bump the marker: bump it, so beat
        # drops the deleted tasks from memory at its next tick.
        PeriodicTasks.update_changed()
    logger.info("deleted %s fired later-run task(s)", deleted)
    return deleted


def delete_unused_clocks(now: datetime | None = None) -> int:
    """Delete the clocked schedules whose time has passed and that no task uses any more (left by later-run tasks
    deleted by hand); how many. A future one is kept: it may be a person's, about to get its task."""
    unused = ClockedSchedule.objects.filter(periodictask=None, clocked_time__lte=now or timezone.now())
    return unused.delete()[0]
