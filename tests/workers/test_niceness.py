"""A niced worker's steps, cold and warm, run at its niceness even though each runs in a session of its own
(workers/niceness.py): where the kernel schedules sessions as groups, the session's own nice value decides."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from executions.models import TriggerType
from executions.services import trigger_execution
from tests.factories import make_package
from workers import runner, warm
from workers.sandbox import run_process

pytestmark = pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no session scheduling groups "
                                "(a kernel built without CONFIG_SCHED_AUTOGROUP)")  # fmt: skip
BASE_DIR = settings.BASE_DIR
SESSION_NICENESS = "print(open('/proc/self/autogroup').read().split()[-1])"  # "/autogroup-17 nice 7"


def session_niceness(autogroup: str) -> str:
    """The nice value in an autogroup file: "/autogroup-17 nice 7" gives "7". A process that no one between it and
    init moved to a session of its own (a container's first session, as CI may run) is in the root group, whose
    file reads empty."""
    return autogroup.split()[-1] if autogroup.strip() else "root group"


def niced(niceness: int, work):
    """work() in a thread of its own at `niceness`: on Linux a thread's niceness is its own, inherited by the
    processes it starts, so this process keeps its own."""
    results = []

    def target():
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
        try:
            results.append(work())
        finally:
            connections.close_all()  # this thread's own

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    assert results, "the work failed: see the thread's exception above"
    return results[0]


def test_a_cold_step_runs_at_its_worker_s_niceness(tmp_path):
    def step() -> str:
        result = run_process([sys.executable, "-c", SESSION_NICENESS], cwd=str(tmp_path), env={"PATH": "/usr/bin"},
                             timeout_seconds=10, output_cap_bytes=4096)  # fmt: skip
        return result.stdout.strip()

    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert step() == str(max(ours, 0))  # whatever this process runs at (0 gives nothing up)
    assert niced(max(ours, 7), step) == str(max(ours, 7))


@pytest.mark.django_db(transaction=True)  # the niced thread has its own database connection
@pytest.mark.usefixtures("no_broker")
def test_warm_steps_run_at_their_worker_s_niceness():
    package = make_package(files={"priority.py": f"import sys\n{SESSION_NICENESS}\nprint('ferris_ef' in sys.modules)"})

    def steps() -> list[str]:
        warm.stop_servers()  # its server is started by this thread, at its niceness
        outputs = []
        for _ in range(2):
            execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
            runner.run_execution(str(execution.id), worker_name="test-worker")
            outputs.append(execution.steps.get().stdout.split())
        warm.stop_servers()
        return outputs

    assert niced(7, steps) == [["7", "True"], ["7", "True"]]  # both warm (preloaded), both niced


LEADER = """
from workers.niceness import apply_to_own_session
apply_to_own_session()
print(open('/proc/self/autogroup').read().strip())
"""


@pytest.mark.parametrize("own_session, expected", [(True, "19"), (False, None)])
def test_a_niced_worker_gives_its_niceness_to_the_session_it_leads_only(own_session, expected):
    """As `make run` starts it (niceness 19, a session of its own: worker_init calls this); started from a shell,
    in the shell's session, the worker leaves that session as it is."""
    ours = session_niceness(Path("/proc/self/autogroup").read_text())
    worker = subprocess.run([sys.executable, "-c", LEADER], capture_output=True, text=True, check=True,
                            start_new_session=own_session, preexec_fn=lambda: os.nice(19), cwd=BASE_DIR)  # fmt: skip

    assert session_niceness(worker.stdout) == (expected or ours), worker.stderr
    assert session_niceness(Path("/proc/self/autogroup").read_text()) == ours
