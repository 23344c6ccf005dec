"""Soft shutdown: on SIGTERM a worker finishes the step it is running and hands the rest of the run over.

Celery's warm shutdown (SIGTERM) stops taking messages and waits for the tasks that are running; messages a
worker had reserved go back to Redis. The main process then tells its pool processes (SIGUSR2) that it is
leaving. In each of them, a running execution lets its current step finish, for up to
EXECUTOR_SHUTDOWN_GRACE_SECONDS, then goes back to `pending` with its remaining steps and is published again
for another worker (workers/runner.py). A step still running when the grace period ends is stopped: it runs
again on the next worker if the package allows retries after worker loss, else it fails saying why
(workers/steps.py).

However SIGTERM arrives. Supervisors often signal the worker's whole process group (honcho, `kill -- -pgid`) or
every process of a service (systemd's KillMode=control-group), so the pool processes get SIGTERM too. billiard's
handler would make a pool process exit at once, killing its step ("worker lost"). So while a pool process runs a
task, SIGTERM does not end it: the first one is the same request as the main process's SIGUSR2, and is passed on to
the main process, so the whole worker shuts down as if only its main process had been signalled. A SIGTERM that
comes later than SECOND_SIGNAL_SECONDS after the shutdown began ends the grace period at once: the step is stopped
and its run recorded as after the grace period. That is how Celery's cold shutdown after a warm one (a second
Ctrl-C) reaches a pool process, and how a supervisor that insists does; a cold shutdown straight away (SIGQUIT)
is a first request, so its steps get the grace period. Between tasks a pool process keeps billiard's
handler: it holds nothing, and the main process must be able to end it with SIGTERM (billiard's terminate in a
cold shutdown) without its join waiting. SIGINT (a terminal's Ctrl-C) is ignored by pool processes, as billiard
sets it, and by what they start; the main process's warm shutdown then sends SIGUSR2.

The step's own processes run in a session of their own (workers/sandbox.py), which no process-group signal
reaches; and what a pool process would start helper processes for at its first step is done before the pool is
forked (prepare_pool), so no group signal kills those either.

Deploy tools must wait longer than the grace period before they SIGKILL (docker-compose: stop_grace_period).
"""

import logging
import os
import signal
import threading
import time

from billiard.process import active_children
from celery.signals import task_postrun, task_prerun
from django.conf import settings

logger = logging.getLogger(__name__)
# A signal sent to a process group reaches the main process and every pool process at once, and the main process's
# SIGUSR2 follows within milliseconds, in whichever order a busy pool process gets to handle them: signals this
# close together are one request. A second request, or Celery's cold shutdown, comes later.
SECOND_SIGNAL_SECONDS = 0.5
_requested_at: float | None = None  # time.monotonic() of the shutdown request in this process
_cut_short = False  # a second request ended the grace period
_main_pid: int | None = None  # in a pool process: the worker's main process
_held: object = None  # billiard's SIGTERM handler, while this pool process runs a task (ours is installed)
_received = 0  # SIGTERMs received while running a task, logged after it (not in the handler)


def request() -> None:
    global _requested_at
    if _requested_at is None:
        _requested_at = time.monotonic()


def requested() -> bool:
    return _requested_at is not None


def grace_expired() -> bool:
    if _requested_at is None:
        return False
    return _cut_short or time.monotonic() >= _requested_at + settings.EXECUTOR_SHUTDOWN_GRACE_SECONDS


def prepare_pool(**kwargs) -> None:
    """worker_init, in the main process before it forks its pool: find bwrap (`bwrap --version`) and build the
    seccomp filter (ctypes finds libseccomp by running ldconfig) here, once, for the pool processes to inherit.
    Otherwise each pool process would start those helpers at its first step, in the worker's process group, where
    a supervisor's SIGTERM would kill them and fail that step."""
    from .isolation import bwrap_binary, sandbox_enabled
    from .seccomp import step_filter

    if sandbox_enabled():
        try:
            bwrap_binary()
            step_filter()
        except Exception:  # the self-test (workers/tasks.py) says what is wrong, at start-up
            pass


def listen_in_pool_process(**kwargs) -> None:
    """worker_process_init: a pool process learns of the shutdown from its parent, and holds SIGTERM while it runs
    a task. billiard installs its own SIGTERM handler after this hook, so ours replaces it per task."""
    global _main_pid
    _main_pid = os.getppid()
    signal.signal(signal.SIGUSR2, lambda signum, frame: request())
    task_prerun.connect(hold_sigterm, dispatch_uid="executor.shutdown.hold")
    task_postrun.connect(release_sigterm, dispatch_uid="executor.shutdown.release")


def hold_sigterm(**kwargs) -> None:
    """task_prerun, in a pool process: SIGTERM becomes a shutdown request until the task ends."""
    global _held
    if _main_pid is None or _held is not None or threading.current_thread() is not threading.main_thread():
        return
    _held = signal.signal(signal.SIGTERM, _on_sigterm)


def release_sigterm(**kwargs) -> None:
    """task_postrun: billiard's handler again (an idle pool process may be ended with SIGTERM)."""
    global _held, _received
    if _held is not None:
        signal.signal(signal.SIGTERM, _held)
        _held = None
    if _received:
        outcome = "the grace period ended at once" if _cut_short else "taken as a shutdown request"
        logger.warning("pool process %s received SIGTERM while running a task: %s", os.getpid(), outcome)
        _received = 0


def _on_sigterm(signum, frame) -> None:
    """No logging here: the handler may interrupt a write to the same stream (release_sigterm logs)."""
    global _cut_short, _received
    _received += 1
    if _requested_at is None:
        request()
        if os.getppid() == _main_pid:  # the main process runs the warm shutdown and tells the other pool processes
            os.kill(_main_pid, signal.SIGTERM)
    elif time.monotonic() >= _requested_at + SECOND_SIGNAL_SECONDS:
        _cut_short = True


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
