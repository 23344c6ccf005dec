"""Package schedules on django-celery-beat: one PeriodicTask per package, kept in step explicitly.

`sync_package_schedule` is called whenever a package is saved (admin, import) and is idempotent: it creates or
updates the package's PeriodicTask (deterministic name `executor.package.<id>`), disabled when the package is
inactive or has no schedule; `remove_package_schedule` deletes it with the package. CrontabSchedule rows are
shared between tasks and never deleted here. It also keeps Package.schedule_since (when the package's current
schedule took effect), which bounds what executions/catch_up.py may catch up. `manage.py sync_schedules` repairs
drift for every package.

The cron string is converted in exactly one place, packages/cron.py (FX day of week 0 = Monday -> Celery 0 =
Sunday). Beat notices changes through PeriodicTasks.last_update, which saving a PeriodicTask bumps.
"""

import json
from datetime import UTC, datetime, timedelta

from django.utils import timezone
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
    """Also moves Package.schedule_since to now when what beat fires changes (cron, zone, enabled): the catch-up
    (executions/catch_up.py) must not run a time that passed before the package had this schedule."""
    name = periodic_task_name(package.pk)
    before = PeriodicTask.objects.filter(name=name).values_list("crontab_id", "enabled").first()
    periodic_task = sync_periodic_task(
        name,
        task=TICK_TASK,
        kwargs={"package_id": package.pk},
        schedule=package.schedule,
        tz=package.timezone,
        enabled=package.active,
        description=f"Schedule of package {package.package_name} ({package.schedule}, {package.timezone})",
    )
    after = (periodic_task.crontab_id, periodic_task.enabled) if periodic_task else None
    if before != after or package.schedule_since is None:
        package.schedule_since = timezone.now()
        Package.objects.filter(pk=package.pk).update(schedule_since=package.schedule_since)
    return periodic_task


def sync_periodic_task(name: str, *, task: str, kwargs: dict, schedule: str, tz, enabled: bool, description: str):
    """Create or update the beat task `name` firing `task(**kwargs)` on the cron `schedule` (on the `scheduled`
    lane). With no schedule an existing task is disabled and kept, so adding a schedule back reuses it."""
    if not schedule:
        PeriodicTask.objects.filter(name=name).update(enabled=False)
        PeriodicTasks.update_changed()  # .update() does not bump beat's change marker
        return None
    crontab, _ = CrontabSchedule.objects.get_or_create(**cron.parse(schedule).celery_crontab_kwargs(), timezone=tz)
    periodic_task, _ = PeriodicTask.objects.update_or_create(
        name=name,
        defaults={
            "task": task,
            "crontab": crontab,
            "interval": None,
            "kwargs": json.dumps(kwargs),
            "queue": "scheduled",
            "enabled": enabled,
            "description": description,
        },
    )
    return periodic_task


def remove_package_schedule(package_id: int) -> None:
    PeriodicTask.objects.filter(name=periodic_task_name(package_id)).delete()


def current_fire_time(package: Package, now: datetime) -> datetime | None:
    """The fire time a tick arriving at `now` stands for; None if the schedule does not fire around now."""
    return fire_time_of_tick(package.schedule, package.timezone, now)


def tick_key(prefix: str, schedule: str, tz, now: datetime) -> str | None:
    """The idempotency key of a tick arriving at `now` ("<prefix>:<fire time in UTC>"): every tick for one fire
    time maps to it, so one execution starts however many arrive. None if the schedule does not fire around now."""
    fire_time = fire_time_of_tick(schedule, tz, now)
    return None if fire_time is None else fire_time_key(prefix, fire_time)


def fire_time_key(prefix: str, fire_time: datetime) -> str:
    """The idempotency key of the run for one fire time; the catch-up (executions/catch_up.py) uses it too."""
    return f"{prefix}:{fire_time.astimezone(UTC).isoformat()}"


def fire_time_of_tick(schedule: str, tz, now: datetime) -> datetime | None:
    if not schedule:
        return None
    return cron.parse(schedule).latest_fire_time(now + EARLY_TICK_TOLERANCE, tz)
