from datetime import timedelta

import pytest
from django.utils import timezone

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package
from workers.lease import LeaseLost, claim
from workers.models import ReaperClock
from workers.reaper import reap, resolve_lost


@pytest.fixture(autouse=True)
def reaper_running(db):
    """The reaper has been running every few seconds for a while."""
    now = timezone.now()
    return ReaperClock.objects.create(pk=1, last_run_at=now, resumed_at=now - timedelta(hours=1))


def running_execution(heartbeat_age_seconds: int, now=None, name="alice_reports", **package_fields):
    """An execution claimed by a worker that then went silent, its second step mid-run."""
    package = make_package(name, files={"a.py": "", "b.py": "", "c.py": ""}, **package_fields)
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    lease = claim(str(execution.id), "worker@dead-host")
    first, second, third = execution.steps.order_by("position")
    lease.update_step(first.id, status=StepStatus.COMPLETED)
    lease.update_step(second.id, status=StepStatus.RUNNING)
    beat(execution, (now or timezone.now()) - timedelta(seconds=heartbeat_age_seconds))
    return execution, lease


def beat(execution, at) -> None:
    Execution.objects.filter(pk=execution.pk).update(heartbeat_at=at)


@pytest.mark.django_db
def test_an_execution_whose_worker_stopped_heartbeating_is_failed_as_worker_lost(enqueued, settings):
    settings.EXECUTOR_LEASE_SECONDS = 10
    execution, lease = running_execution(heartbeat_age_seconds=11)

    assert reap().failed == 1

    execution.refresh_from_db()
    lost = "failed: worker lost (its worker worker@dead-host stopped heartbeating)"
    assert (execution.status, execution.status_reason) == (ExecutionStatus.FAILED, lost)
    assert list(execution.steps.order_by("position").values_list("status", "status_reason")) == [
        (StepStatus.COMPLETED, ""),
        (StepStatus.FAILED, lost),
        (StepStatus.SKIPPED, "skipped: earlier step failed"),
    ]
    # The old worker, should it wake up, can no longer write.
    with pytest.raises(LeaseLost):
        lease.update_execution(status=ExecutionStatus.COMPLETED)
    assert reap().failed == 0


@pytest.mark.django_db(transaction=True)  # the retry is published after commit
def test_where_the_package_allows_retries_the_interrupted_step_runs_again_a_bounded_number_of_times(enqueued, settings):
    settings.EXECUTOR_LEASE_SECONDS = 10
    execution, lease = running_execution(heartbeat_age_seconds=11, retries_after_worker_loss=1)
    enqueued.clear()  # the first publication, when it was triggered

    report = reap()

    assert (report.retried, report.failed) == (1, 0)

    execution.refresh_from_db()
    assert (execution.status, execution.retries, execution.worker_name) == (ExecutionStatus.PENDING, 1, "")
    assert execution.status_reason == "worker lost (its worker worker@dead-host stopped heartbeating); retry 1 of 1"
    assert list(execution.steps.order_by("position").values_list("status", flat=True)) == [
        StepStatus.COMPLETED,
        StepStatus.PENDING,
        StepStatus.PENDING,
    ]
    assert [message.args for message in enqueued] == [[str(execution.id)]]
    with pytest.raises(LeaseLost):  # the lost worker is fenced off
        lease.update_execution(status=ExecutionStatus.COMPLETED)

    # The next worker loses it too: the one retry is used up, so this time it fails.
    second = claim(str(execution.id), "worker@second-host")
    second.update_step(execution.steps.get(position=2).id, status=StepStatus.RUNNING)
    beat(execution, timezone.now() - timedelta(seconds=11))
    assert reap().failed == 1
    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (
        ExecutionStatus.FAILED,
        "failed: worker lost (its worker worker@second-host stopped heartbeating)",
    )


@pytest.mark.django_db
def test_a_worker_that_still_heartbeats_is_left_alone(enqueued, settings):
    settings.EXECUTOR_LEASE_SECONDS = 10
    execution, _ = running_execution(heartbeat_age_seconds=8)
    assert reap().failed == 0
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.IN_PROGRESS


@pytest.mark.django_db
def test_after_a_pause_long_enough_to_hide_a_database_outage_workers_get_a_lease_to_beat_again(
    enqueued, settings, reaper_running
):
    """The database was down 20 s: no heartbeat could be written, and the reaper could not run either."""
    settings.EXECUTOR_HEARTBEAT_SECONDS, settings.EXECUTOR_LEASE_SECONDS = 3, 10
    start = reaper_running.last_run_at
    alive, _ = running_execution(heartbeat_age_seconds=2, now=start)
    dead, _ = running_execution(heartbeat_age_seconds=2, now=start, name="bob_reports")
    back = start + timedelta(seconds=20)

    # Both heartbeats are 22 s old, but the reaper's own pause says the database may have been away.
    assert reap(back).failed == 0
    beat(alive, back + timedelta(seconds=1))  # the live worker's heartbeat resumes
    assert reap(back + timedelta(seconds=3)).failed == 0
    assert reap(back + timedelta(seconds=6)).failed == 0
    assert reap(back + timedelta(seconds=9)).failed == 0
    # One lease after the database came back, silence means death again.
    assert reap(back + timedelta(seconds=10)).failed == 1

    assert Execution.objects.get(pk=alive.pk).status == ExecutionStatus.IN_PROGRESS
    assert Execution.objects.get(pk=dead.pk).status == ExecutionStatus.FAILED


@pytest.mark.django_db
def test_a_normal_gap_between_reaper_runs_does_not_delay_reaping(enqueued, settings, reaper_running):
    settings.EXECUTOR_HEARTBEAT_SECONDS, settings.EXECUTOR_LEASE_SECONDS = 3, 10
    start = reaper_running.last_run_at
    execution, _ = running_execution(heartbeat_age_seconds=0, now=start)
    for seconds in range(3, 10, 3):
        assert reap(start + timedelta(seconds=seconds)).failed == 0
    assert reap(start + timedelta(seconds=12)).failed == 1


@pytest.mark.django_db
def test_the_first_reaper_run_of_an_installation_reaps_at_once(enqueued, settings):
    ReaperClock.objects.all().delete()
    settings.EXECUTOR_LEASE_SECONDS = 10
    running_execution(heartbeat_age_seconds=11)
    assert reap().failed == 1


@pytest.mark.django_db
def test_resolving_a_lost_execution_leaves_one_that_finished_or_moved_on_alone(enqueued):
    execution, lease = running_execution(heartbeat_age_seconds=0)
    stale = Execution.objects.select_related("package").get(pk=execution.pk)
    lease.update_execution(status=ExecutionStatus.COMPLETED)  # finished after the execution was read

    assert resolve_lost(stale, "its worker process was killed", timezone.now()) is None
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED


@pytest.mark.django_db
def test_pending_executions_whose_message_was_lost_are_published_again(enqueued, settings):
    settings.EXECUTOR_REPUBLISH_AFTER_SECONDS = 300
    package = make_package(files={"a.py": ""})
    lost = trigger_execution(package, trigger_type=TriggerType.MANUAL)  # on_commit never ran: never published
    Execution.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(seconds=301))
    fresh = trigger_execution(package, trigger_type=TriggerType.MANUAL)

    assert reap().republished == 1

    assert enqueued == [("executor.run_execution", [str(lost.id)], "default")]
    assert Execution.objects.get(pk=lost.pk).enqueued_at is not None
    assert Execution.objects.get(pk=fresh.pk).enqueued_at is None
