import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package
from workers import runner
from workers.lease import LeaseLost, claim
from workers.reaper import reap


@pytest.fixture
def enqueued():
    with mock.patch("workers.tasks.run_execution.apply_async") as apply_async:
        yield apply_async


def running_execution(heartbeat_age_seconds: int, **package_fields):
    """An execution claimed by a worker that then went silent, its second step mid-run."""
    package = make_package(files={"a.py": "", "b.py": "", "c.py": ""}, **package_fields)
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    lease = claim(str(execution.id), "worker@dead-host")
    first, second, third = execution.steps.order_by("position")
    lease.update_step(first.id, status=StepStatus.COMPLETED)
    lease.update_step(second.id, status=StepStatus.RUNNING)
    Execution.objects.filter(pk=execution.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age_seconds)
    )
    return execution, lease


@pytest.mark.django_db
def test_an_execution_whose_worker_stopped_heartbeating_is_failed_as_worker_lost(enqueued, settings):
    settings.EXECUTOR_LEASE_SECONDS = 60
    execution, lease = running_execution(heartbeat_age_seconds=61)

    assert reap().failed == 1

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.status_reason == "failed: worker lost (worker@dead-host stopped responding)"
    assert list(execution.steps.order_by("position").values_list("status", "status_reason")) == [
        (StepStatus.COMPLETED, ""),
        (StepStatus.FAILED, "failed: worker lost"),
        (StepStatus.SKIPPED, "skipped: earlier step failed"),
    ]
    # The old worker, should it wake up, can no longer write.
    with pytest.raises(LeaseLost):
        lease.update_execution(status=ExecutionStatus.COMPLETED)
    assert reap().failed == 0


@pytest.mark.django_db(transaction=True)  # the retry is published after commit
def test_where_the_package_allows_retries_the_interrupted_step_runs_again_a_bounded_number_of_times(enqueued, settings):
    settings.EXECUTOR_LEASE_SECONDS = 60
    execution, lease = running_execution(heartbeat_age_seconds=61, retries_after_worker_loss=1)
    enqueued.reset_mock()  # the first publication, when it was triggered

    report = reap()

    assert (report.retried, report.failed) == (1, 0)

    execution.refresh_from_db()
    assert (execution.status, execution.retries, execution.worker_name) == (ExecutionStatus.PENDING, 1, "")
    assert execution.status_reason == "worker lost (worker@dead-host stopped responding); retry 1 of 1"
    assert list(execution.steps.order_by("position").values_list("status", flat=True)) == [
        StepStatus.COMPLETED,
        StepStatus.PENDING,
        StepStatus.PENDING,
    ]
    enqueued.assert_called_once_with(args=[str(execution.id)], queue="default")
    with pytest.raises(LeaseLost):  # the lost worker is fenced off
        lease.update_execution(status=ExecutionStatus.COMPLETED)

    # The next worker loses it too: the one retry is used up, so this time it fails.
    second = claim(str(execution.id), "worker@second-host")
    second.update_step(execution.steps.get(position=2).id, status=StepStatus.RUNNING)
    Execution.objects.filter(pk=execution.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=61))
    assert reap().failed == 1
    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (
        ExecutionStatus.FAILED,
        "failed: worker lost (worker@second-host stopped responding)",
    )


@pytest.mark.django_db
def test_a_worker_that_still_heartbeats_is_left_alone(enqueued, settings):
    settings.EXECUTOR_LEASE_SECONDS = 60
    execution, _ = running_execution(heartbeat_age_seconds=30)
    assert reap().failed == 0
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.IN_PROGRESS


@pytest.mark.django_db
def test_pending_executions_whose_message_was_lost_are_published_again(enqueued, settings):
    settings.EXECUTOR_REPUBLISH_AFTER_SECONDS = 300
    package = make_package(files={"a.py": ""})
    lost = trigger_execution(package, trigger_type=TriggerType.MANUAL)  # on_commit never ran: never published
    Execution.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(seconds=301))
    fresh = trigger_execution(package, trigger_type=TriggerType.MANUAL)

    assert reap().republished == 1

    enqueued.assert_called_once_with(args=[str(lost.id)], queue="default")
    assert Execution.objects.get(pk=lost.pk).enqueued_at is not None
    assert Execution.objects.get(pk=fresh.pk).enqueued_at is None


@pytest.mark.django_db(transaction=True)
def test_a_long_step_keeps_its_heartbeat_fresh(settings, monkeypatch):
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)
    settings.EXECUTOR_HEARTBEAT_SECONDS = 0.3
    package = make_package(files={"slow.py": "import time; time.sleep(2)"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    seen = []

    def watch():
        try:
            while not Execution.objects.filter(pk=execution.pk, steps__status=StepStatus.RUNNING).exists():
                time.sleep(0.05)
            while Execution.objects.filter(pk=execution.pk, steps__status=StepStatus.RUNNING).exists():
                seen.append(Execution.objects.get(pk=execution.pk).heartbeat_at)
                time.sleep(0.1)
        finally:
            connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    runner.run_execution(str(execution.id), worker_name="test-worker")
    watcher.join()

    assert len(set(seen)) >= 3, seen  # refreshed several times while the step's process ran
