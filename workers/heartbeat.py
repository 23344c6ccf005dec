"""The heartbeat: a worker's main process vouches for the executions its pool is running.

A thread in the main process of every `celery worker` (started by worker_ready: prefork and solo pools alike)
beats every EXECUTOR_HEARTBEAT_SECONDS. Each beat reads the in-progress executions this worker claimed (its node
name, and leases of this worker's INSTANCE, workers/lease.py), THEN looks at the run_execution requests Celery
has in hand (celery.worker.state.requests). In that order, an execution claimed by a request that has ended is
never taken for a live one:

- claimed and in hand: one UPDATE refreshes the heartbeat of all of them. The reaper (workers/reaper.py) resolves
  executions whose heartbeat is older than the lease: that is how a dead host is found.
- claimed but no longer in hand: the pool process running it died (Celery reports the WorkerLostError in this
  process within half a second, see _check_pool_often; ExecutionRequest below wakes the thread at once and says
  how the process ended), or its task ended without finishing it. It is resolved right away with the reaper's
  rules (failed, or run again if the package allows), on the condition that it is still in progress under the
  same lease, so a run that finished between the two reads is left alone. Without a WorkerLostError it must be
  seen so on two beats in a row: one reading of Celery's bookkeeping is not enough to fail a run on.

Every EXECUTOR_REAPER_SECONDS the thread also looks for executions whose whole worker died (reaper.reap_stale):
the executor.reap task does too, but it needs beat and a free slot on the maintenance lane, and a busy worker has
none; any live worker's main process always has this thread.

Each beat also writes the worker's liveness entry in Redis (workers/worker_liveness.py: its lanes, slots, running
steps, and the proof that its consumer takes messages), read by `manage.py check_health worker` and the admin
dashboard; it is written even while the database is unreachable, and a Redis error never stops a beat.

The thread has its own database connection. While the database is unreachable it logs once, tries again every
second, and beats at once when the database is back; it never dies of an error.
"""

import logging
import re
import threading
import time
import uuid

from celery.exceptions import WorkerLostError
from celery.worker import state as worker_state
from celery.worker.request import Request
from django.conf import settings
from django.db import connection
from django.utils import timezone

from executions.models import Execution, ExecutionStatus
from executor_project import database

from . import lease, reaper, worker_liveness

logger = logging.getLogger(__name__)
RUN_EXECUTION = "executor.run_execution"
RETRY_SECONDS = 1.0  # while the database is unreachable
POOL_CHECK_SECONDS = 0.5

_wake = threading.Event()
_lost_lock = threading.Lock()
_lost: dict[str, str] = {}  # execution id -> how the pool process running it ended, until the next beat
_started: "Heartbeat | None" = None


class ExecutionRequest(Request):
    """run_execution's request in the worker's main process (Task.Request): when its pool process dies, note how
    and wake the heartbeat, which resolves the execution now instead of after a lease."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        try:
            return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        finally:
            exc = getattr(exc_info.exception, "exc", exc_info.exception)  # (ExceptionWithTraceback wraps it)
            if isinstance(exc, WorkerLostError | SystemExit) and self.args:
                note_lost(_canonical(self.args[0]), how_it_ended(exc))


def note_lost(execution_id: str, how: str) -> None:
    with _lost_lock:
        _lost[execution_id] = how
    _wake.set()


def how_it_ended(exc: BaseException) -> str:
    """From billiard's "Worker exited prematurely: signal 9 (SIGKILL) Job: 3." to "was killed by SIGKILL"."""
    text = str(exc)
    if match := re.search(r"signal \d+ \((SIG\w+)\)", text):
        return f"was killed by {match.group(1)}"
    if match := re.search(r"exitcode (-?\d+)", text):
        return f"exited with code {match.group(1)}"
    return "ended unexpectedly"


def _take_lost(claimed: dict[str, str]) -> dict[str, str]:
    """The noted losses of executions this worker still holds. Even if a redelivered copy of the message is in
    hand again by now: it cannot have claimed the execution, which is still in progress."""
    with _lost_lock:
        lost = {pk: how for pk, how in _lost.items() if pk in claimed}
        _lost.clear()  # the others finished or were resolved meanwhile
    return lost


def start(consumer) -> None:
    """worker_ready (sender: the worker's consumer): start this process's heartbeat, once."""
    global _started
    if _started is None:
        _check_pool_often(consumer)
        _started = Heartbeat(consumer.hostname, reporter=worker_liveness.watch(consumer))
        _started.start()


def _check_pool_often(consumer) -> None:
    """Celery notices a dead pool process when its exit wakes the event loop, except for the processes the pool
    started with: their exits it only finds in its check every 5 s (measured 1.2 to 4.7 s late). Check twice a
    second, in the event loop, as Celery's own check does."""
    hub = getattr(consumer.controller, "hub", None)
    maintain = getattr(getattr(consumer.pool, "_pool", None), "maintain_pool", None)
    if hub is not None and maintain is not None:  # prefork; a solo worker has no pool processes
        hub.call_repeatedly(POOL_CHECK_SECONDS, maintain)


def running_execution_ids() -> set[str]:
    """The executions of the run_execution requests this worker has in hand, reserved or running."""
    requests = tuple(worker_state.requests.values())  # one C-level copy: the main thread adds and removes
    return {_canonical(request.args[0]) for request in requests if request.name == RUN_EXECUTION and request.args}


def _canonical(execution_id) -> str:
    """As the database spells it: a message may carry the id in another form the task accepts (upper case)."""
    try:
        return str(uuid.UUID(str(execution_id)))
    except ValueError:
        return str(execution_id)  # dropped by the task, never claimed


class Heartbeat(threading.Thread):
    def __init__(self, worker_name: str, reporter: "worker_liveness.Reporter | None" = None) -> None:
        super().__init__(name="executor-heartbeat", daemon=True)
        self.worker_name = worker_name
        self.reporter = reporter
        self.suspects: dict[str, str] = {}  # claimed but not in hand at the last beat: id -> lease token
        self.unreachable_since: float | None = None
        self.halted = threading.Event()  # a worker never halts it (the process's end does); tests do
        self.next_reap = time.monotonic()

    def run(self) -> None:
        logger.info("heartbeat of %s: every %s s", self.worker_name, settings.EXECUTOR_HEARTBEAT_SECONDS)
        while not self.halted.is_set():
            _wake.clear()  # before the beat: a loss noted during it wakes the next one at once
            self.beat_safely()
            if self.reporter is not None:
                self.reporter.report_safely()
            _wake.wait(settings.EXECUTOR_HEARTBEAT_SECONDS if self.unreachable_since is None else RETRY_SECONDS)
        connection.close()

    def halt(self) -> None:
        self.halted.set()
        _wake.set()
        self.join()

    def beat_safely(self) -> None:
        try:
            self.beat()
            self.reap_when_due()
        except database.UNREACHABLE as exc:
            database.reset_connection()
            if self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
                logger.warning("heartbeat: the database is unreachable (%s); trying again every %s s",
                               database.describe(exc), RETRY_SECONDS)  # fmt: skip
            return
        except Exception:
            logger.exception("heartbeat: beat failed")  # the next one tries again
            database.reset_connection()
            return
        if self.unreachable_since is not None:
            logger.warning("heartbeat: the database is reachable again after %.1f s",
                           time.monotonic() - self.unreachable_since)  # fmt: skip
            self.unreachable_since = None

    def beat(self) -> None:
        claimed = dict(
            Execution.objects.filter(
                status=ExecutionStatus.IN_PROGRESS,
                worker_name=self.worker_name[:200],
                lease_owner__startswith=f"{lease.INSTANCE}.",
            ).values_list("id", "lease_owner")
        )
        claimed = {str(pk): token for pk, token in claimed.items()}
        in_hand = running_execution_ids()  # after the read above, on purpose (see the module's docstring)
        lost = _take_lost(claimed)
        alive = [pk for pk in claimed if pk in in_hand and pk not in lost]
        if alive:
            Execution.objects.filter(pk__in=alive, status=ExecutionStatus.IN_PROGRESS).update(
                heartbeat_at=timezone.now()
            )
        orphans = {pk: token for pk, token in claimed.items() if pk not in alive}
        for pk, token in orphans.items():
            if pk in lost:
                self.resolve(pk, token, f"its worker process on {self.worker_name} {lost[pk]}")
            elif self.suspects.get(pk) == token:
                self.resolve(pk, token, f"its task on {self.worker_name} ended without finishing it")
        self.suspects = {pk: token for pk, token in orphans.items() if pk not in lost}

    def reap_when_due(self) -> None:
        if time.monotonic() >= self.next_reap:
            self.next_reap = time.monotonic() + settings.EXECUTOR_REAPER_SECONDS
            reaper.reap_stale(timezone.now())

    def resolve(self, execution_id: str, token: str, what_happened: str) -> None:
        execution = Execution.objects.select_related("package").filter(pk=execution_id, lease_owner=token).first()
        if execution is not None:
            reaper.resolve_lost(execution, what_happened, timezone.now())
