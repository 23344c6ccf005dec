"""Claiming an execution, and the fenced writes a claim allows.

A Celery message can arrive twice (redelivery after a crash or after the visibility timeout), so a message is
only a hint: the worker that wins the conditional UPDATE pending -> in_progress owns the execution and gets a
random lease token. Every later write filters on that token, so a worker that lost its lease (a zombie after a
network split, say) updates zero rows and stops instead of overwriting someone else's results.
"""

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from executions.models import Execution, ExecutionStatus, ExecutionStep

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
        started_at=now,
        heartbeat_at=now,
    )
    return Lease(str(execution_id), token) if rows == 1 else None


@contextmanager
def keep_alive(lease: Lease, interval_seconds: float) -> Iterator[threading.Event]:
    """While the block runs (a step's process): refresh the heartbeat every `interval_seconds`, and watch for a
    person's Cancel. Yields an Event that is set once a cancel was requested.

    The reaper fails executions whose heartbeat is older than EXECUTOR_LEASE_SECONDS, so the heartbeat is what
    tells a long step from a dead worker. The thread has its own database connection and closes it when done.
    """
    stop, cancelled = threading.Event(), threading.Event()

    def watch() -> None:
        next_beat = time.monotonic() + interval_seconds
        try:
            while not stop.wait(min(CANCEL_POLL_SECONDS, interval_seconds)):
                mine = Execution.objects.filter(pk=lease.execution_id, lease_owner=lease.token)
                if mine.filter(cancel_requested_at__isnull=False).exists():
                    cancelled.set()
                if time.monotonic() >= next_beat:
                    next_beat += interval_seconds
                    if not mine.update(heartbeat_at=timezone.now()):
                        return  # lease lost: the step loop finds out at its next fenced write
        finally:
            connection.close()

    thread = threading.Thread(target=watch, name=f"watch-{lease.execution_id[:8]}", daemon=True)
    thread.start()
    try:
        yield cancelled
    finally:
        stop.set()
        thread.join()
