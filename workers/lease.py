"""Claiming an execution, the fenced writes a claim allows, and the watch over a running execution.

A Celery message can arrive twice (redelivery after a crash or after the visibility timeout), so a message is
only a hint: the worker that wins the conditional UPDATE pending -> in_progress owns the execution and gets a
random lease token. Every later write filters on that token, so a worker that lost its lease (reaped after a
network split, say) updates zero rows and stops instead of overwriting someone else's results.

The token starts with this worker's INSTANCE, which the worker's main process shares with its pool processes:
the main process's heartbeat (workers/heartbeat.py) vouches only for leases its own pool holds, even when two
workers run under the same node name.

A database blink must not cost a run: the ledger writes here retry while PostgreSQL is unreachable (up to
FINAL_WRITE_RETRY_SECONDS, then the heartbeat or the reaper resolves the execution), and the watch lets the
running step go on for EXECUTOR_DATABASE_OUTAGE_SECONDS before it stops it.
"""

import logging
import threading
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from executions import transitions
from executions.models import Execution
from executor_project import database

from . import shutdown

logger = logging.getLogger(__name__)
# How often a running step looks for a Cancel (and for a lost lease): a cancelled step stops within about this long.
CANCEL_POLL_SECONDS = 1.0
# How long a step's final writes wait for an unreachable database before giving up.
FINAL_WRITE_RETRY_SECONDS = 600
# Made when the worker's main process imports this module (before it forks its pool), so the main process and
# its pool processes share it, and another worker, even one with the same node name, does not.
INSTANCE = uuid.uuid4().hex[:12]


class LeaseLost(Exception):
    """This worker no longer owns the execution: stop touching it."""


@dataclass(frozen=True)
class Lease:
    execution_id: str
    token: str

    def apply(self, transition, *args, **kwargs) -> None:
        """Make a transition (executions/transitions.py) of this lease's execution or of one of its steps:
        transition(execution_id, token, *args, **kwargs). LeaseLost when it changed no row."""
        if not self.applied(transition, *args, **kwargs):
            raise LeaseLost(self.execution_id)

    def applied(self, transition, *args, **kwargs) -> bool:
        """apply() for a transition with a condition of its own besides the lease: False when it changed no row."""
        return self._retrying(lambda: transition(self.execution_id, self.token, *args, **kwargs)) == 1

    def update_execution(self, **fields) -> None:
        fields.setdefault("heartbeat_at", timezone.now())
        mine = Execution.objects.filter(pk=self.execution_id, lease_owner=self.token)
        if self._retrying(lambda: mine.update(**fields)) != 1:
            raise LeaseLost(self.execution_id)

    def update_step(self, step_id: int, **fields) -> None:
        if self._retrying(lambda: self._step(step_id).update(**fields)) != 1:
            raise LeaseLost(self.execution_id)

    def try_update_step(self, step_id: int, **fields) -> None:
        """One attempt, for a write that the next one supersedes (live output): database errors propagate."""
        if self._step(step_id).update(**fields) != 1:
            raise LeaseLost(self.execution_id)

    def read(self, query):
        """query(): a read on the way to a final write, retried through a database blink like that write."""
        return self._retrying(query)

    def _step(self, step_id: int):
        return transitions.leased_step(self.execution_id, self.token, step_id)

    def _retrying(self, write):
        # Repeating these writes is harmless: each sets the same values again, still fenced by the token. (One
        # exception: a count_retry whose reply was lost counts one retry too many, erring towards fewer runs.)
        return database.retrying(write, seconds=FINAL_WRITE_RETRY_SECONDS, what=f"execution {self.execution_id}")


def new_token() -> str:
    return f"{INSTANCE}.{uuid.uuid4().hex}"


def claim(execution_id: str, worker_name: str, token: str | None = None) -> Lease | None:
    """Take a pending execution for this worker; None if it is gone, already taken, or finished.

    Pass the same `token` when trying again after a database error: a claim whose reply was lost is then
    recognised as this worker's own instead of being taken for someone else's."""
    token = token or new_token()
    rows = transitions.claim(execution_id, worker_name, token)
    if rows == 1 or Execution.objects.filter(pk=execution_id, lease_owner=token).exists():
        return Lease(str(execution_id), token)
    return None


class ExecutionWatch:
    """While an execution runs: notice a person's Cancel, a lost lease (LeaseLost), the end of this worker's
    shutdown grace period, and a database unreachable for too long, and stop the running step for them
    (`stop_reason` says which: "cancel", "shutdown" or "database").

    The heartbeat is not written here: the worker's main process writes it for every execution its pool runs
    (workers/heartbeat.py), so it also tells whether the process running the step is still alive.

    One per execution, ticked between steps too: its clock spans the steps, so a run of many short steps does not
    poll before every one of them (a Cancel still stops within about CANCEL_POLL_SECONDS).

    `tick()` is called from the sandbox's waiting loop (about every 0.1 s) in the worker's own thread, so it uses
    the worker's database connection: no extra thread or connection per step. While the database is unreachable
    the step goes on and each poll tries again; after EXECUTOR_DATABASE_OUTAGE_SECONDS without it the step is
    stopped ("database"), because a step whose outcome cannot be recorded should not run on unwatched.
    """

    def __init__(self, lease: Lease, read: Execution | None = None) -> None:
        """`read`: the execution as this worker has just read it under the lease. Its Cancel (or none) is then known
        and the first poll comes a period later: a run of one short step costs one query less. Without it the
        first tick looks."""
        self.lease = lease
        self.outage_seconds = settings.EXECUTOR_DATABASE_OUTAGE_SECONDS
        self.stop = threading.Event()
        self.stop_reason = ""
        self.next_poll = time.monotonic() + (CANCEL_POLL_SECONDS if read else 0)
        self.unreachable_since: float | None = None  # time.monotonic() of the first failed poll of an outage
        if read and read.cancel_requested_at:
            self._stop("cancel")

    @property
    def database_down(self) -> bool:
        return self.unreachable_since is not None

    @property
    def database_reason(self) -> str:
        return f"failed: the database was unreachable for {self.outage_seconds:g} s"

    def tick(self) -> None:
        if shutdown.grace_expired():
            self._stop("shutdown")
        now = time.monotonic()
        if now < self.next_poll:
            return
        self.next_poll = now + CANCEL_POLL_SECONDS
        mine = Execution.objects.filter(pk=self.lease.execution_id, lease_owner=self.lease.token)
        try:
            found = list(mine.values_list("cancel_requested_at", flat=True)[:1])
        except database.UNREACHABLE as exc:
            self.database_failed(exc)
            return
        self.database_back()
        if not found:
            raise LeaseLost(self.lease.execution_id)  # stops the step: the execution was reaped or taken over
        if found[0] is not None:
            self._stop("cancel")

    def database_failed(self, exc: BaseException) -> None:
        """A query of this run failed because the database is unreachable (also called by the live output)."""
        database.reset_connection()
        now = time.monotonic()
        if self.unreachable_since is None:
            self.unreachable_since = now
            logger.warning(
                "execution %s: the database is unreachable (%s); the step goes on, for up to %g s without it",
                self.lease.execution_id, database.describe(exc), self.outage_seconds,
            )  # fmt: skip
        elif now - self.unreachable_since >= self.outage_seconds:
            self._stop("database")

    def database_back(self) -> None:
        if self.unreachable_since is not None:
            logger.warning("execution %s: the database is reachable again after %.1f s",
                           self.lease.execution_id, time.monotonic() - self.unreachable_since)  # fmt: skip
            self.unreachable_since = None

    def _stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()
