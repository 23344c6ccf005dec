"""Crash recovery: nothing stays `in_progress` or `pending` forever (run every 30 s by beat, task executor.reap).

- An `in_progress` execution whose heartbeat is older than EXECUTOR_LEASE_SECONDS lost its worker (killed,
  out of memory, machine gone). User scripts are not safe to repeat, so it is failed, not re-run: the running
  step becomes `failed: worker lost`, the pending ones `skipped`. Its lease owner is replaced, which fences a
  worker that was only frozen: its late writes update nothing. The Celery message, redelivered later by Redis,
  finds the execution finished and is dropped.
- A `pending` execution whose message was published more than EXECUTOR_REPUBLISH_AFTER_SECONDS ago, or never
  (the broker was down), is published again. A duplicate message is harmless: only one worker can claim.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from executions.models import Execution, ExecutionStatus, ExecutionStep, StepStatus
from executions.services import enqueue

logger = logging.getLogger(__name__)
REAPED = "reaped"


@dataclass(frozen=True)
class ReapReport:
    failed: int
    republished: int


def reap(now: datetime | None = None) -> ReapReport:
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.EXECUTOR_LEASE_SECONDS)
    abandoned = Execution.objects.filter(status=ExecutionStatus.IN_PROGRESS, heartbeat_at__lt=cutoff)
    failed = sum(_fail_abandoned(execution, cutoff, now) for execution in abandoned)
    stale = now - timedelta(seconds=settings.EXECUTOR_REPUBLISH_AFTER_SECONDS)
    lost = Execution.objects.select_related("package").filter(
        Q(enqueued_at__lt=stale) | Q(enqueued_at__isnull=True, created_at__lt=stale), status=ExecutionStatus.PENDING
    )
    republished = 0
    for execution in lost:
        logger.warning("execution %s still pending since %s: publishing it again", execution.id, execution.created_at)
        enqueue(execution)
        republished += 1
    return ReapReport(failed=failed, republished=republished)


def _fail_abandoned(execution: Execution, cutoff: datetime, now: datetime) -> bool:
    reason = f"failed: worker lost ({execution.worker_name or 'unknown worker'} stopped responding)"
    with transaction.atomic():
        # Conditional on the same owner and a still-stale heartbeat: a worker that comes back in between wins.
        taken = Execution.objects.filter(
            pk=execution.pk,
            status=ExecutionStatus.IN_PROGRESS,
            lease_owner=execution.lease_owner,
            heartbeat_at__lt=cutoff,
        ).update(status=ExecutionStatus.FAILED, status_reason=reason, finished_at=now, lease_owner=REAPED)
        if not taken:
            return False
        steps = ExecutionStep.objects.filter(execution=execution)
        steps.filter(status=StepStatus.RUNNING).update(
            status=StepStatus.FAILED, status_reason="failed: worker lost", finished_at=now
        )
        steps.filter(status=StepStatus.PENDING).update(
            status=StepStatus.SKIPPED, status_reason="skipped: earlier step failed"
        )
    logger.error("execution %s: %s", execution.id, reason)
    return True
