"""Health of real processes: `manage.py check_health` run as docker-compose's health checks run it (a separate
process, its exit status and one line) against a real worker and a real beat, and the admin dashboard listing them.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from executions.models import TriggerType
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from executor_project import liveness
from tests.e2e import processes
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
HOST = socket.gethostname()
# A worker whose main thread (the consumer's event loop) blocks for 30 s on SIGUSR2, while the rest of the process,
# its heartbeat thread included, goes on: what a hung broker connection or a blocking call in the loop looks like.
STUCK_ON_SIGUSR2 = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGUSR2, lambda *_: time.sleep(30))\n"
    "from celery.__main__ import main\n"
    "sys.exit(main())\n"
)


def node_name(worker: processes.Worker) -> str:
    return worker.argv[worker.argv.index("--hostname") + 1].replace("%h", HOST)


def check_health(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python manage.py check_health ...`, as the compose file's health checks run it."""
    argv = [sys.executable, "manage.py", "check_health", *args]
    env = env or processes.environment_for_tests()
    return subprocess.run(argv, cwd=processes.BASE_DIR, env=env, capture_output=True, text=True, timeout=60)


def entry_of(name: str, condition=lambda entry: True, timeout: float = 15) -> dict:
    def found():
        entry = liveness.read_all().get(name)
        return entry if entry is not None and condition(entry) else None

    return processes.wait_until(found, timeout, lambda: f"no matching liveness entry of {name}: "
                                                        f"{liveness.read_all().get(name)}")  # fmt: skip


def test_a_running_worker_is_healthy_and_listed_with_its_running_step_and_a_missing_one_is_not(
    celery_worker, admin_client
):
    name = node_name(celery_worker)
    entry_of(name)

    result = check_health("worker", "--name", name)

    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, f"{name}: healthy", "")
    missing = check_health("worker", "--name", f"nobody-{uuid.uuid4().hex[:6]}@{HOST}")
    assert (missing.returncode, missing.stdout, len(missing.stderr.strip().splitlines())) == (1, "", 1)
    assert "no worker of that name has recorded its liveness" in missing.stderr
    package = make_package("henry_sleeps", {"sleep.py": "import time; time.sleep(4)"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    entry = entry_of(name, lambda entry: entry["running"] == 1)
    assert entry["lanes"] == sorted(processes.LANES.split(","))
    assert (entry["slots"], entry["pool"], entry["kind"]) == (2, "prefork", "worker")
    page = admin_client.get("/admin/").content.decode()
    assert "Workers and beat" in page
    row = page[page.index(f'<td class="executor-nowrap">{name}</td>') :].split("</tr>")[0]
    assert "maintenance, priority, scheduled, slow" in row and "<td>2</td><td>1</td>" in row and "healthy" in row
    wait_until_finished(execution, timeout=30)


def test_a_worker_whose_consumer_is_stuck_is_unhealthy_though_its_heartbeat_goes_on(transactional_db, tmp_path):
    queue = f"health-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-c", STUCK_ON_SIGUSR2, *processes.worker_argv(queue, f"stuck-{queue}@%h",
                                                                            *processes.QUIET_CLUSTER)[3:]]  # fmt: skip
    env = processes.environment_for_tests(EXECUTOR_HEARTBEAT_SECONDS="1")
    worker = processes.Worker("stuck", argv, env, tmp_path / "stuck.log", queue)
    try:
        worker.start(timeout=60)
        name = node_name(worker)
        entry_of(name)
        assert liveness.verdict("worker", liveness.read_all(), time.time(), 3, name) is None

        os.kill(worker.pid, signal.SIGUSR2)
        time.sleep(3.5)  # and the check's own start, over a second
        result = check_health("worker", "--name", name, "--stale", "3")
        entry = liveness.read_all()[name]
    finally:
        worker.kill()

    assert result.returncode == 1
    assert "its consumer's event loop has not turned for" in result.stderr, result.stderr
    assert time.time() - entry["at"] < 3  # the heartbeat thread itself went on beating


def test_beat_is_healthy_while_it_ticks_and_unhealthy_once_it_stops(beat, admin_client):
    name = f"beat@{HOST}"
    entry_of(name, lambda entry: entry["pid"] == beat.pid)

    healthy = check_health("beat", "--name", name)
    page = admin_client.get("/admin/").content.decode()
    os.kill(beat.pid, signal.SIGSTOP)  # alive, its loop frozen
    try:
        time.sleep(3.5)  # and the check's own start, over a second
        stopped = check_health("beat", "--name", name, "--stale", "3")
    finally:
        beat.kill()  # no soft stop to wait for

    assert (healthy.returncode, healthy.stdout.strip()) == (0, f"{name}: healthy")
    assert f'<td class="executor-nowrap">{name}</td>' in page
    assert stopped.returncode == 1
    assert stopped.stderr.startswith(f"{name}: last tick ") and "(limit 3 s)" in stopped.stderr
