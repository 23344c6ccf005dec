"""The state machine of executions/transitions.py: each transition happens from its own state under the right lease,
and is refused (0 rows, nothing changed) from any other state or under another lease."""

from datetime import timedelta

import pytest
from django.utils import timezone

from executions import transitions
from executions.models import Execution, ExecutionStatus, ExecutionStep, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]
TOKEN, OTHER = "instance.alice", "instance.bob"


def pending_run(name: str = "alice_reports", **package_fields) -> Execution:
    package = make_package(name, files={"a.py": "", "b.py": "", "c.py": ""}, **package_fields)
    return trigger_execution(package, trigger_type=TriggerType.MANUAL)


def claimed_run(**package_fields) -> Execution:
    """Claimed under TOKEN, its first step completed and its second running."""
    execution = pending_run(**package_fields)
    assert transitions.claim(execution.pk, "worker-a", TOKEN) == 1
    first, second, _third = steps_of(execution)
    ExecutionStep.objects.filter(pk=first.pk).update(status=StepStatus.COMPLETED)
    ExecutionStep.objects.filter(pk=second.pk).update(status=StepStatus.RUNNING)
    execution.refresh_from_db()
    return execution


def steps_of(execution: Execution) -> list[ExecutionStep]:
    return list(ExecutionStep.objects.filter(execution=execution).order_by("position"))


def statuses(execution: Execution) -> tuple[str, list[str]]:
    execution.refresh_from_db()
    return execution.status, [step.status for step in steps_of(execution)]


UNCHANGED = (ExecutionStatus.IN_PROGRESS, [StepStatus.COMPLETED, StepStatus.RUNNING, StepStatus.PENDING])


def test_it_claims_a_pending_execution_once():
    execution = pending_run()

    assert transitions.claim(execution.pk, "worker-a", TOKEN) == 1
    assert transitions.claim(execution.pk, "worker-b", OTHER) == 0

    execution.refresh_from_db()
    assert (execution.status, execution.lease_owner, execution.worker_name) == (
        ExecutionStatus.IN_PROGRESS, TOKEN, "worker-a",
    )  # fmt: skip


def test_it_keeps_the_first_start_time_when_a_handed_back_run_is_claimed_again():
    execution = claimed_run()
    started_at = execution.started_at
    assert transitions.hand_back(execution.pk, TOKEN, "handed over") == 1

    assert transitions.claim(execution.pk, "worker-b", OTHER, now=started_at + timedelta(minutes=5)) == 1

    execution.refresh_from_db()
    assert (execution.started_at, execution.status_reason) == (started_at, "")


@pytest.mark.parametrize("status", [ExecutionStatus.COMPLETED, ExecutionStatus.CANCELLED, ExecutionStatus.SKIPPED])
def test_it_refuses_to_claim_a_run_that_ended(status):
    execution = pending_run()
    Execution.objects.filter(pk=execution.pk).update(status=status)

    assert transitions.claim(execution.pk, "worker-a", TOKEN) == 0


def test_it_finishes_a_run_only_under_its_lease():
    execution = claimed_run()

    assert transitions.finish(execution.pk, OTHER, ExecutionStatus.COMPLETED, "") == 0
    assert statuses(execution)[0] == ExecutionStatus.IN_PROGRESS
    assert transitions.finish(execution.pk, TOKEN, ExecutionStatus.FAILED, "failed: step 2 (b.py) failed") == 1

    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (ExecutionStatus.FAILED, "failed: step 2 (b.py) failed")
    assert execution.finished_at is not None


@pytest.mark.parametrize("status", [ExecutionStatus.PENDING, ExecutionStatus.IN_PROGRESS, ExecutionStatus.SKIPPED])
def test_it_finishes_a_run_only_as_completed_failed_or_cancelled(status):
    execution = claimed_run()

    with pytest.raises(ValueError):
        transitions.finish(execution.pk, TOKEN, status, "")


def test_it_fails_an_unfinished_run_with_its_running_step_and_skips_the_rest_only_under_its_lease():
    execution = claimed_run()

    assert transitions.fail_unfinished(execution.pk, OTHER, "failed: internal error") == 0
    assert statuses(execution) == UNCHANGED
    assert transitions.fail_unfinished(execution.pk, TOKEN, "failed: internal error") == 1

    assert statuses(execution) == (
        ExecutionStatus.FAILED, [StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED],
    )  # fmt: skip
    assert [step.status_reason for step in steps_of(execution)] == [
        "", "failed: internal error", "skipped: the execution failed (see its reason)",
    ]  # fmt: skip


def test_it_hands_a_run_back_only_under_its_lease_and_fences_its_worker_off():
    execution = claimed_run()

    assert transitions.hand_back(execution.pk, OTHER, "handed over") == 0
    assert transitions.hand_back(execution.pk, TOKEN, "handed over") == 1

    execution.refresh_from_db()
    assert (execution.status, execution.lease_owner, execution.worker_name, execution.heartbeat_at) == (
        ExecutionStatus.PENDING, "", "", None,
    )  # fmt: skip
    assert transitions.finish(execution.pk, TOKEN, ExecutionStatus.COMPLETED, "") == 0


def test_it_counts_a_retry_only_under_the_lease():
    execution = claimed_run()

    assert transitions.count_retry(execution.pk, OTHER) == 0
    assert transitions.count_retry(execution.pk, TOKEN) == 1

    execution.refresh_from_db()
    assert execution.retries == 1


def test_it_fails_a_lost_run_only_while_it_is_in_progress_under_the_lost_lease():
    execution = claimed_run()
    cutoff = timezone.now() - timedelta(minutes=1)  # the heartbeat is newer: the worker beat again

    assert transitions.fail_lost(execution.pk, OTHER, "failed: worker lost") == 0
    assert transitions.fail_lost(execution.pk, TOKEN, "failed: worker lost", heartbeat_at__lt=cutoff) == 0
    assert statuses(execution) == UNCHANGED
    assert transitions.fail_lost(execution.pk, TOKEN, "failed: worker lost") == 1

    assert statuses(execution) == (
        ExecutionStatus.FAILED, [StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED],
    )  # fmt: skip
    assert execution.lease_owner == transitions.REAPED
    assert transitions.fail_lost(execution.pk, TOKEN, "failed: worker lost") == 0  # not twice


def test_it_retries_a_lost_run_only_while_it_is_in_progress_under_the_lost_lease():
    execution = claimed_run()

    assert transitions.retry_lost(execution.pk, OTHER, "worker lost; retry 1 of 1", "interrupted") == 0
    assert statuses(execution) == UNCHANGED
    assert transitions.retry_lost(execution.pk, TOKEN, "worker lost; retry 1 of 1", "interrupted") == 1

    assert statuses(execution) == (
        ExecutionStatus.PENDING, [StepStatus.COMPLETED, StepStatus.PENDING, StepStatus.PENDING],
    )  # fmt: skip
    assert (execution.retries, execution.lease_owner) == (1, "")
    assert transitions.retry_lost(execution.pk, TOKEN, "again", "interrupted") == 0  # pending now


def test_it_cancels_a_pending_run_and_skips_its_steps_but_not_a_claimed_one(admin_user):
    pending, claimed = pending_run(), claimed_run(name="bob_reports")

    assert transitions.cancel_pending(claimed.pk, admin_user, "cancelled by admin") == 0
    assert statuses(claimed) == UNCHANGED
    assert transitions.cancel_pending(pending.pk, admin_user, "cancelled by admin") == 1

    assert statuses(pending) == (ExecutionStatus.CANCELLED, [StepStatus.SKIPPED] * 3)
    assert pending.cancel_requested_by == admin_user
    assert transitions.claim(pending.pk, "worker-a", TOKEN) == 0


def test_it_flags_a_running_run_for_cancelling_once_and_no_other(admin_user):
    pending, claimed = pending_run(), claimed_run(name="bob_reports")

    assert transitions.flag_cancel(pending.pk, admin_user) == 0
    assert transitions.flag_cancel(claimed.pk, admin_user) == 1
    assert transitions.flag_cancel(claimed.pk, admin_user) == 0

    claimed.refresh_from_db()
    assert statuses(claimed) == UNCHANGED  # its worker finishes it as cancelled
    assert claimed.cancel_requested_at is not None


def test_a_finish_that_must_not_overrule_a_cancel_changes_nothing_once_one_is_asked_for(admin_user):
    cancelled, running = claimed_run(), claimed_run(name="bob_reports")
    transitions.flag_cancel(cancelled.pk, admin_user)

    assert transitions.finish(cancelled.pk, TOKEN, ExecutionStatus.COMPLETED, "", unless_cancel_requested=True) == 0
    assert transitions.finish(running.pk, TOKEN, ExecutionStatus.COMPLETED, "", unless_cancel_requested=True) == 1
    assert statuses(cancelled) == UNCHANGED
    assert statuses(running)[0] == ExecutionStatus.COMPLETED


def test_it_records_a_skipped_fire_time_once():
    package = make_package()

    assert transitions.record_skipped(package, "schedule:1:202603021020", "missed: the 10:20 run")
    assert not transitions.record_skipped(package, "schedule:1:202603021020", "missed: the 10:20 run")

    skipped = Execution.objects.get(idempotency_key="schedule:1:202603021020")
    assert (skipped.status, skipped.is_finished, skipped.steps.count()) == (ExecutionStatus.SKIPPED, True, 0)


def test_step_transitions_are_refused_under_another_lease():
    execution = claimed_run()
    _first, running, pending = steps_of(execution)
    now = timezone.now()

    assert transitions.start_step(execution.pk, OTHER, pending.pk, now) == 0
    assert transitions.skip_step(execution.pk, OTHER, pending.pk, "skipped") == 0
    assert transitions.mark_unprocessed(execution.pk, OTHER, pending.pk) == 0
    assert transitions.finish_step(execution.pk, OTHER, running.pk, StepStatus.COMPLETED, "") == 0
    assert transitions.requeue_step(execution.pk, OTHER, running.pk, "interrupted") == 0

    assert statuses(execution) == UNCHANGED


def test_step_transitions_are_refused_for_a_step_of_another_execution():
    execution, other = claimed_run(), pending_run(name="bob_reports")
    not_its_step = steps_of(other)[0]

    assert transitions.start_step(execution.pk, TOKEN, not_its_step.pk, timezone.now()) == 0
    assert transitions.skip_step(execution.pk, TOKEN, not_its_step.pk, "skipped") == 0

    assert statuses(other) == (ExecutionStatus.PENDING, [StepStatus.PENDING] * 3)


def test_a_step_runs_and_finishes_under_the_lease():
    execution = claimed_run()
    _first, running, pending = steps_of(execution)

    assert transitions.finish_step(execution.pk, TOKEN, running.pk, StepStatus.COMPLETED, "", exit_code=0) == 1
    assert transitions.start_step(execution.pk, TOKEN, pending.pk, timezone.now()) == 1
    assert transitions.requeue_step(execution.pk, TOKEN, pending.pk, "interrupted", stdout="so far\n") == 1

    assert statuses(execution)[1] == [StepStatus.COMPLETED, StepStatus.COMPLETED, StepStatus.PENDING]
    assert steps_of(execution)[2].stdout == "so far\n"


@pytest.mark.parametrize("status", [StepStatus.PENDING, StepStatus.RUNNING, StepStatus.SKIPPED])
def test_a_step_finishes_only_as_completed_failed_or_cancelled(status):
    execution = claimed_run()

    with pytest.raises(ValueError):
        transitions.finish_step(execution.pk, TOKEN, steps_of(execution)[1].pk, status, "")
