"""The heartbeat thread of a worker's main process (workers/heartbeat.py), one beat at a time against the real
database; Celery's requests in hand are what running_execution_ids() returns here. tests/e2e/test_worker_lost.py
runs it inside real workers whose pool processes are killed."""

import logging
import threading
import time

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package
from workers import heartbeat
from workers.lease import Lease, claim

WORKER = "e2e-1@host"


def running(name="alice_reports", worker=WORKER, **package_fields):
    """An execution this worker claimed, its first step running, its heartbeat a minute old."""
    package = make_package(name, files={"a.py": "", "b.py": ""}, **package_fields)
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    lease = claim(str(execution.id), worker)
    lease.update_step(execution.steps.get(position=1).id, status=StepStatus.RUNNING)
    Execution.objects.filter(pk=execution.pk).update(heartbeat_at=timezone.now() - timezone.timedelta(minutes=1))
    return execution, lease


@pytest.fixture
def in_hand(monkeypatch):
    """The execution ids of the run_execution requests Celery has in hand in this (pretend) worker."""
    ids: set[str] = set()
    monkeypatch.setattr(heartbeat, "running_execution_ids", lambda: set(ids))
    heartbeat._lost.clear()
    yield ids
    heartbeat._lost.clear()


def fresh(execution) -> bool:
    return (timezone.now() - Execution.objects.get(pk=execution.pk).heartbeat_at).total_seconds() < 5


@pytest.mark.django_db
def test_one_update_refreshes_the_heartbeat_of_every_execution_the_pool_runs(in_hand, django_assert_num_queries):
    first, _ = running("alice_reports")
    second, _ = running("bob_reports")
    others, _ = running("carol_reports", worker="other@host")
    in_hand.update({str(first.id), str(second.id), str(others.id)})

    with django_assert_num_queries(2):  # what this worker claimed, then one UPDATE
        heartbeat.Heartbeat(WORKER).beat()

    assert fresh(first) and fresh(second)
    assert not fresh(others)  # another worker's: its own heartbeat vouches for it


@pytest.mark.django_db(transaction=True)  # a retry is published after commit
@pytest.mark.parametrize("retries", [0, 1])
def test_a_run_whose_pool_process_was_killed_is_resolved_at_the_next_beat(in_hand, enqueued, retries):
    execution, lease = running(retries_after_worker_loss=retries)
    beat = heartbeat.Heartbeat(WORKER)
    in_hand.add(str(execution.id))
    beat.beat()
    # Celery reports the WorkerLostError in the main process (ExecutionRequest.on_failure): the request is done.
    in_hand.clear()
    heartbeat.note_lost(str(execution.id), heartbeat.how_it_ended(Exception("signal 9 (SIGKILL) Job: 3.")))

    beat.beat()

    execution.refresh_from_db()
    lost = f"worker lost (its worker process on {WORKER} was killed by SIGKILL)"
    step = execution.steps.get(position=1)
    if retries:
        assert (execution.status, execution.status_reason) == (ExecutionStatus.PENDING, f"{lost}; retry 1 of 1")
        assert step.status == StepStatus.PENDING
        assert enqueued  # published again
    else:
        assert (execution.status, execution.status_reason) == (ExecutionStatus.FAILED, f"failed: {lost}")
        assert (step.status, step.status_reason) == (StepStatus.FAILED, f"failed: {lost}")
        assert execution.steps.get(position=2).status == StepStatus.SKIPPED


@pytest.mark.django_db
def test_a_run_whose_task_ended_without_finishing_it_is_resolved_when_seen_so_twice(in_hand, enqueued):
    execution, _ = running()
    beat = heartbeat.Heartbeat(WORKER)

    beat.beat()  # not in hand, but no loss reported: perhaps Celery had not registered its request yet
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.IN_PROGRESS
    beat.beat()

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.status_reason == f"failed: worker lost (its task on {WORKER} ended without finishing it)"


@pytest.mark.django_db
def test_a_run_that_finishes_between_the_two_reads_is_left_alone(in_hand, monkeypatch):
    execution, lease = running()
    heartbeat.note_lost(str(execution.id), "was killed by SIGKILL")

    def finished_meanwhile() -> set[str]:
        lease.update_execution(status=ExecutionStatus.COMPLETED, finished_at=timezone.now())
        return set()

    monkeypatch.setattr(heartbeat, "running_execution_ids", finished_meanwhile)
    heartbeat.Heartbeat(WORKER).beat()

    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (ExecutionStatus.COMPLETED, "")


@pytest.mark.django_db
def test_a_worker_with_the_same_name_never_touches_the_other_s_runs(in_hand):
    """Two `celery worker --hostname worker@%h` on one host share a node name, not a lease INSTANCE."""
    execution, _ = running()
    Execution.objects.filter(pk=execution.pk).update(lease_owner="0123456789ab." + "f" * 32)
    beat = heartbeat.Heartbeat(WORKER)
    beat.beat()
    beat.beat()
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.IN_PROGRESS and not fresh(execution)


@pytest.mark.parametrize(
    "error, how",
    [
        ("Worker exited prematurely: signal 9 (SIGKILL) Job: 3.", "was killed by SIGKILL"),
        ("Worker exited prematurely: signal 15 (SIGTERM) Job: 0.", "was killed by SIGTERM"),
        ("Worker exited prematurely: exitcode 1 Job: 7.", "exited with code 1"),
        ("Worker exited prematurely: SystemExit.", "ended unexpectedly"),
    ],
)
def test_how_a_pool_process_ended_is_said_plainly(error, how):
    assert heartbeat.how_it_ended(Exception(error)) == how


@pytest.mark.django_db(transaction=True)
def test_the_thread_outlives_a_database_outage_says_so_once_and_beats_as_soon_as_it_is_back(
    in_hand, monkeypatch, settings, caplog
):
    settings.EXECUTOR_HEARTBEAT_SECONDS = 30  # only the retries and the beat after the outage are expected
    monkeypatch.setattr(heartbeat, "RETRY_SECONDS", 0.05)
    execution, _ = running()
    in_hand.add(str(execution.id))
    real_beat, attempts = heartbeat.Heartbeat.beat, []

    def beat(self):
        attempts.append(time.monotonic())
        if len(attempts) <= 5:
            raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')
        real_beat(self)

    monkeypatch.setattr(heartbeat.Heartbeat, "beat", beat)
    caplog.set_level(logging.WARNING, logger="workers.heartbeat")
    thread = heartbeat.Heartbeat(WORKER)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not fresh(execution):
            assert time.monotonic() < deadline, "no heartbeat after the outage"
            time.sleep(0.05)
        assert thread.is_alive() and len(attempts) == 6
    finally:
        thread.halt()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("unreachable" in message for message in messages) == 1, messages
    assert sum("reachable again" in message for message in messages) == 1, messages


@pytest.mark.django_db(transaction=True)
def test_a_long_step_keeps_its_heartbeat_fresh_from_the_worker_s_main_process(in_hand, settings, monkeypatch):
    """The runner in one thread, as in a pool process; the heartbeat thread beside it, as in the main process."""
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)
    settings.EXECUTOR_HEARTBEAT_SECONDS = 1
    from workers import runner

    package = make_package(files={"slow.py": "import time; time.sleep(3.5)"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    in_hand.add(str(execution.id))
    beating = heartbeat.Heartbeat(WORKER)
    beating.start()
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
    try:
        runner.run_execution(str(execution.id), worker_name=WORKER)
    finally:
        watcher.join()
        beating.halt()

    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED
    assert len(set(seen)) >= 3, seen  # refreshed several times while the step's process ran


def test_lease_tokens_carry_this_worker_s_instance():
    from workers import lease

    assert lease.new_token().startswith(f"{lease.INSTANCE}.")
    assert Lease("x", lease.new_token()).token != lease.new_token()


def test_the_requests_in_hand_are_read_from_celery_s_bookkeeping(monkeypatch):
    from types import SimpleNamespace

    from celery.worker import state

    execution_id = "8c3a1a52-6f0e-4c1e-9d6b-0d9c3b1f2a4e"
    requests = {
        "1": SimpleNamespace(name=heartbeat.RUN_EXECUTION, args=[execution_id.upper()]),  # as the task accepts it
        "2": SimpleNamespace(name="executor.reap", args=[]),
        "3": SimpleNamespace(name=heartbeat.RUN_EXECUTION, args=["not-a-uuid"]),
    }
    monkeypatch.setattr(state, "requests", requests)
    assert heartbeat.running_execution_ids() == {execution_id, "not-a-uuid"}
