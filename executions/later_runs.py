"""Later runs a script asks for (FX `context.scheduler.retry` / `schedule`): one-off and kept in the database.

Each becomes a one-off clocked PeriodicTask of django-celery-beat, so it survives a restart of any process and
fires from the same beat as package schedules. When it fires, `executor.later_run` starts the execution through
the one tick path (executions/ticks.py), keyed so that a repeated tick starts it once. The cron expression FX sends
is read in the package's time zone, which is also the steps' TZ (workers/runner.py), so "in 5 minutes" means 5
minutes.
"""

import json
import logging
from datetime import datetime

from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, PeriodicTask

from packages import cron

from .models import Execution

logger = logging.getLogger(__name__)

LATER_RUN_TASK = "executor.later_run"


def schedule_later_run(parent: Execution, *, cron_expression: str, params: dict, request_id: str) -> datetime:
    """Ask beat to run `parent`'s package once, at the next time `cron_expression` matches. Raises CronError."""
    package = parent.package
    fire_times = cron.parse(cron_expression).next_fire_times(timezone.now(), package.timezone, count=1)
    if not fire_times:
        raise cron.CronError("schedule", f"{cron_expression!r} never matches a coming time")
    PeriodicTask.objects.create(
        name=f"executor.later.{request_id}",
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
