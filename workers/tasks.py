"""Celery entry points. Thin on purpose: a message carries an id, the ledger holds the state.

A task that cannot reach the database does not consume its message: it holds it, trying again for
EXECUTOR_DATABASE_WAIT_SECONDS (prefetch is 1, so its slot takes no other message meanwhile), then rejects it
with requeue (Reject(requeue=True): with acks_late Celery puts it back in Redis, at the back of its queue), and
it is delivered again later, to this worker or another. Every attempt waits that long first: no hot loop.
"""

import logging
import uuid
from collections.abc import Callable

from celery import shared_task
from celery.exceptions import Reject
from celery.signals import task_prerun, worker_init, worker_process_init, worker_ready, worker_shutting_down
from django.conf import settings
from django.db import close_old_connections

from executions.later_runs import start_later_run
from executions.saved_runs import run_saved_on_schedule
from executions.services import trigger_scheduled_tick
from executor_project import database
from packages.models import GitRepository

from . import heartbeat, reaper, runner, shutdown, workspace_sweep
from .checks import check_script_runtime
from .isolation import SandboxUnavailable, check_sandbox, sandbox_enabled

logger = logging.getLogger(__name__)
worker_init.connect(shutdown.prepare_pool)
worker_process_init.connect(shutdown.listen_in_pool_process)
worker_shutting_down.connect(shutdown.tell_pool_processes)
worker_ready.connect(workspace_sweep.sweep_at_start)


@task_prerun.connect
def reuse_database_connection(**kwargs) -> None:
    """Connections live across tasks (CELERY_DB_REUSE_MAX); one past CONN_MAX_AGE or broken is replaced here."""
    close_old_connections()


def _hand_back(what: str, exc: BaseException) -> Reject:
    logger.warning("%s: the database is still unreachable after %s s (%s): message handed back to Redis",
                   what, settings.EXECUTOR_DATABASE_WAIT_SECONDS, database.describe(exc))  # fmt: skip
    return Reject(f"database unreachable: {database.describe(exc)}", requeue=True)


def _holding_the_message(action: Callable[[], object], what: str) -> None:
    """Run a task body that is safe to repeat (its effect is keyed by the message) through a database blink."""
    try:
        database.retrying(action, seconds=settings.EXECUTOR_DATABASE_WAIT_SECONDS, what=what)
    except database.UNREACHABLE as exc:
        raise _hand_back(what, exc) from None


# Request: in the worker's main process, the one that tells the heartbeat when its pool process dies.
@shared_task(name="executor.run_execution", bind=True, ignore_result=True, Request="workers.heartbeat:ExecutionRequest")
def run_execution(self, execution_id: str) -> None:
    try:
        uuid.UUID(str(execution_id))
    except ValueError:
        logger.error("dropping run_execution message with a malformed id %r", execution_id)
        return
    try:
        runner.run_execution(execution_id, worker_name=self.request.hostname or "unknown")
    except database.UNREACHABLE as exc:  # only the claim lets these through (runner.run_execution)
        raise _hand_back(f"execution {execution_id}", exc) from None


@shared_task(name="executor.scheduled_tick", ignore_result=True)
def scheduled_tick(package_id: int) -> None:
    """Sent by beat for a package's PeriodicTask (packages/schedules.py). Repeatable: one run per fire time."""
    _holding_the_message(lambda: trigger_scheduled_tick(package_id), f"schedule tick of package {package_id}")


@shared_task(name="executor.saved_run_tick", ignore_result=True)
def saved_run_tick(execution_id: str) -> None:
    """Sent by beat for a saved run's own schedule (executions/saved_runs.py)."""
    _holding_the_message(lambda: run_saved_on_schedule(execution_id), f"schedule tick of saved run {execution_id}")


@shared_task(name="executor.later_run", ignore_result=True)
def later_run(package_id: int, params: dict, parent_execution_id: str, request_id: str) -> None:
    """Sent by beat for a one-off later run a script asked for (executions/later_runs.py); keyed by request_id."""
    _holding_the_message(
        lambda: start_later_run(package_id, params, parent_execution_id, request_id), f"later run {request_id}"
    )


@shared_task(name="executor.sync_repository", ignore_result=True)
def sync_repository(repository_id: int) -> None:
    """Queued by a push webhook or the Sync Now API (packages/git_webhook.py)."""
    from packages import git_sync  # dulwich: ~10 MiB that only a worker which syncs needs to carry

    repository = GitRepository.objects.select_related("project").filter(pk=repository_id).first()
    if repository is None:
        logger.info("sync of repository %s, which no longer exists: ignored", repository_id)
        return
    git_sync.sync_repository(repository)


@shared_task(name="executor.reap", ignore_result=True)
def reap() -> None:
    """Periodic (CELERY_BEAT_SCHEDULE): resolve executions whose worker died, republish lost messages."""
    try:
        report = reaper.reap()
    except database.UNREACHABLE as exc:  # the next period tries again; no traceback every few seconds
        database.reset_connection()
        logger.warning("reaper: the database is unreachable (%s)", database.describe(exc))
        return
    if report.failed or report.retried or report.republished:
        logger.info(
            "reaper: worker lost for %s failed and %s retried executions; %s pending ones published again",
            report.failed, report.retried, report.republished,
        )  # fmt: skip


@worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    """In the worker's main process (sender: its consumer), whatever the pool."""
    heartbeat.start(sender)


@worker_ready.connect
def report_script_runtime(sender=None, **kwargs) -> None:
    """Say loudly at start-up when Python steps cannot run on this worker, instead of at the first run."""
    for problem in check_script_runtime(None):
        logger.error("%s %s", problem.msg, problem.hint)
    if not sandbox_enabled():
        logger.warning("EXECUTOR_SANDBOX=off: steps run WITHOUT isolation on this worker")
        return
    try:
        check_sandbox()
    except SandboxUnavailable as exc:
        logger.error("%s: this worker refuses to run steps until the sandbox works (or EXECUTOR_SANDBOX=off)", exc)
