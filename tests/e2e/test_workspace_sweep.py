"""A killed worker's workspace (its package copy, state, outbox and, without the sandbox, the argument file with the
secrets) does not stay on disk: the next worker start on that host or the reaper removes it. A live run's never."""

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from executions import transitions
from executions.models import Execution, ExecutionStatus, StepStatus
from executions.waiting import wait_until_finished
from tests.e2e.processes import kill_tree, worker_process
from tests.e2e.runs import start_on
from tests.factories import make_package
from workers import reaper
from workers.workspace_sweep import sweep

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def worker_on(work_dir: Path, tmp_path: Path, name: str):
    env = {"EXECUTOR_WORK_DIR": str(work_dir), "EXECUTOR_SANDBOX": "off"}  # the mode that keeps argv on disk
    return worker_process(tmp_path / f"{name}.log", queues=f"{name}-{uuid.uuid4().hex[:8]}", name=name, env=env,
                          own_session=True)  # fmt: skip


def running_on(worker, package, monkeypatch) -> Execution:
    execution = start_on(worker, package, monkeypatch)
    deadline = time.monotonic() + 30
    while not execution.steps.filter(status=StepStatus.RUNNING).exists():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    return execution


def workspace_of(execution: Execution, work_dir: Path) -> Path:
    deadline = time.monotonic() + 10
    while not (found := list(work_dir.glob(f"executor-{execution.id}-*"))):
        assert time.monotonic() < deadline, list(work_dir.iterdir())
        time.sleep(0.05)
    return found[0]


def read_its_files(workspace: Path) -> None:
    """`running` is recorded just before the step's process starts: wait until it has read (and so removed) its
    argv and environment files, which EXECUTOR_SANDBOX=off writes to disk."""
    deadline = time.monotonic() + 20
    while list((workspace / "private").iterdir()):
        assert time.monotonic() < deadline, list((workspace / "private").iterdir())
        time.sleep(0.05)


def killed_mid_step(work_dir, tmp_path, monkeypatch, name) -> tuple[Execution, Path]:
    """A worker SIGKILLed (with every process under it) while its step runs: its workspace stays behind."""
    package = make_package(f"{name}_pkg", {"long.py": "import time; time.sleep(120)"})
    with worker_on(work_dir, tmp_path, name) as worker:
        execution = running_on(worker, package, monkeypatch)
        workspace = workspace_of(execution, work_dir)
        read_its_files(workspace)
        kill_tree(worker.proc.pid)  # the step too: without a sandbox it is in a session of its own
        worker.proc.wait(timeout=10)
    assert workspace.is_dir()
    return execution, workspace


def test_a_killed_worker_s_workspace_is_removed_by_the_reaper_run_that_resolves_its_execution(
    work_dir, tmp_path, monkeypatch
):
    execution, workspace = killed_mid_step(work_dir, tmp_path, monkeypatch, "kate")
    # Reaper runs every second from now on (in this process, on this host), the clock a few minutes ahead so
    # that the lease has run out; until one of them fails the execution, its workspace stays.
    start = timezone.now() + timedelta(minutes=5)
    for second in range(120):
        execution.refresh_from_db()
        if execution.status != ExecutionStatus.IN_PROGRESS:
            break
        assert workspace.is_dir()
        reaper.reap(now=start + timedelta(seconds=second))

    assert execution.status == ExecutionStatus.FAILED and "worker lost" in execution.status_reason
    assert not workspace.exists()


def test_a_killed_worker_s_workspace_is_removed_when_a_worker_starts_on_that_host(work_dir, tmp_path, monkeypatch):
    execution, workspace = killed_mid_step(work_dir, tmp_path, monkeypatch, "lena")
    # EXECUTOR_SANDBOX=off: argv[1] was a file on disk only until the step had read it
    assert (workspace / "package" / "long.py").exists() and list((workspace / "private").iterdir()) == []
    # The reaper that resolved it ran on another host: it could not see this directory.
    Execution.objects.filter(pk=execution.pk).update(status=ExecutionStatus.FAILED, lease_owner=transitions.REAPED)

    with worker_on(work_dir, tmp_path, "mona") as worker:
        worker.wait_for_log("removed 1 workspaces of runs that ended without their worker")
        assert not workspace.exists()


def test_a_live_run_s_workspace_is_never_swept(work_dir, tmp_path, monkeypatch):
    package = make_package("nora_live", {"slow.py": "import time; time.sleep(4); print('done')"})
    with worker_on(work_dir, tmp_path, "nora") as worker:
        execution = running_on(worker, package, monkeypatch)
        workspace = workspace_of(execution, work_dir)
        with worker_on(work_dir, tmp_path, "olaf"):  # its start sweeps the same directory
            assert sweep() == 0
            reaper.reap()
            assert workspace.is_dir()
        execution = wait_until_finished(execution, timeout=60)

    assert (execution.status, execution.steps.get().stdout) == (ExecutionStatus.COMPLETED, "done\n")
    assert not workspace.exists()  # the worker removed it itself
