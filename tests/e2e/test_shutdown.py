"""SIGTERM (a deploy): the worker finishes its step and hands the rest of the run to another worker, whether the
signal reaches its main process only or its whole process group (honcho, systemd, a terminal's Ctrl-C)."""

import os
import signal
import time
import uuid

import psutil
import pytest

from executions.models import Execution, ExecutionStatus, StepStatus
from executions.waiting import wait_until_finished
from tests.e2e.processes import left_running, pool_processes, worker_process
from tests.e2e.runs import counting_script, run_count, start_on
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def start_on_leaving_worker(package, leaving, monkeypatch) -> Execution:
    """Run the package on the `leaving` worker only (its own queue), and wait until its first step runs."""
    execution = start_on(leaving, package, monkeypatch)
    deadline = time.monotonic() + 30
    while not execution.steps.filter(position=1, status=StepStatus.RUNNING).exists():
        assert time.monotonic() < deadline, leaving.log()
        time.sleep(0.05)
    return execution


@pytest.fixture
def leaving_worker(tmp_path):
    """A worker on a queue of its own, with a 2 s shutdown grace period; the test SIGTERMs it."""
    queue = f"leaving-{uuid.uuid4().hex[:8]}"
    env = {"EXECUTOR_SHUTDOWN_GRACE_SECONDS": "2"}
    with worker_process(tmp_path / "leaving.log", queues=queue, name="leaving", env=env) as worker:
        yield worker


def stop(worker) -> float:
    """SIGTERM the worker; seconds until it exited."""
    started = time.monotonic()
    worker.proc.terminate()
    assert worker.proc.wait(timeout=30) == 0, worker.log()
    return time.monotonic() - started


def test_the_running_step_finishes_and_the_next_runs_on_another_worker(celery_worker, leaving_worker, monkeypatch):
    key = f"e2e-runs-{uuid.uuid4().hex}"
    first = counting_script(key, then="import time; time.sleep(1); print('first done')\n")
    package = make_package("olga_handover", {"first.py": first, "second.py": "print('second')"}, network_access=True)
    execution = start_on_leaving_worker(package, leaving_worker, monkeypatch)

    stop(leaving_worker)
    execution = wait_until_finished(execution, timeout=60)

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.worker_name.startswith("e2e-")  # the session's worker finished it
    assert "handed over to another worker" in leaving_worker.log()
    first_step, second_step = execution.steps.order_by("position")
    assert (first_step.status, first_step.stdout) == (StepStatus.COMPLETED, "first done\n")
    assert (second_step.status, second_step.stdout) == (StepStatus.COMPLETED, "second\n")
    assert run_count(key) == 1


def test_a_step_still_running_after_the_grace_period_fails_saying_why(celery_worker, leaving_worker, monkeypatch):
    package = make_package("pia_too_long", {"long.py": "import time; time.sleep(120)", "next.py": "print('next')"})
    execution = start_on_leaving_worker(package, leaving_worker, monkeypatch)

    assert stop(leaving_worker) < 15  # the 2 s grace period, not the script's 120 s

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert list(execution.steps.order_by("position").values_list("status", "status_reason")) == [
        (StepStatus.FAILED, "failed: interrupted, its worker shut down and the step was still running after 2 s"),
        (StepStatus.SKIPPED, "skipped: earlier step failed"),
    ]


def test_where_the_package_allows_a_retry_the_cut_off_step_runs_again_elsewhere(
    celery_worker, leaving_worker, monkeypatch
):
    key = f"e2e-runs-{uuid.uuid4().hex}"
    slow = counting_script(key, then="import time; time.sleep(4); print('finished')\n")
    package = make_package("quinn_retry", {"slow.py": slow}, network_access=True, retries_after_worker_loss=1)
    execution = start_on_leaving_worker(package, leaving_worker, monkeypatch)

    stop(leaving_worker)
    execution = wait_until_finished(execution, timeout=60)

    assert (execution.status, execution.retries) == (ExecutionStatus.COMPLETED, 1)
    assert execution.steps.get().stdout == "finished\n"
    assert run_count(key) == 2  # cut off once, then run in full


@pytest.fixture
def worker_group(tmp_path):
    """A worker on a queue of its own, in a session of its own, with a 20 s grace period."""
    queue = f"group-{uuid.uuid4().hex[:8]}"
    env = {"EXECUTOR_SHUTDOWN_GRACE_SECONDS": "20"}
    with worker_process(tmp_path / "group.log", queues=queue, name="group", env=env, own_session=True) as worker:
        yield worker


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_worker_s_whole_process_group_lets_the_step_finish_and_hands_the_rest_over(
    celery_worker, worker_group, monkeypatch, signum
):
    """What honcho or `kill -- -pgid` (SIGTERM) and a terminal's Ctrl-C (SIGINT) do: every process of the group gets
    the signal. The pool processes do not die of it, the step finishes, the next step runs on another worker, nobody
    is lost."""
    key = f"e2e-runs-{uuid.uuid4().hex}"
    first = counting_script(key, then="import time; time.sleep(3); print('first done')\n")
    package = make_package("rita_group", {"first.py": first, "second.py": "print('second')"}, network_access=True)
    execution = start_on_leaving_worker(package, worker_group, monkeypatch)
    pool = [process.pid for process in pool_processes(worker_group.pid)]

    os.killpg(worker_group.proc.pid, signum)
    exit_code = worker_group.proc.wait(timeout=60)
    execution = wait_until_finished(execution, timeout=60)

    first, second = execution.steps.order_by("position")
    assert (first.status, first.stdout, first.status_reason) == (StepStatus.COMPLETED, "first done\n", ""), (
        worker_group.log()
    )
    assert (second.status, second.stdout) == (StepStatus.COMPLETED, "second\n")
    assert (execution.status, execution.retries) == (ExecutionStatus.COMPLETED, 0)
    assert execution.worker_name.startswith("e2e-")  # the session's worker ran the second step
    assert run_count(key) == 1
    log = worker_group.log()
    assert "handed over to another worker" in log and "WorkerLostError" not in log
    if signum == signal.SIGTERM:  # (pool processes ignore SIGINT; the main process's SIGUSR2 tells them)
        assert "received SIGTERM while running a task: taken as a shutdown request" in log
    assert exit_code == 0 or signum == signal.SIGINT  # (Celery exits 1 after Ctrl-C)
    assert not any(psutil.pid_exists(pid) for pid in pool)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_to_the_group_stops_the_step_at_once_and_nothing_hangs(worker_group, monkeypatch, signum):
    """Pressed twice (Ctrl-C: Celery's cold shutdown then sends the pool processes SIGTERM; or a supervisor that
    insists): the grace period ends at once; the step is stopped and recorded like one still running at the end of
    the grace period; every process exits."""
    package = make_package("sam_insists", {"long.py": "import time; time.sleep(120)", "next.py": "print('next')"})
    execution = start_on_leaving_worker(package, worker_group, monkeypatch)
    everything = [worker_group.proc.pid, *pool_processes(worker_group.pid)]

    started = time.monotonic()
    os.killpg(worker_group.proc.pid, signum)
    time.sleep(1)
    os.killpg(worker_group.proc.pid, signum)
    worker_group.proc.wait(timeout=30)

    assert time.monotonic() - started < 15, worker_group.log()  # not the 20 s grace period, nor the script's 120 s
    execution.refresh_from_db()
    long_step, next_step = execution.steps.order_by("position")
    assert long_step.status_reason.startswith("failed: interrupted"), worker_group.log()
    assert "received SIGTERM while running a task: the grace period ended at once" in worker_group.log()
    assert next_step.status == StepStatus.SKIPPED and execution.status == ExecutionStatus.FAILED
    assert left_running(everything, timeout=10) == []
