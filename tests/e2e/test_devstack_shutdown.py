"""`make run` (bin/devstack.py) with DATABASE_URL set: it serves the admin and its static files (DEBUG is off, so
through collectstatic's manifest), and on Ctrl-C while a step runs the step finishes within the grace period, its
run is handed over (here no other worker takes it: it waits, pending), and every process of the stack exits."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from executions.models import Execution, ExecutionStatus, StepStatus
from tests.e2e.admin_pages import login_page_and_stylesheets
from tests.e2e.processes import (
    BASE_DIR,
    TEST_WORKER_ENV,
    children,
    command_line,
    database_url_for_tests,
    devstack_process,
    free_port,
    left_running,
    wait_until,
)
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
GRACE_SECONDS = 20
# A step that runs until the test lets it finish (a file `go` beside it), instead of for a fixed time: the Ctrl-C must
# reach the worker while it runs however long the web takes to stop first.
RUNS_UNTIL_RELEASED = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.05)\nprint('finished')\n"


def release(execution: Execution) -> None:
    """Let the step of RUNS_UNTIL_RELEASED finish: `go` in its working directory, its workspace's package/ (in the
    temporary directory, or in a worker slot's area there for a warm step)."""
    work_dir = Path(tempfile.gettempdir())
    [workspace] = [*work_dir.glob(f"executor-{execution.id}-*"),
                   *work_dir.glob(f"executor-slot-*/executor-{execution.id}-*")]  # fmt: skip
    (workspace / "package" / "go").touch()


@pytest.fixture
def devstack(tmp_path):
    """`make run` against the test database, with its own embedded Redis (no other worker of this test run can
    take its messages) and a free port."""
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    env.update(TEST_WORKER_ENV, DATABASE_URL=database_url_for_tests(), EXECUTOR_DATA_DIR=str(tmp_path / "data"),
               EXECUTOR_PORT=str(free_port()), EXECUTOR_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS))  # fmt: skip
    with devstack_process(env, tmp_path / "devstack.log") as stack:
        yield env, stack.log_path, stack.proc


def test_make_run_serves_the_admin_and_ctrl_c_lets_the_running_step_finish_and_stops_everything(devstack):
    env, log_path, proc = devstack
    served = login_page_and_stylesheets(f"http://127.0.0.1:{env['EXECUTOR_PORT']}")
    assert set(served.values()) == {200} and any("admin/css/base." in path for path in served), served
    package = make_package("uma_ctrl_c", {"slow.py": RUNS_UNTIL_RELEASED, "next.py": "print('next')"})
    started = subprocess.run([sys.executable, "manage.py", "run_package", package.package_name], cwd=BASE_DIR,
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    execution = Execution.objects.get(package=package)
    deadline = time.monotonic() + 60
    while not execution.steps.filter(position=1, status=StepStatus.RUNNING).exists():
        assert time.monotonic() < deadline, log_path.read_text()[-4000:]
        time.sleep(0.1)
    stack = children(proc.pid, recursive=True)

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its foreground process group
    # The stack stops the web first, then the worker: the step runs on until the worker is shutting down.
    shutting_down = "Warm shutdown: running steps get"  # the worker's own line (workers/shutdown.py)
    wait_until(lambda: shutting_down in log_path.read_text(), 60, lambda: log_path.read_text()[-4000:])
    release(execution)
    assert proc.wait(timeout=GRACE_SECONDS + 60) == 130, log_path.read_text()[-4000:]

    slow, following = execution.steps.order_by("position")
    assert (slow.status, slow.stdout, slow.status_reason) == (StepStatus.COMPLETED, "finished\n", ""), (
        log_path.read_text()[-4000:]
    )
    execution.refresh_from_db()
    assert (execution.status, following.status) == (ExecutionStatus.PENDING, StepStatus.PENDING)
    assert execution.status_reason.startswith("handed over by worker@")
    alive = left_running(stack, timeout=15)
    assert alive == [], f"still running after Ctrl-C: {[command_line(process) for process in alive]}"
    assert "still running: SIGKILL" not in log_path.read_text()  # each stopped within its grace
