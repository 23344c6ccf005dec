"""Saved runs: executions marked Saved, run again with their parameters by a person or on their own schedule.

A re-run is a new execution of the same package with the same parameters (or edited ones) and the same run-form
files, linked to its source by `rerun_of`. A saved run's schedule is a beat task (`executor.saved.<id>`) kept in
step whenever the execution is saved in the admin; each tick starts one execution per fire time, however many
ticks arrive, like a package schedule (executions/ticks.py).
"""

import logging

from packages.schedules import sync_periodic_task

from .models import Execution, TriggerType
from .services import trigger_execution

logger = logging.getLogger(__name__)

SAVED_RUN_TASK = "executor.saved_run_tick"


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
    return f"executor.saved.{execution_id}"


def sync_saved_run_schedule(execution: Execution) -> None:
    sync_periodic_task(
        periodic_task_name(execution.pk),
        task=SAVED_RUN_TASK,
        kwargs={"execution_id": str(execution.pk)},
        schedule=execution.schedule if execution.saved else "",
        tz=execution.schedule_timezone,
        enabled=execution.saved,
        description=f"Saved run {execution.name or execution.short_id} of {execution.package.package_name}",
    )
