"""Soft shutdown: on SIGTERM a worker finishes the step it is running and hands the rest of the run over.

Celery's warm shutdown (SIGTERM) stops taking messages and waits for the tasks that are running; messages a
worker had reserved go back to Redis. The main process then tells its pool processes (SIGUSR2) that it is
leaving. In each of them, a running execution lets its current step finish, for up to
EXECUTOR_SHUTDOWN_GRACE_SECONDS, then goes back to `pending` with its remaining steps and is published again
for another worker (workers/runner.py). A step still running when the grace period ends is stopped: it runs
again on the next worker if the package allows retries after worker loss, else it fails saying why.

Deploy tools must wait longer than the grace period before they SIGKILL (docker-compose: stop_grace_period).
"""

import logging
import os
import signal
import time

from billiard.process import active_children
from django.conf import settings

logger = logging.getLogger(__name__)
_requested_at: float | None = None  # time.monotonic() of the shutdown request in this process


def request() -> None:
    global _requested_at
    if _requested_at is None:
        _requested_at = time.monotonic()


def requested() -> bool:
    return _requested_at is not None


def grace_expired() -> bool:
    return _requested_at is not None and time.monotonic() >= _requested_at + settings.EXECUTOR_SHUTDOWN_GRACE_SECONDS


def listen_in_pool_process(**kwargs) -> None:
    """worker_process_init: a pool process learns of the shutdown from its parent."""
    signal.signal(signal.SIGUSR2, lambda signum, frame: request())


def tell_pool_processes(sender=None, how=None, **kwargs) -> None:
    """worker_shutting_down, in the worker's main process."""
    request()  # the solo and threads pools run tasks in this very process
    children = active_children()
    logger.warning(
        "%s shutdown: running steps get %s s to finish; then their executions are handed to other workers",
        how, settings.EXECUTOR_SHUTDOWN_GRACE_SECONDS,
    )  # fmt: skip
    for child in children:
        try:
            os.kill(child.pid, signal.SIGUSR2)
        except ProcessLookupError:
            pass  # already gone
