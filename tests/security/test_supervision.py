"""Supervision and honest statuses: whatever fails after a step's process started, that process is killed and
reaped, and the ledger says what happened (the worker's fault, a sandbox that could not start) instead of blaming
the script. The step loop runs in this process against the real database and a real sandbox."""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import add_secret, make_package
from workers import isolation, runner, sandbox, steps, warm
from workers.isolation import SandboxUnavailable
from workers.seccomp import step_filter

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]
SECRET = "tok-never-in-a-reason-4321"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(sandbox, "START_RETRY_SECONDS", (0.05, 0.05, 0.05))


def run(package) -> Execution:
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    execution.refresh_from_db()
    return execution


@pytest.fixture
def started_pids(monkeypatch, settings):
    """The pids of the processes the sandbox module starts in this test, whose steps start cold: these tests are
    about how a cold start is supervised (tests/workers/test_warm.py covers a warm one)."""
    settings.EXECUTOR_WARM_STEPS = False
    warm.stop_servers()  # started by earlier tests in this process: not this test's
    pids = []
    real_popen = sandbox.subprocess.Popen

    def recording_popen(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        pids.append(process.pid)
        return process

    isolation.check_sandbox()  # its own run, which would meet the same failure, is done once per process
    monkeypatch.setattr(sandbox.subprocess, "Popen", recording_popen)
    return pids


def test_an_error_after_the_step_started_kills_and_reaps_it_and_fails_only_that_step(monkeypatch, started_pids):
    def fails(self):
        raise RuntimeError(f"no memory left (while {SECRET} was in scope)")

    monkeypatch.setattr(sandbox._Progress, "tick", fails)
    package = make_package(
        files={"main.py": "import time; time.sleep(60)", "after.py": "print(1)", "config.json": "{}"}
    )
    add_secret(package=package, name="TOKEN", value=SECRET)

    execution = run(package)

    main, after, config = execution.steps.order_by("position")
    assert (main.status, main.status_reason) == (
        StepStatus.FAILED,
        "failed: internal error in the worker: RuntimeError: no memory left (while ****** was in scope)",
    )
    assert [(step.status, step.status_reason) for step in (after, config)] == [
        (StepStatus.SKIPPED, "skipped: earlier step failed")
    ] * 2
    assert execution.status == ExecutionStatus.FAILED
    assert len(started_pids) == 1 and not psutil.pid_exists(started_pids[0])  # killed and reaped: not a zombie
    assert [child for child in psutil.Process().children(recursive=True)] == []


def test_a_thread_that_cannot_start_starts_no_process_and_is_retried_then_reported(monkeypatch, started_pids):
    """The threads that read the output are started before the step's process: a worker short of threads fails
    before the script could run, so the start is tried again, and in the end the step says why."""

    def cannot_start(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(sandbox._CappedReader, "start", cannot_start)
    package = make_package(files={"main.py": "print('never runs')", "after.py": "print(1)"})

    execution = run(package)

    main, after = execution.steps.order_by("position")
    assert (main.status, main.status_reason, main.exit_code) == (
        StepStatus.FAILED, "failed: sandbox could not start: the worker could not start a thread to supervise the step",
        None,
    )  # fmt: skip
    assert after.status == StepStatus.SKIPPED
    assert started_pids == []  # not once
    assert _no_supervising_threads_left()


def test_a_start_that_fails_for_a_moment_is_tried_again_and_the_script_runs_once(monkeypatch, started_pids, tmp_path):
    failures = iter([RuntimeError("can't start new thread")] * 2)
    real_start = sandbox._CappedReader.start

    def fails_twice(self):
        if failure := next(failures, None):
            raise failure
        real_start(self)

    monkeypatch.setattr(sandbox._CappedReader, "start", fails_twice)
    package = make_package(files={"main.py": "print('ran')"})

    execution = run(package)

    assert execution.status == ExecutionStatus.COMPLETED
    assert (execution.steps.get().stdout, len(started_pids)) == ("ran\n", 1)


def test_a_sandbox_that_cannot_start_is_reported_as_such_not_as_the_script_s_exit_code(monkeypatch, tmp_path, settings):
    settings.EXECUTOR_WARM_STEPS = False  # a warm server's sandbox binds the slot's area instead of these directories
    real_isolation_for = steps.isolation_for

    def with_a_missing_directory(writable, **kwargs):  # as if the work directory vanished under the worker
        return real_isolation_for([*writable, tmp_path / "gone"], **kwargs)

    monkeypatch.setattr(steps, "isolation_for", with_a_missing_directory)
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


def _no_supervising_threads_left(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(isinstance(thread, sandbox._ExitWaiter | sandbox._CappedReader) for thread in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_sandbox_killed_after_it_started_is_not_started_again(tmp_path, started_pids):
    """bwrap reported no exit code, but it was killed, not refused: the script may have run, so it is the script's
    outcome, never a retry."""
    printed = threading.Event()
    result = {}

    def run_it():
        result["run"] = sandbox.run_process(
            ["/bin/sh", "-c", "echo ran; sleep 30"], cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"},
            timeout_seconds=60, output_cap_bytes=4096, on_progress=lambda out, err: out and printed.set(),
            isolation=isolation.isolation_for([tmp_path], network=False, uid=None),
        )  # fmt: skip

    runner_thread = threading.Thread(target=run_it)
    runner_thread.start()
    assert printed.wait(timeout=30)
    psutil.Process(started_pids[0]).kill()  # prlimit exec'd bwrap: the outer bwrap
    runner_thread.join(timeout=30)

    assert (result["run"].exit_code, result["run"].sandbox_error, result["run"].stdout) == (-9, "", "ran\n")
    assert len(started_pids) == 1


SYSTEM_PYTHON = "/usr/bin/python3"
UNPRIVILEGED_UID = settings.EXECUTOR_STEP_UID_BASE + 95  # no worker slot of this test run has it
DRIVER = """
import json, logging, sys
sys.path.insert(0, sys.argv[1])
from workers.sandbox import Isolation, run_process
logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
spec = json.loads(sys.argv[2])
isolation = spec["bwrap"] and Isolation(
    bwrap=spec["bwrap"], read_only=(), writable=(spec["dir"],), network=False, tmp_size_bytes=10**7,
    memory_bytes=2**31, cpu_seconds=30, file_size_bytes=10**8, open_files=64, processes=spec["processes"], uid=None,
    seccomp=bytes.fromhex(spec["seccomp"]))
result = run_process(spec["argv"], cwd=spec["dir"], env={"PATH": "/usr/bin:/bin"}, timeout_seconds=20,
                     output_cap_bytes=65536, isolation=isolation or None)
print(json.dumps({"exit_code": result.exit_code, "stdout": result.stdout, "sandbox_error": result.sandbox_error}))
"""
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root (to become an unprivileged uid) and Debian's python3",
)


@pytest.fixture
def workspace():
    """A directory of the unprivileged uid's (pytest's tmp_path is not reachable for it)."""
    directory = Path(tempfile.mkdtemp(prefix="executor-h5-nproc-"))
    os.chown(directory, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    yield directory
    shutil.rmtree(directory)


@needs_root
@pytest.mark.parametrize(
    "mode, what_fails",
    [
        ("threads", "the worker could not start a thread to supervise the step"),  # "can't start new thread"
        ("bwrap", "bwrap: Creating new namespace failed: Resource temporarily unavailable"),  # fork/clone: EAGAIN
    ],
)
def test_a_worker_out_of_processes_for_a_moment_runs_the_step_once_when_they_are_back(workspace, mode, what_fails):
    """A worker that is not root (the Docker image's mode) shares RLIMIT_NPROC with everything its uid runs. With
    other processes of that uid filling the limit, the worker cannot start a thread (`threads`: its own limit) or
    bwrap cannot fork the sandbox (`bwrap`: the step's limit, which prlimit sets). When they end, the next attempt
    starts the script, once. Real processes and real limits; the sandbox module runs as it does in a worker."""
    spec = {
        "dir": str(workspace), "argv": ["/bin/sh", "-c", f"echo ran; echo ran >> {workspace}/count"],
        "bwrap": isolation.bwrap_binary() if mode == "bwrap" else "", "processes": 10,
        "seccomp": step_filter().hex(),
    }  # fmt: skip
    as_that_uid = {"user": UNPRIVILEGED_UID, "group": UNPRIVILEGED_UID, "extra_groups": [], "cwd": workspace}
    others = [subprocess.Popen(["sleep", "60"], **as_that_uid) for _ in range(6)]
    own_limit = 7 if mode == "threads" else resource.getrlimit(resource.RLIMIT_NPROC)[0]  # 6 others + the worker
    try:
        worker = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", DRIVER, str(settings.BASE_DIR), json.dumps(spec)], **as_that_uid,
            env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NPROC, (own_limit, own_limit)),
        )  # fmt: skip
        first_failure = worker.stderr.readline()
    finally:
        for other in others:
            other.kill()
            other.wait()
    stdout, stderr = worker.communicate(timeout=60)

    assert f"the step's sandbox could not start ({what_fails}): trying again in 0.5 s" in first_failure, stderr
    assert json.loads(stdout) == {"exit_code": 0, "stdout": "ran\n", "sandbox_error": ""}, stderr
    assert (workspace / "count").read_text() == "ran\n"
