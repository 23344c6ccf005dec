"""Celery entry points. Thin on purpose: a message carries an id, the ledger holds the state."""

import logging
import uuid

from celery import shared_task
from celery.signals import task_prerun, worker_process_init, worker_ready, worker_shutting_down
from django.db import close_old_connections

from executions.later_runs import start_later_run
from executions.saved_runs import run_saved_on_schedule
from executions.services import trigger_scheduled_tick
from packages.models import GitRepository

from . import reaper, runner, shutdown
from .checks import check_script_runtime
from .isolation import SandboxUnavailable, check_sandbox, sandbox_enabled

logger = logging.getLogger(__name__)
worker_process_init.connect(shutdown.listen_in_pool_process)
worker_shutting_down.connect(shutdown.tell_pool_processes)


@task_prerun.connect
def reuse_database_connection(**kwargs) -> None:
    """Connections live across tasks (CELERY_DB_REUSE_MAX); one past CONN_MAX_AGE or broken is replaced here."""
    close_old_connections()


@shared_task(name="executor.run_execution", bind=True, ignore_result=True)
def run_execution(self, execution_id: str) -> None:
    try:
        uuid.UUID(str(execution_id))
    except ValueError:
        logger.error("dropping run_execution message with a malformed id %r", execution_id)
        return
    runner.run_execution(execution_id, worker_name=self.request.hostname or "unknown")


@shared_task(name="executor.scheduled_tick", ignore_result=True)
def scheduled_tick(package_id: int) -> None:
    """Sent by beat for a package's PeriodicTask (packages/schedules.py)."""
    trigger_scheduled_tick(package_id)


@shared_task(name="executor.saved_run_tick", ignore_result=True)
def saved_run_tick(execution_id: str) -> None:
    """Sent by beat for a saved run's own schedule (executions/saved_runs.py)."""
    run_saved_on_schedule(execution_id)


@shared_task(name="executor.later_run", ignore_result=True)
def later_run(package_id: int, params: dict, parent_execution_id: str, request_id: str) -> None:
    """Sent by beat for a one-off later run a script asked for (executions/later_runs.py)."""
    start_later_run(package_id, params, parent_execution_id, request_id)


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
    report = reaper.reap()
    if report.failed or report.retried or report.republished:
        logger.info(
            "reaper: worker lost for %s failed and %s retried executions; %s pending ones published again",
            report.failed, report.retried, report.republished,
        )  # fmt: skip


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
