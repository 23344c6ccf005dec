"""A worker SIGKILLed mid-step: the reaper resolves its execution, and no step ever runs twice."""

import contextlib
import time
import uuid

import psutil
import pytest

from executions.models import Execution, ExecutionStatus, StepStatus
from tests.e2e.conftest import counting_script, run_count, start_on, worker_process
from tests.factories import make_package
from workers.reaper import reap
from workers.tasks import run_execution

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_killed_worker_s_execution_is_failed_by_the_reaper_and_never_rerun(
    celery_worker, tmp_path, settings, monkeypatch
):
    settings.EXECUTOR_LEASE_SECONDS = 5
    key = f"e2e-runs-{uuid.uuid4().hex}"
    script = counting_script(key, then="import time; time.sleep(60)\n")
    package = make_package("henry_long", {"long.py": script, "after.py": "print('after')"}, network_access=True)
    # A worker on its own queue, heartbeating every second with a 5 s lease.
    lease = {"EXECUTOR_HEARTBEAT_SECONDS": "1", "EXECUTOR_LEASE_SECONDS": "5"}
    with worker_process(tmp_path / "victim.log", queues="victim", name="victim", env=lease) as victim:
        execution = start_on(victim, package, monkeypatch)
        deadline = time.monotonic() + 30
        while run_count(key) == 0:
            assert time.monotonic() < deadline, victim.log()
            time.sleep(0.1)
        # SIGKILL the worker and everything under it (pool processes and the script), as the OOM killer would.
        main = psutil.Process(victim.proc.pid)
        for process in [*main.children(recursive=True), main]:
            with contextlib.suppress(psutil.NoSuchProcess):  # died with its parent meanwhile (--die-with-parent)
                process.kill()
        victim.proc.wait()
    killed_at = time.monotonic()

    while reap().failed == 0:
        assert time.monotonic() - killed_at < 60, "the reaper did not resolve the execution within 60 s"
        time.sleep(0.5)

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.status_reason.startswith("failed: worker lost (victim-")
    assert list(execution.steps.order_by("position").values_list("status", flat=True)) == [
        StepStatus.FAILED,
        StepStatus.SKIPPED,
    ]
    # The message is redelivered one day; a healthy worker that gets it must run nothing.
    run_execution.apply_async(args=[str(execution.id)], queue="default")
    celery_worker.wait_for_log(f"execution {execution.id} is not pending")
    assert run_count(key) == 1
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.FAILED
