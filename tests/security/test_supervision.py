"""Supervision and honest statuses: whatever fails after a step's process started, that process is killed and
reaped, and the ledger says what happened (the worker's fault, a sandbox that could not start) instead of blaming
the script. The step loop runs in this process against the real database and a real sandbox."""

import sys
from pathlib import Path

import psutil
import pytest

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import add_secret, make_package
from workers import isolation, runner, sandbox
from workers.isolation import SandboxUnavailable

pytestmark = pytest.mark.django_db
SECRET = "tok-never-in-a-reason-4321"


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)


def run(package) -> Execution:
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    execution.refresh_from_db()
    return execution


def test_a_reader_thread_that_cannot_start_kills_and_reaps_the_step_and_fails_only_that_step(monkeypatch):
    started_pids = []
    real_popen = sandbox.subprocess.Popen

    def recording_popen(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        started_pids.append(process.pid)
        return process

    def cannot_start(self):
        raise RuntimeError(f"can't start new thread (while {SECRET} was in scope)")

    isolation.check_sandbox()  # its own run, which would meet the same failure, is done once per process
    monkeypatch.setattr(sandbox.subprocess, "Popen", recording_popen)
    monkeypatch.setattr(sandbox._CappedReader, "start", cannot_start)
    package = make_package(
        files={"main.py": "import time; time.sleep(60)", "after.py": "print(1)", "config.json": "{}"}
    )
    add_secret(package=package, name="TOKEN", value=SECRET)

    execution = run(package)

    main, after, config = execution.steps.order_by("position")
    assert (main.status, main.status_reason) == (
        StepStatus.FAILED,
        "failed: internal error in the worker: RuntimeError: can't start new thread (while ****** was in scope)",
    )
    assert [(step.status, step.status_reason) for step in (after, config)] == [
        (StepStatus.SKIPPED, "skipped: earlier step failed")
    ] * 2
    assert execution.status == ExecutionStatus.FAILED
    assert len(started_pids) == 1 and not psutil.pid_exists(started_pids[0])  # killed and reaped: not a zombie
    assert [child for child in psutil.Process().children(recursive=True)] == []


def test_a_sandbox_that_cannot_start_is_reported_as_such_not_as_the_script_s_exit_code(monkeypatch, tmp_path):
    real_isolation_for = runner.isolation_for

    def with_a_missing_directory(writable, **kwargs):  # as if the work directory vanished under the worker
        return real_isolation_for([*writable, tmp_path / "gone"], **kwargs)

    monkeypatch.setattr(runner, "isolation_for", with_a_missing_directory)
    package = make_package(files={"main.py": "print('never runs')", "after.py": "print(1)"})

    execution = run(package)

    main, after = execution.steps.order_by("position")
    assert main.status == StepStatus.FAILED
    assert main.status_reason.startswith("failed: sandbox could not start: bwrap: Can't find source path")
    assert str(tmp_path / "gone") in main.status_reason
    assert main.stdout == "" and after.status == StepStatus.SKIPPED


def test_run_process_reports_a_sandbox_that_could_not_start(tmp_path):
    broken = isolation.isolation_for([tmp_path / "missing"], network=False, uid=None)

    result = sandbox.run_process(["/bin/true"], cwd=str(tmp_path), env={"PATH": "/usr/bin"}, timeout_seconds=10,
                                 output_cap_bytes=4096, isolation=broken)  # fmt: skip

    assert "Can't find source path" in result.sandbox_error and result.exit_code != 0
    working = isolation.isolation_for([tmp_path], network=False, uid=None)
    fine = sandbox.run_process(["/bin/sh", "-c", "exit 3"], cwd=str(tmp_path), env={"PATH": "/usr/bin"},
                               timeout_seconds=10, output_cap_bytes=4096, isolation=working)  # fmt: skip
    assert (fine.sandbox_error, fine.exit_code) == ("", 3)  # the script's own failure stays the script's


def test_the_self_test_refuses_a_sandbox_without_the_seccomp_filter(monkeypatch):
    monkeypatch.setattr(isolation, "step_filter", lambda: b"")

    with pytest.raises(SandboxUnavailable) as refused:
        isolation.check_sandbox.__wrapped__()

    assert "no seccomp filter" in str(refused.value)
    assert "the step can create user namespaces" in str(refused.value)


def test_the_self_test_passes_with_the_real_sandbox():
    isolation.check_sandbox.__wrapped__()  # raises SandboxUnavailable otherwise


def test_private_files_without_a_sandbox_are_removed_after_the_step(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    reader = "import sys; print(open(sys.argv[1]).read())"

    result = sandbox.run_process(
        [sys.executable, "-c", reader, str(private / "argv.json")], cwd=str(tmp_path), env={"PATH": "/usr/bin"},
        timeout_seconds=10, output_cap_bytes=4096, private_files={str(private / "argv.json"): b'{"k": 1}'},
    )  # fmt: skip

    assert result.stdout == '{"k": 1}\n'
    assert list(Path(private).iterdir()) == []
