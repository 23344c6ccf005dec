"""Crash recovery: nothing stays `in_progress` or `pending` forever (run every 30 s by beat, task executor.reap).

- An `in_progress` execution whose heartbeat is older than EXECUTOR_LEASE_SECONDS lost its worker (killed,
  out of memory, machine gone). User scripts are not safe to repeat, so by default it is failed, not re-run:
  the running step becomes `failed: worker lost`, the pending ones `skipped`. A package that allows retries
  after worker loss (bounded, Package.retries_after_worker_loss) gets the execution back as `pending` instead,
  published again, the interrupted step to run again. Either way its lease owner is replaced, which fences a
  worker that was only frozen: its late writes update nothing. The Celery message, redelivered later by Redis,
  finds the execution finished or claimed and is dropped.
- Pending executions whose message was lost are published again (workers/republish.py).
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from executions import catch_up
from executions.models import Execution, ExecutionStatus, ExecutionStep, StepStatus
from executions.services import enqueue

from . import republish

logger = logging.getLogger(__name__)
REAPED = "reaped"
FAILED, RETRIED = "failed", "retried"


@dataclass(frozen=True)
class ReapReport:
    failed: int
    retried: int
    republished: int
    caught_up: int = 0  # schedule fire times caught up or recorded as missed (executions/catch_up.py)


def reap(now: datetime | None = None) -> ReapReport:
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.EXECUTOR_LEASE_SECONDS)
    abandoned = Execution.objects.select_related("package").filter(
        status=ExecutionStatus.IN_PROGRESS, heartbeat_at__lt=cutoff
    )
    outcomes = [_resolve_abandoned(execution, cutoff, now) for execution in abandoned]
    republished = republish.republish_lost(now)
    caught_up = catch_up.catch_up_missed(now)
    return ReapReport(failed=outcomes.count(FAILED), retried=outcomes.count(RETRIED), republished=republished,
                      caught_up=caught_up)  # fmt: skip


def _resolve_abandoned(execution: Execution, cutoff: datetime, now: datetime) -> str | None:
    """Fail the abandoned execution, or retry it where its package allows; None if its worker came back."""
    lost = f"worker lost ({execution.worker_name or 'unknown worker'} stopped responding)"
    retry = execution.retries < execution.package.retries_after_worker_loss
    with transaction.atomic():
        # Conditional on the same owner and a still-stale heartbeat: a worker that comes back in between wins.
        taken = Execution.objects.filter(
            pk=execution.pk,
            status=ExecutionStatus.IN_PROGRESS,
            lease_owner=execution.lease_owner,
            heartbeat_at__lt=cutoff,
        )
        steps = ExecutionStep.objects.filter(execution=execution)
        if retry:
            attempt = f"retry {execution.retries + 1} of {execution.package.retries_after_worker_loss}"
            if not taken.update(status=ExecutionStatus.PENDING, status_reason=f"{lost}; {attempt}",
                                retries=F("retries") + 1, lease_owner="", worker_name=""):  # fmt: skip
                return None
            steps.filter(status=StepStatus.RUNNING).update(
                status=StepStatus.PENDING, status_reason=f"interrupted: {lost}; runs again ({attempt})"
            )
            transaction.on_commit(lambda: enqueue(execution))
        else:
            reason = f"failed: {lost}"
            if not taken.update(status=ExecutionStatus.FAILED, status_reason=reason, finished_at=now,
                                lease_owner=REAPED):  # fmt: skip
                return None
            steps.filter(status=StepStatus.RUNNING).update(
                status=StepStatus.FAILED, status_reason="failed: worker lost", finished_at=now
            )
            steps.filter(status=StepStatus.PENDING).update(
                status=StepStatus.SKIPPED, status_reason="skipped: earlier step failed"
            )
    if retry:
        logger.warning("execution %s: %s; running it again (%s)", execution.id, lost, attempt)
        return RETRIED
    logger.error("execution %s: failed: %s", execution.id, lost)
    return FAILED
