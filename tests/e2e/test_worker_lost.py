"""Workers SIGKILLed mid-step: the execution is failed within seconds, saying what happened, and no step ever
runs twice. Real workers with the default heartbeat (3 s) and lease (10 s)."""

import time
import uuid

import pytest

from executions.models import Execution, ExecutionStatus, StepStatus
from tests.e2e.processes import kill, kill_tree, pool_process_running, worker_process
from tests.e2e.runs import counting_script, run_count, start_on
from tests.factories import make_package
from workers.tasks import run_execution

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def long_running(key: str):
    script = counting_script(key, then="import time; time.sleep(60)\n")
    return make_package("henry_long", {"long.py": script, "after.py": "print('after')"}, network_access=True)


def wait_until_running(worker, key: str) -> None:
    deadline = time.monotonic() + 30
    while run_count(key) == 0:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)


def seconds_until_resolved(execution, killed_at: float, limit: float) -> float:
    while Execution.objects.filter(pk=execution.pk, status=ExecutionStatus.IN_PROGRESS).exists():
        assert time.monotonic() - killed_at < limit, f"still in progress {limit} s after the kill"
        time.sleep(0.1)
    return time.monotonic() - killed_at


def test_a_killed_pool_process_s_run_is_failed_by_its_own_worker_within_seconds(celery_worker, tmp_path, monkeypatch):
    key = f"e2e-runs-{uuid.uuid4().hex}"
    with worker_process(tmp_path / "victim.log", queues="victim", name="victim") as victim:
        execution = start_on(victim, long_running(key), monkeypatch)
        wait_until_running(victim, key)
        # Only the pool process running the step (its sandbox names the run's workspace) dies, as the OOM killer would.
        kill(pool_process_running(victim.proc.pid, str(execution.id)))
        killed_at = time.monotonic()

        resolved_in = seconds_until_resolved(execution, killed_at, limit=6)

        execution.refresh_from_db()
        lost = f"failed: worker lost (its worker process on {execution.worker_name} was killed by SIGKILL)"
        assert (execution.status, execution.status_reason) == (ExecutionStatus.FAILED, lost)
        assert list(execution.steps.order_by("position").values_list("status", "status_reason")) == [
            (StepStatus.FAILED, lost),
            (StepStatus.SKIPPED, "skipped: earlier step failed"),
        ]
        # Celery handed the killed task's message back to Redis: delivered again, it runs nothing.
        victim.wait_for_log(f"execution {execution.id} is not pending")
        # The worker itself is fine and runs the next execution.
        after = start_on(victim, make_package("henry_short", {"a.py": "print('hi')"}), monkeypatch)
        deadline = time.monotonic() + 30
        while Execution.objects.get(pk=after.pk).status != ExecutionStatus.COMPLETED:
            assert time.monotonic() < deadline, victim.log()
            time.sleep(0.2)
    assert run_count(key) == 1
    print(f"pool process killed: execution failed {resolved_in:.1f} s later")


def test_a_killed_worker_s_execution_is_failed_by_the_reaper_and_never_rerun(celery_worker, tmp_path, monkeypatch):
    key = f"e2e-runs-{uuid.uuid4().hex}"
    # No beat here: the surviving worker's heartbeat thread finds the dead one (reaper.reap_stale).
    with worker_process(tmp_path / "victim.log", queues="victim", name="victim") as victim:
        execution = start_on(victim, long_running(key), monkeypatch)
        wait_until_running(victim, key)
        # SIGKILL the worker and everything under it (pool processes and the script): the host is gone.
        kill_tree(victim.proc.pid)
        victim.proc.wait()
        killed_at = time.monotonic()

        resolved_in = seconds_until_resolved(execution, killed_at, limit=15)

    execution.refresh_from_db()
    lost = f"failed: worker lost (its worker {execution.worker_name} stopped heartbeating)"
    assert (execution.status, execution.status_reason) == (ExecutionStatus.FAILED, lost)
    assert list(execution.steps.order_by("position").values_list("status", flat=True)) == [
        StepStatus.FAILED,
        StepStatus.SKIPPED,
    ]
    # The message is redelivered one day; a healthy worker that gets it must run nothing.
    run_execution.apply_async(args=[str(execution.id)], queue="default")
    celery_worker.wait_for_log(f"execution {execution.id} is not pending")
    assert run_count(key) == 1
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.FAILED
    print(f"worker killed: execution failed {resolved_in:.1f} s later")


def test_a_solo_pool_worker_heartbeats_from_its_main_process_too(celery_worker, tmp_path, monkeypatch):
    """--pool solo runs the step in the main process itself: the heartbeat thread beats beside it."""
    package = make_package("solo_slow", {"slow.py": "import time; time.sleep(8)"})
    env = {"CELERY_WORKER_POOL": "solo"}  # celery's CLI reads its options from CELERY_WORKER_* variables
    with worker_process(tmp_path / "solo.log", queues="solo", name="solo", env=env) as solo:
        assert "(solo)" in solo.log()
        execution = start_on(solo, package, monkeypatch)
        deadline = time.monotonic() + 30
        while not Execution.objects.filter(pk=execution.pk, steps__status=StepStatus.RUNNING).exists():
            assert time.monotonic() < deadline, solo.log()
            time.sleep(0.1)
        claimed_at = Execution.objects.get(pk=execution.pk).heartbeat_at
        beats = set()
        while Execution.objects.filter(pk=execution.pk, steps__status=StepStatus.RUNNING).exists():
            beats.add(Execution.objects.get(pk=execution.pk).heartbeat_at)
            time.sleep(0.2)
        assert len(beats - {claimed_at}) >= 2, beats  # every 3 s during the 8 s step
        seconds_until_resolved(execution, time.monotonic(), limit=10)
        assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED, solo.log()
