"""Publishing executions to the broker, and knowing afterwards which of them are really queued.

Every publish of `executor.run_execution(id)` (by name, through executor_project/publishing.py: the web side never
imports the worker) sets a marker `executor:queued:<id>` in the broker's own Redis, in the same MULTI/EXEC as the
message: a marker is there if and only if its message was published (and not claimed since: the worker that claims
the execution deletes it, workers/runner.py). No claim can come before its marker, so no late marker hides an
execution that went back to pending. The reaper (workers/republish.py) publishes again a pending execution whose
marker is missing: a Redis that restarted without its data lost the markers with the queues, and a crash between
the commit and the publish never set one. A healthy backlog keeps its markers, so it is never published twice.

`enqueued_at` says when the execution was last handed to the broker, and is cleared when the broker refused it, so
a pending execution without it is known not to be queued. An event's executions carry it from their INSERT
(executions/events.py: `stamped`), which saves their UPDATE: should the process die before the publish, the missing
marker tells the reaper.

When the broker refuses a publish (down, or full at maxmemory with noeviction) it fails within about a second
(CELERY_BROKER_TRANSPORT_OPTIONS) and the execution stays recorded as pending with `execution.queued = False`.
Callers tell the truth and still succeed: the API answers 202 with `"status": "pending"`, `"queued": false` and
NOT_QUEUED_REASON; the admin and `run_package` say "recorded, queued as soon as the broker is back". Not 503: the
execution IS recorded and will run (the reaper publishes it once Redis takes writes again), whereas a client
retrying a 503 would start the run twice.
"""

import logging

from django.utils import timezone

from executor_project import publishing

from .models import Execution, ExecutionStatus, TriggerType

logger = logging.getLogger(__name__)

RUN_TASK = "executor.run_execution"  # workers/tasks.py; published by name, never imported from here
MARKER_PREFIX = "executor:queued:"
# Longer than any sane backlog wait; past it, an execution still queued is published once more (harmless).
MARKER_TTL_SECONDS = 7 * 24 * 3600
NOT_QUEUED_REASON = "recorded; queued as soon as the broker is back"
# Every queue a worker consumes (`celery worker -Q`): the runs' lanes (Package.lane, `scheduled`: lane_for) and
# `maintenance` (the reaper, Git syncs). /metrics reports each one's depth (executions/metrics_samples.py).
LANES = ("priority", "default", "slow", "scheduled", "maintenance")


def enqueue(execution: Execution) -> bool:
    """Publish one execution; True if the broker took it. `execution.queued` says the same."""
    return enqueue_many([execution]) == 1


def enqueue_many(executions: list[Execution], *, stamped: bool = False) -> int:
    """Publish the executions and their markers in one Redis transaction; returns how many were published.

    All or none: a batch the broker refused is recorded as not queued (the reaper publishes it again later).
    `stamped`: their rows were inserted with `enqueued_at` already set, so only a refusal is written.
    """
    if not executions:
        return 0
    ids = [str(execution.id) for execution in executions]
    try:
        with publishing.transaction() as batch:
            for execution, execution_id in zip(executions, ids, strict=True):
                batch.publish(RUN_TASK, [execution_id], queue=lane_for(execution))
                batch.pipe.set(MARKER_PREFIX + execution_id, 1, ex=MARKER_TTL_SECONDS)
            batch.execute()
    except Exception as exc:
        # One line, no traceback; redis' and kombu's error texts do not contain the URL or its password.
        logger.warning(
            "could not publish to the broker (%s: %s); pending until the reaper publishes them: %s",
            type(exc).__name__,
            exc,
            ", ".join(ids),
        )
        _record(executions, queued=False)
        return 0
    if stamped:
        for execution in executions:
            execution.queued = True
    else:
        _record(executions, queued=True)
    return len(executions)


def _record(executions: list[Execution], *, queued: bool) -> None:
    # Only while pending: a worker that already claimed one must not have its row touched.
    now = timezone.now() if queued else None
    Execution.objects.filter(pk__in=[e.pk for e in executions], status=ExecutionStatus.PENDING).update(enqueued_at=now)
    for execution in executions:
        execution.queued = queued
        execution.enqueued_at = now


def forget(execution_id: str) -> None:
    """A worker claimed the execution: it waits in no queue any more (workers/runner.py, right after the claim)."""
    try:
        with publishing.broker_client() as client:
            client.delete(MARKER_PREFIX + str(execution_id))
    except Exception as exc:
        # Harmless if it stays: the reaper looks at pending executions only, and the marker expires.
        logger.warning("execution %s: could not clear its queued marker (%s)", execution_id, type(exc).__name__)


def queued_ids(client, ids: list[str]) -> set[str]:
    """Of these execution ids, those whose marker is set (one MGET)."""
    if not ids:
        return set()
    values = client.mget([MARKER_PREFIX + execution_id for execution_id in ids])
    return {execution_id for execution_id, value in zip(ids, values, strict=True) if value is not None}


def lane_for(execution: Execution) -> str:
    """Scheduled runs have their own lane so a burst of manual runs cannot delay a schedule, and vice versa."""
    if execution.trigger_type == TriggerType.SCHEDULED:
        return "scheduled"
    return execution.package.lane


def admin_message(execution: Execution, subject: str, detail: str = "") -> tuple[int, str]:
    """What the admin says after a Run, Re-run or run form, as (message level, text): `subject` started, or only
    recorded while the broker is away (a warning: it runs once the reaper has published it)."""
    from django.contrib import messages

    if getattr(execution, "queued", True):  # unknown (never enqueued here) reads as started, as before
        return messages.SUCCESS, f"{subject} started{detail}."
    return messages.WARNING, f"{subject} recorded, queued as soon as the broker is back{detail}."


def run_state(execution: Execution) -> dict:
    """An execution's entry in an API answer: its status, whether its message is queued, and if not, why."""
    queued = getattr(execution, "queued", None)
    if queued is None:  # not published by this request (a repeated delivery): what the ledger says
        queued = execution.status != ExecutionStatus.PENDING or execution.enqueued_at is not None
    return {
        "execution_id": execution.id,
        "status": execution.status,
        "queued": queued,
        "reason": None if queued else NOT_QUEUED_REASON,
    }
