"""Workers dying or told to stop mid-step (issue 15, rows "worker SIGKILL", "SIGTERM to the worker's process group",
"a killed worker's workspace"). Default settings: 3 s heartbeat, 10 s lease, reaper every 3 s."""

import re
import signal
import time

import pytest

from tests.e2e.processes import kill, pool_process_running

from .checks import assert_completed_once, assert_no_web_problems, new_tag, start
from .stack import wait_for_signal_exit

pytestmark = pytest.mark.e2e

HOST_LOST_TARGET, POOL_PROCESS_TARGET = 15, 3  # seconds, issue 15
SWEEP_BOUND = 15  # a workspace is swept at worker start and by the reaper (every 3 s)


def test_a_dead_worker_host_fails_its_run_within_15_s_and_its_workspace_is_swept(stack, ledger, counter, web, recovery):
    tag = new_tag("host-killed")
    start(web, tag, seconds=120)
    [run] = ledger.wait_running(tag, 1)
    victim = stack.worker_named(run.worker_name)
    counter.wait_started(run.id)
    assert stack.workspaces_of(run.id), "the running step has no workspace to leave behind"

    # The whole worker at once (main and pool processes), as when its host or container dies.
    victim.signal_group(signal.SIGKILL)
    killed = time.monotonic()
    victim.proc.wait()
    try:
        [run] = ledger.wait_final(tag, 1, timeout=HOST_LOST_TARGET * 1.5)
        recovery.record(
            "worker host SIGKILLed -> its run failed", time.monotonic() - killed, f"<= {HOST_LOST_TARGET} s"
        )
    finally:
        victim.start()

    assert run.status == "failed", run
    assert "stopped heartbeating" in run.reason, run
    assert counter.starts(run.id) == 1
    # Its workspace (with what the step was given) must not stay on disk: swept at worker start or by the reaper.
    restarted = time.monotonic()
    while stack.workspaces_of(run.id):
        assert time.monotonic() - restarted < SWEEP_BOUND, f"still on disk: {stack.workspaces_of(run.id)}"
        time.sleep(0.5)
    recovery.record("dead worker's workspace gone, after the kill", time.monotonic() - killed, "swept")
    assert_no_web_problems(web)


def test_a_killed_pool_process_fails_its_run_within_3_s_saying_so(stack, ledger, counter, web, recovery):
    tag = new_tag("pool-killed")
    start(web, tag, seconds=120)
    [run] = ledger.wait_running(tag, 1)
    worker = stack.worker_named(run.worker_name)
    counter.wait_started(run.id)

    kill(pool_process_running(worker.pid, run.id))  # only the process running the step; the worker lives on
    killed = time.monotonic()
    [run] = ledger.wait_final(tag, 1, timeout=POOL_PROCESS_TARGET * 1.5)
    recovery.record(
        "pool process SIGKILLed -> its run failed", time.monotonic() - killed, f"<= {POOL_PROCESS_TARGET} s"
    )

    assert run.status == "failed", run
    assert re.search(r"worker process\b.*\bkilled", run.reason), run  # "its worker process (on ...) was killed ..."
    assert counter.starts(run.id) == 1
    assert worker.alive
    assert_no_web_problems(web)


def test_sigterm_to_a_worker_s_process_group_lets_the_running_step_finish(stack, ledger, counter, web, recovery):
    tag = new_tag("group-sigterm")
    start(web, tag, seconds=5)
    [run] = ledger.wait_running(tag, 1)
    worker = stack.worker_named(run.worker_name)

    # What systemd (control group), honcho and Ctrl-C in a terminal do: every process of the group gets it.
    worker.signal_group(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        exit_code = wait_for_signal_exit(worker, timeout=45)  # the 30 s grace period, and a margin
        recovery.record("group SIGTERM -> worker exited", time.monotonic() - signalled, "step done")
    finally:
        worker.stop()
        worker.start()

    [run] = ledger.wait_final(tag, 1, timeout=30)
    assert "worker lost" not in run.reasons, run
    assert_completed_once([run], counter)
    assert exit_code == 0, worker.log()
    assert_no_web_problems(web)
