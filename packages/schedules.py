"""Package schedules on django-celery-beat: one PeriodicTask per package, following the package.

A package's beat task (deterministic name `executor.package.<id>`) follows the package the way
PeriodicTask.save() keeps beat's change marker in step: `follow_package_save` and `follow_package_delete`,
connected to post_save and post_delete in packages/apps.py, sync or remove it inside the save's or the delete's
transaction. Whoever saves a package (admin, import, Git sync, a shell) therefore keeps its schedule in step, and a
save that is rolled back leaves no task behind. Bulk writes send no signals: nothing here writes a package's
schedule, zone or active flag with .update() or bulk_create; code that does must call `sync_package_schedule`.

`sync_package_schedule` is idempotent: it creates or updates the task, disabled when the package is inactive or has
no schedule, and writes nothing when the task already matches (beat then reloads nothing). CrontabSchedule rows are
shared between tasks and never deleted here. It also keeps Package.schedule_since (when the package's current
schedule took effect), which bounds what executions/catch_up.py may catch up. `manage.py sync_schedules`
(executions/management/commands/sync_schedules.py) repairs drift and removes orphans.

The cron string is converted in exactly one place, packages/cron.py (FX day of week 0 = Monday -> Celery 0 =
Sunday). Beat notices changes through PeriodicTasks.last_update, which saving a PeriodicTask bumps.
"""

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from . import cron
from .models import Package

TICK_TASK = "executor.scheduled_tick"
TASK_PREFIX = "executor.package."
# What beat fires for a package depends on these fields only (package_name is in the task's description): a save
# whose update_fields name none of them leaves the task alone.
SCHEDULE_FIELDS = frozenset({"schedule", "timezone", "active", "package_name"})
# Beat may send a tick a moment before the minute it is for; a tick is attributed to the latest fire time at
# or before this long after it arrives.
EARLY_TICK_TOLERANCE = timedelta(seconds=5)


def periodic_task_name(package_id: int) -> str:
    return f"{TASK_PREFIX}{package_id}"


def follow_package_save(sender, instance: Package, raw: bool = False, update_fields=None, **kwargs) -> None:
    """post_save: bring the package's beat task in line with the package (fixtures loaded raw are left to
    `manage.py sync_schedules`)."""
    if raw or (update_fields is not None and not SCHEDULE_FIELDS.intersection(update_fields)):
        return
    # Django sends post_save after the row is written, inside the caller's transaction if there is one (admin,
    # import): the task then commits or rolls back with the package. Atomic here too, so that a save made in
    # autocommit mode never leaves the task and schedule_since half written.
    with transaction.atomic():
        sync_package_schedule(instance)


def follow_package_delete(sender, instance: Package, **kwargs) -> None:
    """post_delete (sent inside the delete's transaction): the package's task goes with it."""
    remove_package_schedule(instance.pk)


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
    lane). With no schedule an existing task is disabled and kept, so adding a schedule back reuses it. A task that
    already matches is not written: every write makes beat reload its whole schedule."""
    if not schedule:
        if PeriodicTask.objects.filter(name=name, enabled=True).update(enabled=False):
            PeriodicTasks.update_changed()  # .update() does not bump beat's change marker
        return None
    crontab, _ = CrontabSchedule.objects.get_or_create(**cron.parse(schedule).celery_crontab_kwargs(), timezone=tz)
    wanted = {
        "task": task,
        "crontab_id": crontab.pk,
        "interval_id": None,
        "kwargs": json.dumps(kwargs),
        "queue": "scheduled",
        "enabled": enabled,
        "description": description,
    }
    existing = PeriodicTask.objects.filter(name=name).first()
    if existing is not None and all(getattr(existing, field) == value for field, value in wanted.items()):
        return existing
    periodic_task, _ = PeriodicTask.objects.update_or_create(name=name, defaults=wanted)
    return periodic_task


def remove_package_schedule(package_id: int) -> None:
    PeriodicTask.objects.filter(name=periodic_task_name(package_id)).delete()


def repair_package_schedules() -> None:
    """Sync every package's task and delete the tasks of packages that no longer exist (`manage.py
    sync_schedules`). An inactive package keeps its disabled task, as the sync leaves it."""
    packages = list(Package.objects.all())
    for package in packages:
        sync_package_schedule(package)
    delete_orphans(TASK_PREFIX, owners=[package.pk for package in packages])


def delete_orphans(prefix: str, owners: Iterable) -> int:
    """Delete the beat tasks named `<prefix>...` that are not `<prefix><owner>` for one of `owners`; how many."""
    keep = [f"{prefix}{owner}" for owner in owners]
    orphans = PeriodicTask.objects.filter(name__startswith=prefix).exclude(name__in=keep)
    return orphans.delete()[1].get(PeriodicTask._meta.label, 0)


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
