"""Publishing executions to the broker, and knowing afterwards which of them are really queued.

Every publish of `run_execution(id)` also sets a marker `executor:queued:<id>` in the broker's own Redis, and a
worker deletes it when it takes the message (workers/runner.py). The reaper (workers/republish.py) publishes
again a pending execution whose marker is missing: a Redis that restarted without its data lost the markers
with the queues, and a publish that failed never set one. A healthy backlog keeps its markers, so it is never
published twice. `enqueued_at` is set only after a publish succeeded and cleared when one failed, so a pending
execution with no `enqueued_at` is known not to be queued, whatever marker a previous attempt left behind.

When the broker refuses a publish (down, or full at maxmemory with noeviction) the publish fails within about a
second (CELERY_BROKER_TRANSPORT_OPTIONS, CELERY_TASK_PUBLISH_RETRY_POLICY) and the execution stays recorded as
pending, with `execution.queued = False`. Callers answer the truth and still succeed: the API answers 202 with
`"status": "pending"`, `"queued": false` and a reason, the admin says "recorded, queued as soon as the broker is
back". Not 503: the execution IS recorded and will run (the reaper publishes it once the broker takes writes
again), and a client retrying a 503 would start the run twice.
"""

import logging

from django.utils import timezone

from .models import Execution, ExecutionStatus, TriggerType

logger = logging.getLogger(__name__)

MARKER_PREFIX = "executor:queued:"
# Longer than any sane backlog wait; past it, an execution still queued is published once more (harmless).
MARKER_TTL_SECONDS = 7 * 24 * 3600
NOT_QUEUED_REASON = "recorded; queued as soon as the broker is back"


def enqueue(execution: Execution) -> bool:
    """Publish one execution; True if the broker took it. `execution.queued` says the same."""
    return enqueue_many([execution]) == 1


def enqueue_many(executions: list[Execution]) -> int:
    """Publish the executions with one producer and one Redis round trip; returns how many were published.

    All or none: a batch the broker refused is recorded as not queued (the reaper publishes it again later;
    should part of it have gone through, a duplicate message is harmless since only one worker can claim).
    """
    if not executions:
        return 0
    # Imported here: the web process needs the task's signature only, not the worker machinery.
    from workers.tasks import run_execution

    ids = [str(execution.id) for execution in executions]
    try:
        with run_execution.app.producer_or_acquire() as producer:
            if len(executions) == 1:  # nothing to batch
                run_execution.apply_async(args=ids, queue=lane_for(executions[0]))
            else:
                with producer.batch():
                    for execution in executions:
                        run_execution.apply_async(
                            args=[str(execution.id)], queue=lane_for(execution), producer=producer
                        )
            _mark(producer, ids)
    except Exception as exc:
        # One line, no traceback; the broker URL (and its password) is not in redis' or kombu's error texts.
        logger.warning(
            "could not publish to the broker (%s: %s); pending until the reaper publishes them: %s",
            type(exc).__name__,
            exc,
            ", ".join(ids),
        )
        _record(executions, queued=False)
        return 0
    _record(executions, queued=True)
    return len(executions)


def _mark(producer, ids: list[str]) -> None:
    """Set the markers after the messages went out; failing here only costs a duplicate message later."""
    try:
        with producer.channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.set(MARKER_PREFIX + execution_id, 1, ex=MARKER_TTL_SECONDS)
            pipe.execute()
    except Exception as exc:
        logger.warning("published %d execution(s) but could not mark them queued (%s)", len(ids), type(exc).__name__)


def _record(executions: list[Execution], *, queued: bool) -> None:
    # Only while pending: a worker that already claimed one must not have its row touched.
    now = timezone.now() if queued else None
    Execution.objects.filter(pk__in=[e.pk for e in executions], status=ExecutionStatus.PENDING).update(enqueued_at=now)
    for execution in executions:
        execution.queued = queued
        execution.enqueued_at = now


def forget(execution_id: str) -> None:
    """A worker took the message: the execution is no longer waiting in a queue (called before the claim)."""
    from workers.tasks import run_execution

    try:
        with run_execution.app.producer_or_acquire() as producer, producer.channel.conn_or_acquire() as client:
            client.delete(MARKER_PREFIX + str(execution_id))
    except Exception as exc:
        # Harmless if it stays: the execution is claimed next, and the reaper looks at pending ones only.
        logger.warning("execution %s: could not clear its queued marker (%s)", execution_id, type(exc).__name__)


def queued_ids(ids: list[str]) -> set[str]:
    """Of these execution ids, those whose marker is set (one MGET); raises if the broker cannot be read."""
    from workers.tasks import run_execution

    if not ids:
        return set()
    with run_execution.app.producer_or_acquire() as producer, producer.channel.conn_or_acquire() as client:
        values = client.mget([MARKER_PREFIX + execution_id for execution_id in ids])
    return {execution_id for execution_id, value in zip(ids, values, strict=True) if value is not None}


def lane_for(execution: Execution) -> str:
    """Scheduled runs have their own lane so a burst of manual runs cannot delay a schedule, and vice versa."""
    if execution.trigger_type == TriggerType.SCHEDULED:
        return "scheduled"
    return execution.package.lane
