"""Real processes for tests: Celery workers and beat against the test database, `make run`'s whole stack, and the
fault suite's services; started with their output in a log file, waited for until ready, stopped, killed.

Every helper that ends or inspects processes tolerates one that has already exited (psutil.NoSuchProcess, a
zombie, ProcessLookupError): a process tree changes while it is being looked at (a pool process replaced, a step
ending, a sandbox dying with its parent), and a test must not fail on that race instead of on what it checks.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]
LANES = "priority,default,slow,scheduled,maintenance"
# Workers of one test run need not find each other: starting without it is faster.
QUIET_CLUSTER = ("--without-mingle", "--without-gossip")
GONE = (psutil.NoSuchProcess, ProcessLookupError)  # psutil.ZombieProcess is a NoSuchProcess


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The port of the SMTP server tests/e2e/test_notifications.py starts: the package's worker is started before it.
NOTIFICATION_SMTP_PORT = free_port()
TEST_WORKER_ENV = {
    # Test repositories are file:// URLs, which production refuses (packages/git_urls.py).
    "EXECUTOR_GIT_ALLOW_LOCAL": "true",
    # Notifications go to receivers on this machine (refused in production unless listed), and retry within seconds.
    "EMAIL_HOST": "127.0.0.1",
    "EMAIL_PORT": str(NOTIFICATION_SMTP_PORT),
    "EXECUTOR_NOTIFICATION_ALLOWED_HOSTS": "127.0.0.1",
    "EXECUTOR_NOTIFICATION_RETRY_SECONDS": "1",
    "EXECUTOR_NOTIFICATION_MAX_ATTEMPTS": "3",
    "EXECUTOR_BASE_URL": "https://executor.test",
}


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def wait_until(condition: Callable[[], object], timeout: float, failure: Callable[[], str], every: float = 0.2):
    """Poll `condition` until it returns something true (returned), or fail with `failure()` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(failure())
        time.sleep(every)
    return result


class Service:
    """One long-running process, its output appended to `log_path`. With `own_session` it leads a session of its own,
    as a supervisor starts it (a test can signal its whole process group, and whatever it leaves is found by its
    session); otherwise it stays in the test's session and what it leaves is found as its descendants."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, ready_text: str | None = None,
                 *, own_session: bool = False, grace: float = 20, cwd: Path = BASE_DIR) -> None:  # fmt: skip
        self.name, self.argv, self.env, self.log_path, self.cwd = name, argv, env, log_path, cwd
        self.ready_text, self.own_session, self.grace = ready_text, own_session, grace
        self.proc: subprocess.Popen | None = None
        self._log_start = 0  # where the current run's lines begin in the log file

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 90) -> "Service":
        """Start it and wait for its ready line (when it has one); fails at once, with its log, if it exits."""
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"===== {self.name} starting at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=self.own_session)  # fmt: skip
        if self.ready_text:
            self.wait_for_log(self.ready_text, timeout=timeout)
        return self

    def log(self) -> str:
        """This run's lines (since the last start)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until `text` is in the log `count` times; fails after `timeout` s, or as soon as the process has exited."""

        def seen() -> bool:
            exited = not self.alive  # looked at before the log: its last lines come before its exit
            if self.log().count(text) >= count:
                return True
            assert not exited, f"{self.name} exited ({self.proc.returncode}) before {text!r}:\n{tail(self.log())}"
            return False

        wait_until(seen, timeout, lambda: f"{text!r} x{count} not in {self.name}'s log after {timeout} s:\n"
                                          f"{tail(self.log())}")  # fmt: skip

    def signal_group(self, signum: int) -> None:
        """What a supervisor does (systemd's control group, honcho, Ctrl-C): every process of its group."""
        os.killpg(self.proc.pid, signum)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to the main process (a soft shutdown), then SIGKILL to whatever is left after `grace` s (its own
        grace unless given)."""
        if self.alive:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=self.grace if grace is None else grace)
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the process, everything under it and, with a session of its own, everything left in it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:  # not reaped yet, so its pid is still its own
            kill_tree(self.proc.pid)
        if self.own_session:
            kill_session(self.proc.pid)
        self.proc.wait()


class Worker(Service):
    """A `celery worker`; `queues` are the ones it consumes (a test publishes to them to reach this worker only)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, queues: str,
                 own_session: bool = False) -> None:  # fmt: skip
        super().__init__(name, argv, env, log_path, " ready.", own_session=own_session)
        self.queues = queues


def worker_argv(queues: str, hostname: str, *options: str, concurrency: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "executor_project", "worker", "--loglevel", "INFO", "--queues", queues,
        "--concurrency", str(concurrency), "--hostname", hostname, *options,
    ]  # fmt: skip


def beat_argv(schedule_file: Path | None = None) -> list[str]:
    """`celery beat` with the database scheduler; `schedule_file` keeps its local state out of the project."""
    argv = [sys.executable, "-m", "celery", "-A", "executor_project", "beat", "--loglevel", "INFO",
            "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]  # fmt: skip
    return argv + (["--schedule", str(schedule_file)] if schedule_file else [])


def database_url_for_tests() -> str:
    """DATABASE_URL pointing at the database pytest-django created (test_<name>)."""
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path="/" + connection.settings_dict["NAME"]).geturl()


def environment_for_tests(**extra: str) -> dict[str, str]:
    """This process's environment, with the test database and `extra` on top."""
    return {**os.environ, **TEST_WORKER_ENV, "DATABASE_URL": database_url_for_tests(), **extra}


@contextlib.contextmanager
def worker_process(log_path: Path, *, queues: str = LANES, name: str = "e2e", env: dict[str, str] | None = None,
                   own_session: bool = False, concurrency: int = 2) -> Iterator[Worker]:  # fmt: skip
    """A ready `celery worker` (2 slots unless told) against the test database, stopped with SIGTERM (then SIGKILL)
    at the end."""
    argv = worker_argv(queues, f"{name}-{uuid.uuid4().hex[:8]}@%h", *QUIET_CLUSTER, concurrency=concurrency)
    worker = Worker(name, argv, environment_for_tests(**(env or {})), log_path, queues, own_session)
    try:
        yield worker.start(timeout=60)
    finally:
        worker.stop()


@contextlib.contextmanager
def beat_process(log_path: Path) -> Iterator[Service]:
    """A running `celery beat` (the database scheduler) against the test database, stopped at the end."""
    beat = Service("beat", beat_argv(), environment_for_tests(), log_path, "beat: Starting")
    try:
        yield beat.start(timeout=60)
    finally:
        beat.stop()


@contextlib.contextmanager
def devstack_process(env: dict[str, str], log_path: Path, timeout: float = 120) -> Iterator[Service]:
    """`make run` (bin/devstack.py) in a session of its own, as a terminal runs it, once its web answers /healthz on
    EXECUTOR_PORT. Killed at the end (its children lead sessions of their own: killed as its descendants)."""
    stack = Service("devstack", [sys.executable, "bin/devstack.py"], env, log_path, own_session=True)
    try:
        stack.start()
        wait_for_http(stack, f"http://127.0.0.1:{env['EXECUTOR_PORT']}/healthz", timeout)
        yield stack
    finally:
        stack.kill()


def wait_for_http(service: Service, url: str, timeout: float) -> None:
    """Until `url` answers 200; fails after `timeout` s, or as soon as `service` has exited."""

    def answers() -> bool:
        assert service.alive, f"{service.name} exited ({service.proc.returncode}):\n{tail(service.log())}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(answers, timeout, lambda: f"{url} did not answer within {timeout} s:\n{tail(service.log())}", 0.5)


# Ending and inspecting processes, any of which may have exited meanwhile.


def kill(process: psutil.Process) -> None:
    with contextlib.suppress(*GONE):
        process.kill()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants. Each is stopped first, parents before children, and only then
    are they all killed: no parent sees a child die and acts on it (Celery's main process would start a new pool
    process, a pool process would clean up after its step), and none starts a process that the listing misses."""
    try:
        root = psutil.Process(pid)
    except GONE:
        return
    stopped: dict[int, psutil.Process] = {}
    for _ in range(10):  # until a listing finds no process that was not stopped yet
        found = []
        with contextlib.suppress(*GONE):
            found = [process for process in [root, *root.children(recursive=True)] if process.pid not in stopped]
        if not found:
            break
        for process in found:
            with contextlib.suppress(*GONE):
                process.suspend()
            stopped[process.pid] = process
    for process in stopped.values():
        kill(process)


def kill_session(session_id: int) -> None:
    """SIGKILL every process left in a session (its leader may be gone, the processes it started not)."""
    for process in psutil.process_iter():
        with contextlib.suppress(*GONE, PermissionError):
            if os.getsid(process.pid) == session_id:
                process.kill()


def children(pid: int, recursive: bool = False) -> list[psutil.Process]:
    """The process's children (or all its descendants); none if it has exited."""
    try:
        return psutil.Process(pid).children(recursive=recursive)
    except GONE:
        return []


def command_line(process: psutil.Process) -> str:
    """Its command line; empty once it has exited."""
    try:
        return " ".join(process.cmdline())
    except GONE:
        return ""


def working_directory(process: psutil.Process) -> str:
    """Its working directory; empty once it has exited."""
    try:
        return process.cwd()
    except GONE:
        return ""


def pool_processes(worker_pid: int) -> list[psutil.Process]:
    """A Celery worker's pool processes (its children that run celery)."""
    return [child for child in children(worker_pid) if "celery" in command_line(child)]


def pool_process_running(worker_pid: int, execution_id: str, timeout: float = 10) -> psutil.Process:
    """The worker's pool process whose descendants run the execution's step (a cold step's command line names its
    workspace, `executor-<execution id>-...`; a warm step works in it), waited for: a run is marked running a moment
    before its step's process starts."""
    workspace = f"executor-{uuid.UUID(str(execution_id))}-"  # workers/workspace_sweep.py names it so

    def runs_it(process: psutil.Process) -> bool:
        return workspace in command_line(process) or workspace in working_directory(process)

    def running_it() -> psutil.Process | None:
        for child in children(worker_pid):
            if any(runs_it(descendant) for descendant in children(child.pid, recursive=True)):
                return child
        return None

    return wait_until(running_it, timeout, lambda: f"no pool process of worker {worker_pid} runs {execution_id}")


def ended(process: psutil.Process) -> bool:
    """Exited: no such process any more, or a zombie nobody has reaped yet (it runs nothing)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except GONE:
        return True


def left_running(processes: Iterable[psutil.Process | int], timeout: float) -> list[psutil.Process]:
    """Those of `processes` (or pids) still running after waiting up to `timeout` s for all of them to end."""
    watched = []
    for process in processes:
        with contextlib.suppress(*GONE):
            watched.append(process if isinstance(process, psutil.Process) else psutil.Process(process))
    deadline = time.monotonic() + timeout
    while (running := [process for process in watched if not ended(process)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running
