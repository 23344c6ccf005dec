"""Crash recovery: nothing stays `in_progress` or `pending` forever (task executor.reap, every
EXECUTOR_REAPER_SECONDS from beat on the `maintenance` lane; every worker's heartbeat thread also runs
`reap_stale`, which needs neither beat nor a free slot).

- Lost workers. Every worker's main process refreshes the heartbeat of the executions its pool runs every
  EXECUTOR_HEARTBEAT_SECONDS (workers/heartbeat.py), and resolves at once those whose pool process died. An
  `in_progress` execution whose heartbeat is older than EXECUTOR_LEASE_SECONDS lost its whole worker (killed, out
  of memory, machine gone): `failed: worker lost (its worker <name> stopped heartbeating)`. Worst case from the
  death to the failure: lease + reaper period. User scripts are not safe to repeat, so by default it is failed,
  not re-run: the running step fails with the same reason, the pending ones are `skipped`. A package that allows
  retries after worker loss (bounded, Package.retries_after_worker_loss) gets the execution back as `pending`
  instead, published again, the interrupted step to run again. Either way its lease owner is replaced, which
  fences a worker that was only frozen: its late writes update nothing and its watch stops the step. The Celery
  message, redelivered later by Redis, finds the execution finished or claimed and is dropped.
- Database outages are not worker deaths. While PostgreSQL is down no heartbeat can be written, and the reaper
  cannot run either; a live worker's heartbeat is then up to EXECUTOR_HEARTBEAT_SECONDS plus the outage old. So
  when the reaper's previous run is longer ago than pause_seconds() (lease - heartbeat - 1 s, as the heartbeat
  retries every second), an outage may hide in that pause, and workers get one lease to beat again before
  anything is reaped (ReaperClock keeps the times across processes). A pause of every reaper (beat, the
  maintenance lane and every worker's heartbeat thread) costs the same one-lease delay: later, never wrong.
- Pending executions whose message was lost are published again (workers/republish.py).
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from executions import catch_up, later_runs, transitions
from executions.models import Execution, ExecutionStatus
from executions.services import enqueue
from executor_project import metrics
from packages import staged_uploads

from . import republish, workspace_sweep
from .models import ReaperClock

logger = logging.getLogger(__name__)
FAILED, RETRIED = "failed", "retried"


@dataclass(frozen=True)
class ReapReport:
    failed: int
    retried: int
    republished: int
    caught_up: int = 0  # schedule fire times caught up or recorded as missed (executions/catch_up.py)


def reap(now: datetime | None = None) -> ReapReport:
    now = now or timezone.now()
    failed, retried = reap_stale(now)
    workspace_sweep.sweep()  # the workspaces of runs that ended without their worker (secrets on disk)
    republished = republish.republish_lost(now)
    caught_up = catch_up.catch_up_missed(now)
    later_runs.delete_fired()  # one-off later-run tasks beat has fired (by beat's clock, not `now`)
    staged_uploads.sweep(now)  # script files kept by failed package forms, past EXECUTOR_STAGED_UPLOAD_HOURS
    return ReapReport(failed=failed, retried=retried, republished=republished, caught_up=caught_up)


def reap_stale(now: datetime) -> tuple[int, int]:
    """Resolve the in-progress executions whose worker stopped heartbeating; (failed, retried)."""
    cutoff = _stale_before(now)
    if cutoff is None:
        return 0, 0
    # Few rows are in progress: the (status, created_at) index finds them. An index on heartbeat_at would cost
    # more than it saves: every heartbeat UPDATE would then have to update it (no HOT update).
    stale = Execution.objects.select_related("package").filter(
        status=ExecutionStatus.IN_PROGRESS, heartbeat_at__lt=cutoff
    )
    outcomes = [
        resolve_lost(execution, f"its worker {execution.worker_name or 'unknown'} stopped heartbeating", now,
                     heartbeat_at__lt=cutoff)  # a worker that beats again in between wins
        for execution in stale
    ]  # fmt: skip
    return outcomes.count(FAILED), outcomes.count(RETRIED)


def pause_seconds() -> float:
    """A pause between two reaper runs longer than this may hide a database outage (see the module docstring)."""
    return settings.EXECUTOR_LEASE_SECONDS - settings.EXECUTOR_HEARTBEAT_SECONDS - 1


def _stale_before(now: datetime) -> datetime | None:
    """The heartbeat cutoff, or None while workers get one lease to beat again after a pause of the reaper."""
    lease = timedelta(seconds=settings.EXECUTOR_LEASE_SECONDS)
    with transaction.atomic():
        # The first run of a new installation has no pause to account for.
        clock, created = ReaperClock.objects.select_for_update().get_or_create(
            pk=1, defaults={"last_run_at": now, "resumed_at": now - lease}
        )
        paused = now - clock.last_run_at > timedelta(seconds=pause_seconds())
        if paused:
            logger.warning("reaper: last run %s ago; workers get %s s to heartbeat before any is taken for lost",
                           now - clock.last_run_at, settings.EXECUTOR_LEASE_SECONDS)  # fmt: skip
            clock.resumed_at = now
        clock.last_run_at = max(clock.last_run_at, now)
        if not created:
            clock.save(update_fields=["last_run_at", "resumed_at"])
    if now < clock.resumed_at + lease:
        return None
    return now - lease


def resolve_lost(execution: Execution, what_happened: str, now: datetime, **still) -> str | None:
    """Fail an execution whose worker was lost, or retry it where its package allows. Only while it is still in
    progress under the same lease (and matches `still`): None when it finished or moved on meanwhile.
    Also used by the heartbeat (workers/heartbeat.py) when a worker's pool process died."""
    lost = f"worker lost ({what_happened})"
    if execution.retries < execution.package.retries_after_worker_loss:
        attempt = f"retry {execution.retries + 1} of {execution.package.retries_after_worker_loss}"
        step_reason = f"interrupted: {lost}; runs again ({attempt})"
        if not transitions.retry_lost(execution.pk, execution.lease_owner, f"{lost}; {attempt}", step_reason, **still):
            return None
        transaction.on_commit(lambda: enqueue(execution))  # at once, unless a caller's transaction is open
        logger.warning("execution %s: %s; running it again (%s)", execution.id, lost, attempt)
        metrics.inc(metrics.REAPER_ACTIONS, action=RETRIED)
        return RETRIED
    if not transitions.fail_lost(execution.pk, execution.lease_owner, f"failed: {lost}", now, **still):
        return None
    logger.error("execution %s: failed: %s", execution.id, lost)
    metrics.inc(metrics.REAPER_ACTIONS, action=FAILED)
    return FAILED
