"""Claiming an execution, and the fenced writes a claim allows.

A Celery message can arrive twice (redelivery after a crash or after the visibility timeout), so a message is
only a hint: the worker that wins the conditional UPDATE pending -> in_progress owns the execution and gets a
random lease token. Every later write filters on that token, so a worker that lost its lease (a zombie after a
network split, say) updates zero rows and stops instead of overwriting someone else's results.
"""

import threading
import time
import uuid
from dataclasses import dataclass

from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from executions.models import Execution, ExecutionStatus, ExecutionStep

from . import shutdown

# How often a running step looks for a Cancel: a cancelled step stops within about this long.
CANCEL_POLL_SECONDS = 1.0


class LeaseLost(Exception):
    """This worker no longer owns the execution: stop touching it."""


@dataclass(frozen=True)
class Lease:
    execution_id: str
    token: str

    def update_execution(self, **fields) -> None:
        fields.setdefault("heartbeat_at", timezone.now())
        rows = Execution.objects.filter(pk=self.execution_id, lease_owner=self.token).update(**fields)
        if rows != 1:
            raise LeaseLost(self.execution_id)

    def update_step(self, step_id: int, **fields) -> None:
        rows = ExecutionStep.objects.filter(
            pk=step_id, execution_id=self.execution_id, execution__lease_owner=self.token
        ).update(**fields)
        if rows != 1:
            raise LeaseLost(self.execution_id)


def claim(execution_id: str, worker_name: str) -> Lease | None:
    """Take a pending execution for this worker; None if it is gone, already taken, or finished."""
    token = uuid.uuid4().hex
    now = timezone.now()
    rows = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.PENDING).update(
        status=ExecutionStatus.IN_PROGRESS,
        worker_name=worker_name[:200],
        lease_owner=token,
        status_reason="",
        started_at=Coalesce(F("started_at"), Value(now)),  # kept when another worker handed the run over
        heartbeat_at=now,
    )
    return Lease(str(execution_id), token) if rows == 1 else None


class ExecutionWatch:
    """While an execution runs: refresh the heartbeat every `heartbeat_seconds`, notice a person's Cancel, and stop
    the running step when this worker is shutting down and the grace period is over (`stop_reason` says which).

    One per execution, ticked between steps too: its clocks span the steps, so a run of many short steps neither
    writes a heartbeat nor polls for a Cancel before every one of them (a Cancel still stops within about
    CANCEL_POLL_SECONDS).

    `tick()` is called from the sandbox's waiting loop (about every 0.1 s) in the worker's own thread, so it uses
    the worker's database connection: no extra thread or connection per step. The reaper fails executions whose
    heartbeat is older than EXECUTOR_LEASE_SECONDS, so the heartbeat is what tells a long step from a dead worker.
    """

    def __init__(self, lease: Lease, heartbeat_seconds: float) -> None:
        self.lease = lease
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = min(CANCEL_POLL_SECONDS, heartbeat_seconds)
        self.stop = threading.Event()
        self.stop_reason = ""  # "cancel" or "shutdown"
        now = time.monotonic()
        self.next_poll, self.next_beat = now, now + heartbeat_seconds  # the first tick looks for a Cancel

    def tick(self) -> None:
        if shutdown.grace_expired():
            self._stop("shutdown")
        now = time.monotonic()
        if now < self.next_poll:
            return
        self.next_poll = now + self.poll_seconds
        mine = Execution.objects.filter(pk=self.lease.execution_id, lease_owner=self.lease.token)
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat_seconds
            if not mine.update(heartbeat_at=timezone.now()):
                raise LeaseLost(self.lease.execution_id)  # stops the step: someone else owns the execution
        if mine.filter(cancel_requested_at__isnull=False).exists():
            self._stop("cancel")

    def _stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()
