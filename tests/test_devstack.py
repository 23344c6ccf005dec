"""`make run`'s supervisor (bin/devstack.py) with stand-in processes: Ctrl-C stops the services stage by stage,
each with its own grace (the worker's soft shutdown outlasts honcho's 5 s), signals the worker's main process
only, and leaves no process of any group behind. The whole stack under Ctrl-C is tests/e2e/test_quick_start.py's
subject."""

import os
import signal
import sys
import textwrap
from pathlib import Path

import psutil

from tests.e2e.processes import BASE_DIR, Service, left_running

DRIVER = """
import importlib.util, os, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("devstack", sys.argv[1])
devstack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(devstack)

def service(name, grace, code, niceness=0):
    return devstack.Service(name, [sys.executable, "-c", code], grace_seconds=grace, niceness=niceness)

web = service("web", 10, WEB_CODE)
worker = service("worker", float(sys.argv[2]), WORKER_CODE, niceness=devstack.WORKER_NICENESS)
redis = service("redis", 10, REDIS_CODE)
supervisor = devstack.Supervisor(dict(os.environ), Path.cwd())
supervisor.handle_signals()
for each in (redis, worker, web):
    supervisor.start(each)
ended = supervisor.wait()
supervisor.stop([[web], [worker], [redis]])
sys.exit(ended if ended is not None else devstack.SIGNAL_EXIT_CODES[supervisor.signal_number])
"""

STOPS_ON_SIGTERM = """
import signal, sys, time
def stop(*_):
    print("{name}: SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("{name}: ready", flush=True)
{then}
time.sleep(600)
"""

# A Celery main process in miniature: a pool child in its group, and a warm shutdown that takes 7 s.
SOFT_WORKER = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import signal, time\\n"
    "signal.signal(signal.SIGTERM, lambda *_: print('pool child: SIGTERM', flush=True))\\ntime.sleep(600)"])
print(f"worker: child {child.pid}", flush=True)
def stop(*_):
    print("worker: SIGTERM", flush=True)
    time.sleep(7)
    print("worker: handed over", flush=True)
    child.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("worker: ready", flush=True)
time.sleep(600)
"""

STUBBORN_WORKER = SOFT_WORKER.replace("time.sleep(7)", "time.sleep(600)")


def gone(pid: int, timeout: float = 5) -> bool:
    """Ended: no such process, or a zombie its new parent (init) has not reaped yet."""
    return left_running([pid], timeout) == []


class Driver:
    """The supervisor in a process of its own (a session, as a terminal's job), its output in driver.log."""

    def __init__(self, tmp_path: Path, worker_code: str, worker_grace: float, web_then: str = "") -> None:
        web = STOPS_ON_SIGTERM.format(name="web", then=web_then)
        redis = STOPS_ON_SIGTERM.format(name="redis", then="")
        code = DRIVER.replace("WEB_CODE", repr(web)).replace("WORKER_CODE", repr(worker_code))
        code = code.replace("REDIS_CODE", repr(redis))
        script = tmp_path / "driver.py"
        script.write_text(textwrap.dedent(code))
        argv = [sys.executable, str(script), str(BASE_DIR / "bin" / "devstack.py"), str(worker_grace)]
        self.driver = Service("driver", argv, dict(os.environ), tmp_path / "driver.log", own_session=True, cwd=tmp_path)
        self.proc = self.driver.start().proc

    @property
    def output(self) -> str:
        return self.driver.log()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        self.driver.wait_for_log(text, timeout=timeout)

    def pool_child(self) -> int:
        self.wait_for("worker: child")
        return int(next(line for line in self.output.splitlines() if "worker: child" in line).split()[-1])

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.driver.kill()  # a failed test must not leave the stand-ins running (each leads a session of its own)

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal sends to its foreground process group
        return self.finish()


def test_ctrl_c_stops_web_then_the_worker_within_its_grace_then_redis(tmp_path):
    driver = Driver(tmp_path, SOFT_WORKER, worker_grace=20)
    pool_child = driver.pool_child()
    driver.wait_for("web: ready")
    assert psutil.Process(pool_child).nice() == 19  # the worker yields the CPU to the web, and so do its processes

    assert driver.ctrl_c() == 130, driver.output
    out = driver.output
    order = ["web: SIGTERM", "worker: SIGTERM", "worker: handed over", "redis: SIGTERM"]
    assert all(step in out for step in order), out
    assert [out.index(step) for step in order] == sorted(out.index(step) for step in order), out
    assert "SIGKILL to its process group" not in out  # 7 s of soft shutdown, well past honcho's 5 s, not cut short
    assert "pool child: SIGTERM" not in out  # the worker's main process decides what its pool processes get
    assert gone(pool_child)


def test_a_worker_that_outlives_its_grace_is_killed_with_its_whole_group(tmp_path):
    driver = Driver(tmp_path, STUBBORN_WORKER, worker_grace=2)
    pool_child = driver.pool_child()
    driver.wait_for("web: ready")

    assert driver.ctrl_c() == 130, driver.output
    out = driver.output
    assert "worker still running: SIGKILL to its process group" in out
    assert out.index("SIGKILL to its process group") < out.index("redis: SIGTERM")
    assert gone(pool_child)


def test_a_service_that_exits_stops_the_others_and_gives_its_exit_code(tmp_path):
    driver = Driver(tmp_path, SOFT_WORKER, worker_grace=20, web_then="time.sleep(1); sys.exit(3)")

    assert driver.finish() == 3, driver.output
    out = driver.output
    assert "web exited (rc=3): stopping the rest" in out
    assert "worker: handed over" in out and "redis: SIGTERM" in out
