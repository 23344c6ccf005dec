"""Every change of an execution's or a step's status: one function per transition, each a conditional UPDATE whose
row count says whether it happened (0: the row was not in the state the transition starts from, or not under the
lease it names). Nothing else writes a status.

An execution (ExecutionStatus), and who moves it:

    pending      --claim (a worker)---------------------> in_progress
    pending      --cancel_pending (a person)------------> cancelled
    in_progress  --finish (its worker)------------------> completed | failed | cancelled
    in_progress  --fail_unfinished (its worker)---------> failed       an error outside any step
    in_progress  --hand_back (its worker, shutting down)> pending      another worker continues where it stopped
    in_progress  --fail_lost (reaper, heartbeat)--------> failed       its worker is gone
    in_progress  --retry_lost (reaper, heartbeat)-------> pending      the same, where the package allows a retry
    (no row)     --record_skipped (schedule catch-up)---> skipped      a missed fire time the package skips

`flag_cancel` (a person) changes no status: it marks a running execution, and its worker stops the running step
and finishes the run as cancelled. completed, failed, cancelled and skipped are terminal: no transition starts there.
Each transition into completed, failed or cancelled records, in its transaction, the notifications that end
calls for (`_ended`).

A step (StepStatus) is written by the worker holding its execution's lease, in the order of the step loop
(workers/runner.py):

    pending  --start_step--> running --finish_step--> completed | failed | cancelled
    pending  --skip_step--> skipped                   after a failure, a cancel or a database outage
    pending  --mark_unprocessed--> unprocessed        no handler for its kind of file
    running  --requeue_step--> pending                cut off by its worker's shutdown, to run again elsewhere

and, with its execution: cancel_pending skips the pending steps; fail_unfinished and fail_lost fail the running
step and skip the pending ones; retry_lost puts the running step back to pending.

Fencing. A worker's transitions match its lease token (Execution.lease_owner, set by `claim`): a worker that lost
its lease (reaped after a network split, taken over after a retry) changes nothing, and workers/lease.py turns the
0 into LeaseLost. Step writes are fenced by that token, not by the step's status: only the lease holder writes a
step. The reaper's and the heartbeat's transitions match the lost lease's token and `in_progress`, so a run that
finished, or a worker that beat again, meanwhile wins.

Every execution transition that happened is told to executions/state_log.py (a log line with the execution's id,
package, project and correlation id; the executions' metrics) once its transaction commits.
"""

import logging
import uuid
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from executor_project import database
from packages.models import Package

from . import notifications, state_log
from .models import Execution, ExecutionStatus, ExecutionStep, StepStatus, TriggerType

logger = logging.getLogger(__name__)
# A worker's lease token after the reaper failed its execution: no worker's token, so its late writes match nothing.
REAPED = "reaped"
FINISHED_STATUSES = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
STEP_OUTCOMES = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED})


# Executions -------------------------------------------------------------------------------------------------------


def claim(execution_id, worker_name: str, token: str, now: datetime | None = None) -> int:
    """pending -> in_progress under `token`, for `worker_name`."""
    now = now or timezone.now()
    claimed = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.PENDING).update(
        status=ExecutionStatus.IN_PROGRESS,
        worker_name=worker_name[:200],
        lease_owner=token,
        status_reason="",
        started_at=Coalesce(F("started_at"), Value(now)),  # kept when another worker handed the run over
        heartbeat_at=now,
    )
    if claimed:
        state_log.changed(execution_id, "claim", ExecutionStatus.PENDING, ExecutionStatus.IN_PROGRESS, claimed_at=now)
    return claimed


def finish(execution_id, token: str, status: ExecutionStatus, reason: str, now: datetime | None = None, *,
           unless_cancel_requested: bool = False) -> int:  # fmt: skip
    """in_progress -> completed, failed or cancelled, by the worker holding the lease. `unless_cancel_requested`:
    changes nothing when someone asked to cancel the execution meanwhile (the worker then finishes it as cancelled)."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"an execution does not finish as {status!r}")
    now = now or timezone.now()
    ending = _leased(execution_id, token)
    if unless_cancel_requested:
        ending = ending.filter(cancel_requested_at__isnull=True)

    def end() -> int:
        finished = ending.update(status=status, status_reason=reason, finished_at=now, heartbeat_at=now)
        if finished:
            state_log.changed(execution_id, "finish", ExecutionStatus.IN_PROGRESS, status, reason)
        return finished

    if not _some_rule_listens(execution_id):
        return end()  # most runs: no delivery to record with the end, so no transaction (2 statements, not 6)
    with transaction.atomic():
        return _ended(execution_id, end())


def fail_unfinished(execution_id, token: str, reason: str, now: datetime | None = None) -> int:
    """in_progress -> failed after an error outside any step: its running step fails with the same reason, the
    steps after it are skipped, so nothing stays in progress."""
    now = now or timezone.now()
    with transaction.atomic():
        steps = ExecutionStep.objects.filter(execution_id=execution_id, execution__lease_owner=token)
        steps.filter(status=StepStatus.RUNNING).update(status=StepStatus.FAILED, status_reason=reason, finished_at=now)
        steps.filter(status=StepStatus.PENDING).update(
            status=StepStatus.SKIPPED, status_reason="skipped: the execution failed (see its reason)"
        )
        failed = _leased(execution_id, token).update(
            status=ExecutionStatus.FAILED, status_reason=reason, finished_at=now, heartbeat_at=now
        )
        if failed:
            state_log.changed(execution_id, "fail_unfinished", ExecutionStatus.IN_PROGRESS, ExecutionStatus.FAILED,
                              reason)  # fmt: skip
        return _ended(execution_id, failed)


def hand_back(execution_id, token: str, reason: str) -> int:
    """in_progress -> pending, its worker shutting down. Clearing the lease fences that worker off; the next one to
    claim the run continues with its pending steps."""
    handed = _leased(execution_id, token).update(
        status=ExecutionStatus.PENDING, status_reason=reason, lease_owner="", worker_name="", heartbeat_at=None
    )
    if handed:
        state_log.changed(execution_id, "hand_back", ExecutionStatus.IN_PROGRESS, ExecutionStatus.PENDING, reason)
    return handed


def count_retry(execution_id, token: str, now: datetime | None = None) -> int:
    """One more run of a step cut off by a lost or shut-down worker (Package.retries_after_worker_loss); no status
    change: the step is then put back with `requeue_step`."""
    return _leased(execution_id, token).update(retries=F("retries") + 1, heartbeat_at=now or timezone.now())


def fail_lost(execution_id, token: str, reason: str, now: datetime | None = None, **still) -> int:
    """in_progress -> failed, its worker lost (reaper, heartbeat): only under the lost lease `token` and `still`
    (e.g. a heartbeat older than a cutoff). The running step fails with the same reason, the pending ones are
    skipped; the lease becomes REAPED, so a worker that was only frozen writes nothing more."""
    now = now or timezone.now()
    with transaction.atomic():
        lost = _lost(execution_id, token, still).update(
            status=ExecutionStatus.FAILED, status_reason=reason, finished_at=now, lease_owner=REAPED
        )
        if lost:
            steps = ExecutionStep.objects.filter(execution_id=execution_id)
            steps.filter(status=StepStatus.RUNNING).update(status=StepStatus.FAILED, status_reason=reason,
                                                           finished_at=now)  # fmt: skip
            steps.filter(status=StepStatus.PENDING).update(
                status=StepStatus.SKIPPED, status_reason="skipped: earlier step failed"
            )
        if lost:
            state_log.changed(execution_id, "fail_lost", ExecutionStatus.IN_PROGRESS, ExecutionStatus.FAILED, reason)
        _ended(execution_id, lost)
    return lost


def retry_lost(execution_id, token: str, reason: str, step_reason: str, **still) -> int:
    """in_progress -> pending, its worker lost and its package allowing one more retry: as `fail_lost`, but the
    running step goes back to pending (with `step_reason`) and the execution is to be published again."""
    with transaction.atomic():
        lost = _lost(execution_id, token, still).update(
            status=ExecutionStatus.PENDING, status_reason=reason, retries=F("retries") + 1, lease_owner="",
            worker_name="",
        )  # fmt: skip
        if lost:
            ExecutionStep.objects.filter(execution_id=execution_id, status=StepStatus.RUNNING).update(
                status=StepStatus.PENDING, status_reason=step_reason
            )
    if lost:
        state_log.changed(execution_id, "retry_lost", ExecutionStatus.IN_PROGRESS, ExecutionStatus.PENDING, reason)
    return lost


def cancel_pending(execution_id, user, reason: str, now: datetime | None = None) -> int:
    """pending -> cancelled on a person's behalf; its steps are skipped. Races fairly with a worker's `claim`: one
    of the two conditional UPDATEs wins."""
    now = now or timezone.now()
    with transaction.atomic():
        cancelled = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.PENDING).update(
            status=ExecutionStatus.CANCELLED, status_reason=reason, finished_at=now, cancel_requested_at=now,
            cancel_requested_by=user,
        )  # fmt: skip
        if cancelled:
            ExecutionStep.objects.filter(execution_id=execution_id, status=StepStatus.PENDING).update(
                status=StepStatus.SKIPPED, status_reason="skipped: execution cancelled"
            )
        if cancelled:
            state_log.changed(execution_id, "cancel_pending", ExecutionStatus.PENDING, ExecutionStatus.CANCELLED,
                              reason)  # fmt: skip
        _ended(execution_id, cancelled)
    return cancelled


def flag_cancel(execution_id, user, now: datetime | None = None) -> int:
    """Ask the worker running the execution to cancel it (once): it stops the running step within about a second
    (workers/lease.py ExecutionWatch) and then `finish`es the run as cancelled."""
    return Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.IN_PROGRESS, cancel_requested_at__isnull=True
    ).update(cancel_requested_at=now or timezone.now(), cancel_requested_by=user)


def record_skipped(package: Package, idempotency_key: str, reason: str, now: datetime | None = None) -> bool:
    """A scheduled run that was never started, recorded as skipped (no steps) under its fire time's key; False if
    that fire time's execution exists already (its tick arrived meanwhile)."""
    try:
        with transaction.atomic():
            execution = Execution.objects.create(
                package=package,
                trigger_type=TriggerType.SCHEDULED,
                status=ExecutionStatus.SKIPPED,
                status_reason=reason,
                idempotency_key=idempotency_key,
                correlation_id=uuid.uuid4().hex,
                finished_at=now or timezone.now(),
            )
    except IntegrityError:
        return False
    state_log.changed(execution.pk, "record_skipped", "", ExecutionStatus.SKIPPED, reason)
    return True


def _ended(execution_id, updated: int) -> int:
    """After a transition to a final status, in its transaction: the notifications its end calls for are recorded
    with it (executions/notifications.py), so they are kept or rolled back together. `updated`: its row count."""
    if not updated:
        return updated
    try:
        with transaction.atomic():  # a savepoint: what fails here rolls back the notifications only
            notifications.record_finished(execution_id)
    except database.UNREACHABLE:
        raise  # the whole transition failed with it, and is retried as a whole
    except Exception:
        # A notification must never keep a run from ending: the end is recorded, the error logged.
        logger.exception("execution %s: its notifications could not be recorded", execution_id)
    return updated


def _some_rule_listens(execution_id) -> bool:
    """Whether an active notification rule covers the execution, read before its end's transaction (a rule added
    in between hears of the next end). Any error but an unreachable database counts as yes: the transaction's path
    then records what it can and logs the rest (_ended)."""
    try:
        return bool(notifications.rules_for(execution_id))
    except database.UNREACHABLE:
        raise
    except Exception:
        return True


def _leased(execution_id, token: str):
    return Execution.objects.filter(pk=execution_id, lease_owner=token)


def _lost(execution_id, token: str, still: dict):
    return Execution.objects.filter(pk=execution_id, status=ExecutionStatus.IN_PROGRESS, lease_owner=token, **still)


# Steps, by the worker holding the execution's lease ---------------------------------------------------------------


def start_step(execution_id, token: str, step_id: int, now: datetime) -> int:
    """pending -> running: recorded before its process starts, so a crash leaves a visible row."""
    return leased_step(execution_id, token, step_id).update(status=StepStatus.RUNNING, started_at=now)


def finish_step(execution_id, token: str, step_id: int, status: StepStatus, reason: str, **result) -> int:
    """running -> completed, failed or cancelled. `result`: what is known of its process (exit_code, stdout,
    stderr, finished_at, duration_ms); what is not given keeps what the live output stored."""
    if status not in STEP_OUTCOMES:
        raise ValueError(f"a step does not finish as {status!r}")
    return leased_step(execution_id, token, step_id).update(status=status, status_reason=reason, **result)


def skip_step(execution_id, token: str, step_id: int, reason: str) -> int:
    """pending -> skipped."""
    return leased_step(execution_id, token, step_id).update(status=StepStatus.SKIPPED, status_reason=reason)


def mark_unprocessed(execution_id, token: str, step_id: int) -> int:
    """pending -> unprocessed: the executor has no handler for its kind of file."""
    return leased_step(execution_id, token, step_id).update(
        status=StepStatus.UNPROCESSED, status_reason="no handler for this file type"
    )


def requeue_step(execution_id, token: str, step_id: int, reason: str, **output) -> int:
    """running -> pending: cut off by its worker's shutdown, it runs again on the next worker (after
    `count_retry`). `output`: what it printed so far (stdout, stderr), kept for the record."""
    return leased_step(execution_id, token, step_id).update(status=StepStatus.PENDING, status_reason=reason, **output)


def leased_step(execution_id, token: str, step_id: int):
    """The step, if its execution is still under this lease. The lease is tested in a subquery of its own rather
    than through a join: Django compiles the join into an UPDATE ... WHERE id IN (SELECT ... JOIN ...), a third
    more CPU for a write that every step makes twice."""
    leased = Execution.objects.filter(pk=execution_id, lease_owner=token).values("pk")
    return ExecutionStep.objects.filter(pk=step_id, execution_id=execution_id, execution__in=leased)
