"""Package schedules on django-celery-beat: one PeriodicTask per package, kept in step explicitly.

`sync_package_schedule` is called whenever a package is saved (admin, import) and is idempotent: it creates or
updates the package's PeriodicTask (deterministic name `executor.package.<id>`), disabled when the package is
inactive or has no schedule; `remove_package_schedule` deletes it with the package. CrontabSchedule rows are
shared between tasks and never deleted here. `manage.py sync_schedules` repairs drift for every package.

The cron string is converted in exactly one place, packages/cron.py (FX day of week 0 = Monday -> Celery 0 =
Sunday). Beat notices changes through PeriodicTasks.last_update, which saving a PeriodicTask bumps.
"""

import json
from datetime import datetime, timedelta

from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from . import cron
from .models import Package

TICK_TASK = "executor.scheduled_tick"
# Beat may send a tick a moment before the minute it is for; a tick is attributed to the latest fire time at
# or before this long after it arrives.
EARLY_TICK_TOLERANCE = timedelta(seconds=5)


def periodic_task_name(package_id: int) -> str:
    return f"executor.package.{package_id}"


def sync_package_schedule(package: Package) -> PeriodicTask | None:
    name = periodic_task_name(package.pk)
    if not package.schedule:
        # Nothing to fire; keep an existing task (disabled) so re-adding a schedule reuses it.
        PeriodicTask.objects.filter(name=name).update(enabled=False)
        PeriodicTasks.update_changed()  # .update() does not bump beat's change marker
        return None
    crontab, _ = CrontabSchedule.objects.get_or_create(
        **cron.parse(package.schedule).celery_crontab_kwargs(), timezone=package.timezone
    )
    task, _ = PeriodicTask.objects.update_or_create(
        name=name,
        defaults={
            "task": TICK_TASK,
            "crontab": crontab,
            "interval": None,
            "kwargs": json.dumps({"package_id": package.pk}),
            "queue": "scheduled",
            "enabled": package.active,
            "description": f"Schedule of package {package.package_name} ({package.schedule}, {package.timezone})",
        },
    )
    return task


def remove_package_schedule(package_id: int) -> None:
    PeriodicTask.objects.filter(name=periodic_task_name(package_id)).delete()


def current_fire_time(package: Package, now: datetime) -> datetime | None:
    """The fire time a tick arriving at `now` stands for; None if the schedule does not fire around now."""
    if not package.schedule:
        return None
    return cron.parse(package.schedule).latest_fire_time(now + EARLY_TICK_TOLERANCE, package.timezone)
