"""Warm steps (workers/warm.py, workers/runtime/zygote.py) with real sandboxes: each step starts from the server's
clean state, nothing one step does reaches the next, and a server that dies is replaced without failing a step
that had not started.

The runner runs in this process, as a worker's pool process does, so this process owns the servers.
"""

import json
import os
import signal
import time

import psutil
import pytest

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.e2e.runs import step_processes
from tests.factories import add_secret, make_package
from workers import runner, warm

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]

# Prints what a step finds of the one before it, then changes all of it (the first run finds nothing).
TAMPER = """
import json, os, subprocess, sys, time, requests
found = {
    "preloaded": "ferris_cli.v2" in sys.modules,  # imported by the server, not by this script
    "global": getattr(sys, "left_by_a_step", None),
    "patched": getattr(requests.get, "left_by_a_step", False),
    "cwd": os.getcwd() == os.path.dirname(os.path.abspath(__file__)),
    "module": "left_by_a_step" in sys.modules,
    "tmp": "left_by_a_step" in os.listdir("/tmp"),  # (/tmp also holds the mount points of the sandbox's binds)
    "processes": sorted(p for p in os.listdir("/proc") if p.isdigit() and p not in ("1", str(os.getpid()))),
    "variable": os.environ.get("LEFT_BY_A_STEP"),
    "argv": sys.argv[0],
    "param": json.loads(sys.argv[1]).get("round"),
    "tz": time.tzname[0],
}
print(json.dumps(found))
sys.left_by_a_step = "global"
requests.get = lambda *a, **k: "patched"
requests.get.left_by_a_step = True
sys.modules["left_by_a_step"] = sys
os.environ["LEFT_BY_A_STEP"] = "yes"
open("/tmp/left_by_a_step", "w").write("x")
os.chdir("/tmp")
subprocess.Popen(["sleep", "300"], start_new_session=True)  # a leftover in a session of its own
"""


@pytest.fixture(autouse=True)
def fresh_servers():
    """Each test starts with no server, and no pause after an earlier test's failed one."""
    warm.stop_servers()
    yield
    warm.stop_servers()


def run(package, **params) -> Execution:
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    execution.refresh_from_db()
    return execution


def first_output(execution: Execution) -> dict:
    return json.loads(execution.steps.order_by("position").first().stdout)


def servers() -> list[psutil.Process]:
    """This process's warm-step servers: the sandboxed zygotes, bubblewrap's children (not their spare child)."""
    return [
        p for p in psutil.Process().children(recursive=True)
        if p.cmdline()[-1:] == [str(warm.ZYGOTE)] and p.parent().name() == "bwrap"
    ]  # fmt: skip


def test_a_step_cannot_affect_the_next_one(settings):
    package = make_package(files={"tamper.py": TAMPER}, timezone="Asia/Tokyo")

    rounds = [first_output(run(package, round=number)) for number in range(3)]

    assert rounds[0]["preloaded"] and rounds[1]["preloaded"], "the steps did not run warm"
    for found, number in zip(rounds, range(3), strict=True):
        assert found == {
            "preloaded": True, "global": None, "patched": False, "cwd": True, "module": False, "tmp": False,
            "processes": [], "variable": None, "argv": "tamper.py", "param": number, "tz": "JST",
        }  # fmt: skip
    assert step_processes() == []  # the last round's leftover too: nothing runs as a slot's uid


def test_steps_of_one_execution_run_warm_and_share_only_their_workspace():
    package = make_package(files={
        "write.py": "open('note.txt', 'w').write('from step 1')",
        "read.py": "import sys; print(open('note.txt').read(), 'ferris_ef.base' in sys.modules)",
    })  # fmt: skip

    execution = run(package)

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.steps.get(position=2).stdout == "from step 1 True\n"


def test_secrets_reach_the_step_and_never_the_server_s_command_line_or_environment():
    package = make_package(files={"show.py": "import json, sys; print(json.loads(sys.argv[1])['secrets']['TOKEN'])"})
    add_secret(package=package, name="TOKEN", value="s3cret-value-for-warm")
    run(package)  # the server is running after this

    execution = run(package)

    assert execution.steps.get().stdout == "******\n"  # printed by the step, masked in what is stored
    for server in servers():
        assert "s3cret-value-for-warm" not in " ".join(server.cmdline())
        assert "s3cret-value-for-warm" not in str(server.environ())


def test_a_server_killed_while_a_step_runs_fails_that_step_and_the_next_step_completes():
    package = make_package(
        files={"wait.py": "import time; print('waiting', flush=True); time.sleep(30)", "after.py": "print('after')"},
        continue_on_failure=True,
    )
    run(make_package("warm_up", {"ok.py": "print(1)"}))  # the server exists and is ready
    (server,) = servers()
    killer = _kill_when_waiting(server)

    execution = run(package)

    killer.join()
    wait, after = execution.steps.order_by("position")
    assert wait.status == StepStatus.FAILED
    assert wait.status_reason == "failed: killed by signal 9"
    assert "the warm step's exit status is unknown: its server died" in wait.stderr
    assert (after.status, after.stdout) == (StepStatus.COMPLETED, "after\n")


def _kill_when_waiting(server: psutil.Process):
    """Kills the server half a second after its next step started."""
    import threading

    def kill() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not server.children():
            time.sleep(0.02)
        time.sleep(0.5)
        os.kill(server.pid, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_a_package_can_turn_warm_steps_off_and_so_can_the_worker(settings):
    probe = {"probe.py": "import sys; print('ferris_cli.v2' in sys.modules)"}

    assert run(make_package("warm_on", probe)).steps.get().stdout == "True\n"
    assert run(make_package("warm_off", probe, warm_steps=False)).steps.get().stdout == "False\n"
    settings.EXECUTOR_WARM_STEPS = False
    assert run(make_package("worker_off", probe)).steps.get().stdout == "False\n"


def test_a_variable_a_preloaded_library_reads_at_import_makes_the_step_cold():
    package = make_package(files={"probe.py": "import sys, os; print('ferris_cli.v2' in sys.modules)"})
    package.environment_variables.create(name="DEFAULT_CONFIG", value="other.env")

    assert run(package).steps.get().stdout == "False\n"


def test_tracebacks_and_exit_codes_read_as_a_cold_step_s():
    package = make_package(files={"fail.py": "def f():\n    raise ValueError('boom')\nf()\n"})
    exits = make_package("exits", {"exit.py": "import sys; sys.exit(3)"})

    step = run(package).steps.get()

    assert (step.status, step.status_reason) == (StepStatus.FAILED, "failed: exit code 1")
    lines = step.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"
    assert "zygote" not in step.stderr and lines[1].endswith('fail.py", line 3, in <module>')
    assert run(exits).steps.get().status_reason == "failed: exit code 3"


PRY = """
import os, signal
for path in ("/proc/1/environ", "/proc/1/mem", "/proc/1/fd", "/proc/1/cwd/"):
    try:
        os.listdir(path) if path.endswith(("fd", "/")) else open(path, "rb").read(1)
        print(path, "open")
    except OSError as exc:
        print(path, exc.errno)
for sig in (signal.SIGSTOP, signal.SIGKILL):
    try:
        os.kill(1, sig)
        print(sig.name, "sent")
    except OSError as exc:
        print(sig.name, exc.errno)
"""


def test_a_step_cannot_read_or_stop_its_server():
    package = make_package(files={"pry.py": PRY})

    first, second = run(package), run(package)

    assert first.steps.get().stdout == (
        "/proc/1/environ 13\n/proc/1/mem 13\n/proc/1/fd 13\n/proc/1/cwd/ 13\nSIGSTOP 1\nSIGKILL 1\n"
    )
    assert second.status == ExecutionStatus.COMPLETED  # the server is still there and serves the next step
    assert len(servers()) == 1


def test_a_step_that_ends_at_once_runs_exactly_once():
    """The child says it started its script just before the script runs; a script that ends at once must not be
    taken for one that never started (which would run it again, cold)."""
    mark, count = "open('marks', 'a').write('x')", "print(open('marks').read())"
    package = make_package(files={"mark.py": mark, "count.py": count})

    counts = [run(package).steps.get(position=2).stdout for _ in range(10)]

    assert counts == ["x\n"] * 10
