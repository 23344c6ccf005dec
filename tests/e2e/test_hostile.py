"""Hostile scripts on a real worker: each is contained, reported with the right status, and the worker carries on.

The worker here has tight limits (256 MiB address space, 2 CPU seconds, 64 processes) and a queue of its own.
"""

import json
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from executions.cancel import request_cancel
from executions.models import ExecutionStatus, StepStatus
from executions.waiting import wait_until_finished
from tests.e2e.processes import worker_process
from tests.e2e.runs import run_on, start_on, step_processes
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LIMITS = {"EXECUTOR_STEP_MEMORY_MB": "256", "EXECUTOR_STEP_CPU_SECONDS": "2", "EXECUTOR_STEP_PROCESSES": "64"}


@pytest.fixture(scope="module")
def hostile_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    queue = f"hostile-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path_factory.mktemp("hostile") / "worker.log"
    with django_db_blocker.unblock(), worker_process(log_path, queues=queue, name="hostile", env=LIMITS) as worker:
        yield worker


@pytest.fixture(autouse=True)
def worker_still_healthy(hostile_worker, monkeypatch):
    """After every attack: the worker process is alive, nothing of the script is left, and the next run works."""
    yield
    assert hostile_worker.proc.poll() is None, hostile_worker.log()[-3000:]
    assert step_processes() == []
    after = run_on(
        hostile_worker, make_package(f"after_{uuid.uuid4().hex[:8]}", {"ok.py": "print('fine')"}), monkeypatch
    )
    assert (after.status, after.steps.get().stdout) == (ExecutionStatus.COMPLETED, "fine\n")


def run_script(code: str, worker, monkeypatch, **package_fields):
    package = make_package(f"hostile_{uuid.uuid4().hex[:8]}", {"attack.py": code}, **package_fields)
    return run_on(worker, package, monkeypatch).steps.get()


FORK_BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""


def test_a_fork_bomb_is_stopped_by_the_process_limit_and_the_timeout(hostile_worker, monkeypatch):
    step = run_script(FORK_BOMB, hostile_worker, monkeypatch, step_timeout_seconds=5)
    assert (step.status, step.status_reason) == (StepStatus.FAILED, "failed: timed out after 5 s")


def test_a_memory_hog_hits_the_memory_limit(hostile_worker, monkeypatch):
    step = run_script("hog = []\nwhile True:\n    hog.append(bytearray(16 * 1024 * 1024))", hostile_worker, monkeypatch)
    assert (step.status, step.status_reason) == (StepStatus.FAILED, "failed: memory limit")


def test_an_infinite_loop_hits_the_cpu_limit(hostile_worker, monkeypatch):
    step = run_script("while True:\n    pass", hostile_worker, monkeypatch)
    assert (step.status, step.status_reason) == (StepStatus.FAILED, "failed: CPU time limit")


def test_100_mb_of_output_is_capped_with_a_visible_marker(hostile_worker, monkeypatch):
    flood = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(100 * 1024):\n    sys.stdout.write(line)"
    step = run_script(flood, hostile_worker, monkeypatch)
    cap = settings.EXECUTOR_OUTPUT_CAP_BYTES
    dropped = 100 * 1024 * 1024 - cap
    assert step.status == StepStatus.COMPLETED
    assert step.stdout.endswith(f"\n[output truncated: {dropped} more bytes not kept, limit {cap} bytes]\n")
    assert len(step.stdout) < cap + 200


SNOOP = """
import glob, json, os, sys
params = json.loads(sys.argv[1])
found = {
    "worker_variables": sorted(set(os.environ) & {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "EXECUTOR_FERNET_KEYS"}),
    "environ_of_any_process": [],
    "readable": [path for path in params["paths"] if os.access(path, os.R_OK)],
    "executions_visible": glob.glob("/tmp/executor-*") + glob.glob("/tmp/executor-slot-*/*"),
}
for environ in glob.glob("/proc/[0-9]*/environ"):
    try:
        if b"DATABASE_URL" in open(environ, "rb").read():
            found["environ_of_any_process"].append(environ)
    except OSError:
        pass
print(json.dumps(found))
"""


def test_the_worker_s_environment_settings_password_and_other_runs_are_out_of_reach(
    hostile_worker, monkeypatch, admin_user
):
    neighbour = make_package("neighbour", {"wait.py": "import time; time.sleep(30)"})
    other = start_on(hostile_worker, neighbour, monkeypatch)  # runs in the worker's other slot meanwhile
    deadline = time.monotonic() + 30
    work_dir = Path(settings.EXECUTOR_WORK_DIR or "/tmp")
    while not (workspaces := [*work_dir.glob(f"executor-{other.short_id}-*"),
                              *work_dir.glob(f"executor-slot-*/executor-{other.short_id}-*")]):  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.05)
    base = Path(settings.BASE_DIR)
    paths = [str(base / "executor_project" / "settings.py"), str(base / ".env"), str(base / ".devdata"),
             str(workspaces[0] / "package" / "wait.py"), "/etc/shadow", "/etc/postgresql", "/root/.pgpass",
             "/var/run/postgresql/.s.PGSQL.5432", f"/proc/{hostile_worker.proc.pid}/environ"]  # fmt: skip
    package = make_package("snoop", {"snoop.py": SNOOP})

    execution = run_on(hostile_worker, package, monkeypatch, paths=paths)

    found = json.loads(execution.steps.get().stdout)
    assert found["worker_variables"] == []
    assert found["environ_of_any_process"] == []
    assert found["readable"] == []
    # Its own directory only; a warm step sees its slot's area instead, which it cannot list.
    assert len(found["executions_visible"]) == 1
    assert found["executions_visible"][0].startswith((f"/tmp/executor-{execution.short_id}-", "/tmp/executor-slot-"))
    request_cancel(other, admin_user)
    assert wait_until_finished(other, timeout=30).status == ExecutionStatus.CANCELLED


def test_the_network_is_unreachable_when_the_package_does_not_allow_it(hostile_worker, monkeypatch):
    probe = (
        "import socket\n"
        "for port in (5432, 6379):\n"
        "    try:\n        socket.create_connection(('127.0.0.1', port), timeout=2); print(port, 'reached')\n"
        "    except OSError as exc:\n        print(port, 'blocked')\n"
    )
    assert run_script(probe, hostile_worker, monkeypatch).stdout == "5432 blocked\n6379 blocked\n"


def test_it_cannot_kill_its_parent_or_anything_else(hostile_worker, monkeypatch):
    code = (
        "import os, signal\n"
        "for pid in [os.getppid(), 1, -1]:\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as exc:\n        print(pid, exc.errno, flush=True)\n"
    )
    step = run_script(code, hostile_worker, monkeypatch)
    # Its parent is the sandbox's init (pid 1, not its uid): EPERM; kill(-1) finds nothing it may signal: ESRCH.
    assert (step.status, step.stdout) == (StepStatus.COMPLETED, "1 1\n1 1\n-1 3\n")
