"""Repair django-celery-beat's tasks of every kind: after a restore, a manual edit of *Periodic tasks*, or a bulk
write that sent no signals. Schedules follow their owners on every save and delete (packages/schedules.py,
executions/saved_runs.py), so on a healthy installation a run changes nothing. Idempotent."""

from django.core.management.base import BaseCommand
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from executions import later_runs, saved_runs
from packages import schedules

KINDS = {"package": schedules.TASK_PREFIX, "saved run": saved_runs.TASK_PREFIX, "later run": later_runs.TASK_PREFIX}
# The parts of a task that decide what beat fires: a change in any of them is a repaired drift.
COMPARED = ("task", "crontab_id", "interval_id", "clocked_id", "kwargs", "queue", "enabled", "one_off", "description")


class Command(BaseCommand):
    help = (
        "Bring beat's periodic tasks in line with the packages and saved runs (creating missing tasks and "
        "repairing drifted ones), and delete orphans: tasks of deleted packages, of executions deleted or no longer "
        "saved, later runs that fired, and the clocked schedules they leave."
    )

    def handle(self, *args, **options):
        before = _tasks()
        with transaction.atomic():
            schedules.repair_package_schedules()
            saved_runs.repair_saved_run_schedules()
            later_runs.delete_fired()
            clocks = later_runs.delete_unused_clocks()
        after = _tasks()
        for kind, prefix in KINDS.items():
            names = {name for name in before.keys() | after.keys() if name.startswith(prefix)}
            created = sorted(names - before.keys())
            deleted = sorted(names - after.keys())
            updated = sorted(name for name in names & before.keys() & after.keys() if before[name] != after[name])
            self.stdout.write(f"{kind} tasks: {len(created)} created, {len(updated)} updated, "
                              f"{len(deleted)} deleted, {len(names & after.keys())} in all")  # fmt: skip
            if options["verbosity"] > 1:
                for what, changed in (("created", created), ("updated", updated), ("deleted", deleted)):
                    for name in changed:
                        self.stdout.write(f"  {what} {name}")
        self.stdout.write(f"clocked schedules: {clocks} unused deleted")


def _tasks() -> dict[str, tuple]:
    """Every executor task (name `executor.<kind>.<id>`) by name, as the fields that decide what beat fires."""
    rows = PeriodicTask.objects.filter(name__startswith="executor.").values_list("name", *COMPARED)
    return {row[0]: row[1:] for row in rows}
