"""The executions app's Celery tasks: the ticks beat sends, each starting a run through executions/ticks.py, and
the periodic retention run.

Thin on purpose: a message carries ids, the ledger holds the state. A tick is safe to repeat (its run is keyed by
its fire time), so while the database is away it holds its message and then hands it back to Redis
(executor_project/redelivery.py). Beat's stored PeriodicTasks name these tasks: their names never change.
"""

import logging

from celery import shared_task
from django.conf import settings

from executor_project import database, metrics
from executor_project.redelivery import holding_the_message

from . import retention, ticks

logger = logging.getLogger(__name__)


@shared_task(name="executor.scheduled_tick", ignore_result=True)
def scheduled_tick(package_id: int) -> None:
    """Sent by beat for a package's PeriodicTask (packages/schedules.py). Repeatable: one run per fire time."""
    holding_the_message(
        lambda: ticks.fire(ticks.PACKAGE, package_id=package_id), f"schedule tick of package {package_id}"
    )


@shared_task(name="executor.saved_run_tick", ignore_result=True)
def saved_run_tick(execution_id: str) -> None:
    """Sent by beat for a saved run's own schedule (executions/saved_runs.py)."""
    holding_the_message(
        lambda: ticks.fire(ticks.SAVED_RUN, execution_id=execution_id), f"schedule tick of saved run {execution_id}"
    )


@shared_task(name="executor.later_run", ignore_result=True)
def later_run(package_id: int, params: dict, parent_execution_id: str, request_id: str) -> None:
    """Sent by beat for a one-off later run a script asked for (executions/later_runs.py); keyed by request_id."""
    message = dict(package_id=package_id, params=params, parent_execution_id=parent_execution_id, request_id=request_id)
    holding_the_message(lambda: ticks.fire(ticks.LATER_RUN, **message), f"later run {request_id}")


@shared_task(name="executor.prune_executions", ignore_result=True)
def prune_executions() -> dict[str, int]:
    """Periodic (CELERY_BEAT_SCHEDULE, maintenance lane): delete what retention says goes (executions/retention.py),
    for at most EXECUTOR_RETENTION_MAX_SECONDS; the next run goes on. Returns the counts (rows deleted per kind), for
    metrics. Nothing to hand back when the database is away: the next period tries again."""
    if not settings.EXECUTOR_RETENTION:
        return {}
    try:
        totals = retention.prune(time_budget=settings.EXECUTOR_RETENTION_MAX_SECONDS).totals()
    except database.UNREACHABLE as exc:
        database.reset_connection()
        logger.warning("retention: the database is unreachable (%s); the next run goes on", database.describe(exc))
        return {}
    for kind, deleted in totals.items():
        metrics.inc(metrics.RETENTION_DELETED, deleted, kind=kind)
    return totals
