"""The workers app's Celery tasks and worker signals: running an execution, the reaper, a worker's start-up.

Thin on purpose: a message carries an id, the ledger holds the state. A claim that cannot reach the database
hands its message back to Redis (executor_project/redelivery.py). The web side publishes `executor.run_execution`
by name (executions/queueing.py) and never imports this module, which loads the runner and the sandbox. The other
apps' tasks are in executions/tasks.py (schedule ticks, later runs) and packages/tasks.py (repository syncs).
"""

import logging
import uuid

from celery import shared_task
from celery.signals import task_prerun, worker_init, worker_process_init, worker_ready, worker_shutting_down
from django.db import close_old_connections

from executions import notifications
from executor_project import database, metrics
from executor_project.redelivery import hand_back

from . import heartbeat, niceness, notification_sending, reaper, runner, shutdown, workspace_sweep
from .checks import check_script_runtime
from .isolation import SandboxUnavailable, check_sandbox, sandbox_enabled

logger = logging.getLogger(__name__)
worker_init.connect(shutdown.prepare_pool)
worker_init.connect(niceness.apply_to_own_session)
worker_process_init.connect(shutdown.listen_in_pool_process)
worker_shutting_down.connect(shutdown.tell_pool_processes)
worker_ready.connect(workspace_sweep.sweep_at_start)


@task_prerun.connect
def reuse_database_connection(**kwargs) -> None:
    """Connections live across tasks (CELERY_DB_REUSE_MAX); one past CONN_MAX_AGE or broken is replaced here."""
    close_old_connections()


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
        raise hand_back(f"execution {execution_id}", exc) from None


@shared_task(name="executor.reap", ignore_result=True)
def reap() -> None:
    """Periodic (CELERY_BEAT_SCHEDULE): resolve executions whose worker died, republish lost messages."""
    metrics.tick_from_beat("reap")  # only beat sends this task: it is beat's pulse (README: Metrics)
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


@shared_task(name="executor.send_notification", bind=True, ignore_result=True)
def send_notification(self, delivery_id: int) -> None:
    """Published when an execution ends (executions/notifications.py): one attempt at one delivery; a failed one
    with attempts left comes back here after its backoff."""
    if not isinstance(delivery_id, int):
        logger.error("dropping send_notification message with a malformed id %r", delivery_id)
        return
    try:
        delay = notification_sending.send(delivery_id)
    except database.UNREACHABLE as exc:  # the delivery stays pending: the sweep sends it once the database is back
        database.reset_connection()
        logger.warning("notification %s: the database is unreachable (%s)", delivery_id, database.describe(exc))
        return
    if delay is not None:
        try:
            self.apply_async(args=[delivery_id], countdown=delay, queue=notifications.LANE)
        except Exception as exc:  # the sweep publishes it again
            logger.warning("notification %s: could not schedule its next attempt (%s)", delivery_id, type(exc).__name__)


@shared_task(name="executor.sweep_notifications", ignore_result=True)
def sweep_notifications() -> None:
    """Periodic (CELERY_BEAT_SCHEDULE): publish again the deliveries whose message was never published or was lost."""
    try:
        published = notifications.sweep()
    except database.UNREACHABLE as exc:
        database.reset_connection()
        logger.warning("notification sweep: the database is unreachable (%s)", database.describe(exc))
        return
    if published:
        logger.info("notification sweep: %s overdue deliveries published again", published)


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
