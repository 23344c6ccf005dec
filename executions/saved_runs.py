"""Saved runs: executions marked Saved, run again with their parameters by a person or on their own schedule.

A re-run is a new execution of the same package with the same parameters (or edited ones) and the same run-form
files, linked to its source by `rerun_of`. A saved run's schedule is a beat task (`executor.saved.<id>`) that follows
the execution: `follow_execution_save` and `follow_execution_delete`, connected to post_save and post_delete in
executions/apps.py, sync it inside the save's transaction and delete it with the execution. Only a saved run has an
enabled task (Execution.clean() refuses a schedule on one that is not saved; the sync disables the task of one that
is unsaved). Each tick starts one execution per fire time, however many ticks arrive, like a package schedule
(executions/ticks.py). Bulk writes send no signals: events.py's bulk_create makes unsaved, unscheduled
executions, which have no task; code that writes SCHEDULE_FIELDS with .update() must call the sync itself.
"""

from django.db import transaction
from django_celery_beat.models import PeriodicTask

from packages.schedules import delete_orphans, sync_periodic_task

from .models import Execution, TriggerType
from .services import trigger_execution

SAVED_RUN_TASK = "executor.saved_run_tick"
TASK_PREFIX = "executor.saved."
# What beat fires for a saved run depends on these fields only (its name is in the task's description): a save whose
# update_fields name none of them leaves the task alone.
SCHEDULE_FIELDS = frozenset({"saved", "schedule", "schedule_timezone", "name"})


def rerun(source: Execution, *, user=None, params: dict | None = None, files: dict[str, bytes] | None = None,
          trigger_type: TriggerType = TriggerType.MANUAL, idempotency_key: str | None = None) -> Execution:  # fmt: skip
    """Run `source`'s package again: with its parameters and files, unless edited ones are given."""
    run_files = {file.path: bytes(file.content) for file in source.files.all()}
    run_files.update(files or {})
    return trigger_execution(
        source.package,
        trigger_type=trigger_type,
        params=source.params if params is None else params,
        user=user,
        files=run_files,
        rerun_of=source,
        idempotency_key=idempotency_key,
    )


def periodic_task_name(execution_id) -> str:
    return f"{TASK_PREFIX}{execution_id}"


def follow_execution_save(sender, instance: Execution, created: bool, raw: bool = False, update_fields=None,
                          **kwargs) -> None:  # fmt: skip
    """post_save: bring a saved run's beat task in line with the execution."""
    if raw or (created and not instance.saved and not instance.schedule):
        return  # nearly every execution: new and not saved, so it has no task; no query on the trigger path
    if update_fields is not None and not SCHEDULE_FIELDS.intersection(update_fields):
        return
    # Inside the caller's transaction if there is one (the admin's change view): the task commits or rolls back
    # with the execution; atomic on its own in autocommit mode.
    with transaction.atomic():
        sync_saved_run_schedule(instance)


def follow_execution_delete(sender, instance: Execution, **kwargs) -> None:
    """post_delete (sent inside the delete's transaction): the task goes with the execution, saved or not (an
    unsaved execution may keep the disabled task of its saved days)."""
    PeriodicTask.objects.filter(name=periodic_task_name(instance.pk)).delete()


def sync_saved_run_schedule(execution: Execution) -> None:
    """Create or update the saved run's task; disabled (and kept, like a package's) when the execution is not saved
    or has no schedule, so an unsaved execution never has an enabled task."""
    sync_periodic_task(
        periodic_task_name(execution.pk),
        task=SAVED_RUN_TASK,
        kwargs={"execution_id": str(execution.pk)},
        schedule=execution.schedule if execution.saved else "",
        tz=execution.schedule_timezone,
        enabled=execution.saved,
        description=f"Saved run {execution.name or execution.short_id} of {execution.package.package_name}",
    )


def repair_saved_run_schedules() -> None:
    """Sync every saved run's task and delete the tasks of executions that are gone or no longer saved (`manage.py
    sync_schedules`). Saved runs are few: the partial index on saved finds them."""
    saved = list(Execution.objects.select_related("package").filter(saved=True))
    for execution in saved:
        sync_saved_run_schedule(execution)
    delete_orphans(TASK_PREFIX, owners=[execution.pk for execution in saved])
