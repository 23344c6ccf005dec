"""Publishing again the pending executions whose message is lost, and only those (called by workers/reaper.py).

Judged by what is in Redis, not by age (executions/queueing.py keeps a marker per queued execution):

- never published: no `enqueued_at` (the broker refused the publish, or the process died before it, for the runs
  that are stamped only once published);
- marker missing: Redis restarted without its data (the queues went with the markers), the process died between
  the commit and the publish of an event's runs (stamped at their INSERT), or the execution went back to pending
  after a claim (which deletes the marker) and its new message never went out. Marker and message are written in
  one MULTI/EXEC, so a marker is never left without its message;
- reserved by a worker that never started it: the message sits in kombu's `unacked` hash until the visibility
  timeout (hours); one delivered more than EXECUTOR_REPUBLISH_AFTER_SECONDS ago, for an execution still pending
  and not published since, is published again and its reservation dropped (a live worker starts what it reserves
  at once, so it is a dead worker's).

Executions younger than GRACE_SECONDS are left alone: their publish may be under way right now. A healthy backlog
(pending, marked) is never touched, however old. A duplicate message is harmless: only one worker can claim.
"""

import base64
import json
import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q

from executions.models import Execution, ExecutionStatus
from executions.queueing import enqueue_many, queued_ids
from executor_project import metrics
from executor_project.publishing import broker_client

logger = logging.getLogger(__name__)
GRACE_SECONDS = 5
BATCH = 1000  # ids per MGET and per publish


def republish_lost(now: datetime) -> int:
    """Publish again the pending executions whose message is lost; returns how many were published."""
    grace = now - timedelta(seconds=GRACE_SECONDS)
    candidates = (
        Execution.objects.filter(status=ExecutionStatus.PENDING, created_at__lt=grace)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=grace))
        .order_by("created_at")
        .values_list("pk", "enqueued_at")
    )
    rows = [(str(pk), enqueued_at) for pk, enqueued_at in candidates]
    if not rows:
        return 0
    try:
        with broker_client() as client:
            lost, reservations = _lost(client, rows, now)
    except Exception as exc:
        # The broker cannot be read, so nothing could be published either: the next cycle tries again.
        logger.warning("could not check the broker for lost messages (%s: %s)", type(exc).__name__, exc)
        return 0
    published = _publish(lost)
    if published:
        metrics.inc(metrics.REAPER_ACTIONS, len(published), action="republished")
    _drop_reservations([tag for pk, tags in reservations.items() if pk in published for tag in tags])
    return len(published)


def _lost(client, rows: list[tuple[str, datetime | None]], now: datetime) -> tuple[list[str], dict[str, list]]:
    """The ids to publish again, and the stale reservations (delivery tags by id) among them."""
    never = [pk for pk, enqueued_at in rows if enqueued_at is None]
    published = [pk for pk, enqueued_at in rows if enqueued_at is not None]
    unmarked = []
    for start in range(0, len(published), BATCH):
        batch = published[start : start + BATCH]
        unmarked += sorted(set(batch) - queued_ids(client, batch))
    stale = now - timedelta(seconds=settings.EXECUTOR_REPUBLISH_AFTER_SECONDS)
    reserved = _reserved_before(client, stale.timestamp())
    stuck = [pk for pk, enqueued_at in rows if enqueued_at is not None and enqueued_at < stale and pk in reserved]
    return list(dict.fromkeys(never + unmarked + stuck)), {pk: reserved[pk] for pk in stuck}


def _unacked_keys() -> tuple[str, str]:
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    return options.get("unacked_index_key", "unacked_index"), options.get("unacked_key", "unacked")


def _reserved_before(client, timestamp: float) -> dict[str, list]:
    """Delivery tags by execution id of the messages a worker reserved before `timestamp` and has not acked since
    (kombu's `unacked` hash and its index). Small: at most prefetch x slots per worker."""
    index_key, hash_key = _unacked_keys()
    tags = client.zrangebyscore(index_key, "-inf", timestamp)
    reserved = {}
    for tag, raw in zip(tags, client.hmget(hash_key, tags) if tags else [], strict=True):
        execution_id = _execution_id(raw)
        if execution_id:
            reserved.setdefault(execution_id, []).append(tag)
    return reserved


def _drop_reservations(tags: list) -> None:
    """Forget the stale reservations of what was just published again: kombu would otherwise deliver each once more
    after the visibility timeout, and the next cycles would publish it again and again while no worker runs.
    A worker that was alive after all acks or rejects nothing then; the new message stands in."""
    if not tags:
        return
    index_key, hash_key = _unacked_keys()
    try:
        with broker_client() as client, client.pipeline(transaction=False) as pipe:
            pipe.zrem(index_key, *tags).hdel(hash_key, *tags).execute()
    except Exception as exc:
        logger.warning("could not drop %d stale reservation(s) (%s)", len(tags), type(exc).__name__)


def _execution_id(raw: bytes | None) -> str | None:
    """The execution id of a stored run_execution message ([message, exchange, routing key]); None for others."""
    try:
        message = json.loads(raw)[0]
        if message["headers"].get("task") != "executor.run_execution":
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (TypeError, ValueError, KeyError, IndexError):
        return None


def _publish(lost: list[str]) -> set[str]:
    published = set()
    for start in range(0, len(lost), BATCH):
        ids = lost[start : start + BATCH]
        executions = list(
            Execution.objects.select_related("package").filter(pk__in=ids, status=ExecutionStatus.PENDING)
        )
        started = time.monotonic()
        enqueue_many(executions)
        published.update(str(execution.pk) for execution in executions if execution.queued)
        logger.warning(
            "%d pending execution(s) had no message queued: published again in %.2f s (%s%s)",
            len(executions),
            time.monotonic() - started,
            ", ".join(ids[:5]),
            ", ..." if len(ids) > 5 else "",
        )
    return published
