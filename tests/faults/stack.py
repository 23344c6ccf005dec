"""The fault suite's own Executor: a PostgreSQL cluster and a Redis server on free private ports, gunicorn, two
workers (2 slots each) and beat, started as docker-compose starts them, with default settings. Only what the
environment needs is set (keys, the two URLs, the data, work and static directories, the step uid base): heartbeats,
leases and timeouts stay at their defaults, since the suite checks what a deployment gets.

Every process runs in a session of its own (a test can signal its whole process group, as a supervisor does) and
logs to a file under one temporary directory, which is kept after the run.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.e2e.processes import BASE_DIR, LANES, Service, beat_argv, free_port, tail, worker_argv

PYTHON = sys.executable
STEP_UID_BASE = 36000
FERNET_KEYS = "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdC0="  # the Makefile's test key
# The settings the stack sets itself; the caller's values (another test run's database, say) are not inherited.
OWN_SETTINGS = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "STATIC_ROOT", "ALLOWED_HOSTS", "LOG_LEVEL")


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries installed (Debian keeps them under /usr/lib/postgresql/<major>)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_tools() -> list[str]:
    missing = [] if pg_bin() else ["PostgreSQL server binaries (initdb, pg_ctl)"]
    return missing + [tool for tool in ("redis-server",) if not shutil.which(tool)]


def service(name: str, argv: list[str], env: dict[str, str], log_path: Path, ready_text: str) -> Service:
    """A process of the stack: in a session of its own, 40 s to stop after SIGTERM (a worker's 30 s grace period)."""
    return Service(name, argv, env, log_path, ready_text, own_session=True, grace=40)


class Postgres:
    """A cluster of its own (initdb into the stack's directory), run as the `postgres` OS user when we are root:
    PostgreSQL refuses to run as root. Stopped and restarted with pg_ctl, as an operator would."""

    def __init__(self, root: Path, port: int, log_path: Path) -> None:
        self.bin = pg_bin()
        self.data, self.sockets, self.port, self.log_path = root / "pgdata", root / "pgsock", port, log_path
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def url(self, database: str = "executor") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        for directory in (self.data, self.sockets):
            directory.mkdir()
        self.log_path.touch()
        if self.as_postgres:
            for path in (self.data, self.sockets, self.log_path):
                shutil.chown(path, "postgres", "postgres")
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        # fsync off only spares the disk: an immediate stop kills the server, not the kernel, so nothing written is
        # lost. Commits stay synchronous: with synchronous_commit off a crash loses the last committed transactions,
        # and an immediate stop would lose rows the web already answered for.
        settings = {
            "port": self.port, "listen_addresses": "'127.0.0.1'", "unix_socket_directories": f"'{self.sockets}'",
            "fsync": "off", "full_page_writes": "off", "max_connections": 100,
        }  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-m", mode)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def create_database(self, name: str = "executor") -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def _pg_ctl(self, *action: str) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t", "60", *action)

    def _run(self, program: str, *args, check: bool = True) -> subprocess.CompletedProcess:
        argv = [*self.as_postgres, str(self.bin / program), *map(str, args)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
        if check and done.returncode != 0:
            raise AssertionError(f"{program} {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")
        return done


class RedisServer(Service):
    """Redis as docker-compose runs it: append-only file fsynced every second, no eviction."""

    def __init__(self, root: Path, port: int, env: dict[str, str], log_path: Path) -> None:
        self.dir, self.port = root / "redis", port
        self.dir.mkdir()
        argv = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--save", "",
        ]  # fmt: skip
        super().__init__("redis", argv, env, log_path, "Ready to accept connections", own_session=True, grace=40)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def shut_down(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits; nothing queued is lost."""
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def wipe_and_restart(self) -> None:
        """Redis gone with its data (a new container without its volume): killed, files deleted, started empty."""
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir)
        self.dir.mkdir()
        self.start()


class Stack:
    def __init__(self, root: Path) -> None:
        self.root, self.logs = root, root / "logs"
        self.logs.mkdir()
        for directory in ("data", "work", "static"):
            (root / directory).mkdir()
        self.pg = Postgres(root, free_port(), self.logs / "postgres.log")
        self.web_port, redis_port = free_port(), free_port()
        self.env = self._environment(redis_port)
        self.redis = RedisServer(root, redis_port, self.env, self.logs / "redis.log")
        self.web = service("web", self._gunicorn(), self.env, self.logs / "web.log", "Booting worker")
        self.workers = {n: service(f"worker{n}", self._worker(n), self._worker_env(n), self.logs / f"worker{n}.log",
                                   " ready.") for n in (1, 2)}  # fmt: skip
        self.beat = service("beat", self._beat(), self.env, self.logs / "beat.log", "beat: Starting")
        self.seeded: dict = {}

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def services(self) -> list[Service]:
        return [self.redis, self.web, *self.workers.values(), self.beat]

    def start(self, counter_port: int) -> None:
        self.pg.init()
        self.pg.start()
        self.pg.create_database()
        self.redis.start()
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput")
        self.seeded = json.loads(self.python("-m", "tests.faults.seed", "setup", str(counter_port)).splitlines()[-1])
        for service in (self.web, *self.workers.values(), self.beat):
            service.start()
        self.wait_for_web()

    def stop(self) -> None:
        for service in (self.beat, *self.workers.values(), self.web, self.redis):
            service.stop(grace=20)
        if self.pg.running():
            self.pg.stop("immediate")

    def manage(self, *args: str) -> str:
        return self.python("manage.py", *args)

    def python(self, *args: str) -> str:
        done = subprocess.run([PYTHON, *args], cwd=BASE_DIR, env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def wait_for_web(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.web_port), timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"gunicorn not answering after {timeout} s:\n{tail(self.web.log())}") from None
                time.sleep(0.2)

    def worker_named(self, worker_name: str) -> Service:
        """The worker whose Celery node name (`faults<n>@host`, stored on the execution) is `worker_name`."""
        for n, worker in self.workers.items():
            if worker_name.startswith(f"faults{n}@"):
                return worker
        raise AssertionError(f"no worker of the stack is called {worker_name!r}")

    def workspaces_of(self, execution_id: str) -> list[Path]:
        """Directories in EXECUTOR_WORK_DIR, or in a worker slot's area there (warm steps), that belong to the
        execution (named after it: `executor-<id...>-`)."""
        candidates = [*self.work_dir.iterdir(), *self.work_dir.glob("executor-slot-*/executor-*")]
        return [path for path in candidates if execution_id[:8] in path.name]

    def dead(self) -> list[str]:
        down = [service.name for service in self.services if not service.alive]
        return down + ([] if self.pg.running() else ["postgres"])

    def revive(self) -> None:
        """Bring back whatever a failed test left broken, so the next test starts on a healthy stack."""
        if not self.pg.running():
            self.pg.start()
        if not self.redis.alive:
            self.redis.start()
        self.redis.client().config_set("maxmemory", 0)
        for service in (self.web, *self.workers.values(), self.beat):
            if not service.alive:
                service.stop()
                service.start()

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for path in sorted(self.logs.iterdir()):
            parts.append(f"----- {path} (last {lines} lines) -----")
            parts.append(tail(path.read_text(errors="replace"), lines))
        return "\n".join(parts)

    def _environment(self, redis_port: int) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("EXECUTOR_") and name not in OWN_SETTINGS}  # fmt: skip
        env.update(
            DATABASE_URL=self.pg.url(),
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            SECRET_KEY="test-secret-key-not-for-production",
            EXECUTOR_FERNET_KEYS=FERNET_KEYS,
            EXECUTOR_STEP_UID_BASE=str(STEP_UID_BASE),  # the web and beat run no steps; each worker has its own
            EXECUTOR_DATA_DIR=str(self.root / "data"),
            EXECUTOR_WORK_DIR=str(self.root / "work"),
            STATIC_ROOT=str(self.root / "static"),
            DJANGO_SETTINGS_MODULE="executor_project.settings",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _worker_env(self, n: int) -> dict[str, str]:
        # Workers sharing a host get step uid ranges of their own (README, "Who it runs as").
        return {**self.env, "EXECUTOR_STEP_UID_BASE": str(STEP_UID_BASE + 100 * (n - 1))}

    def _gunicorn(self) -> list[str]:
        # docker-compose's web command, on a private port.
        return [
            PYTHON, "-m", "gunicorn", "executor_project.wsgi", "-b", f"127.0.0.1:{self.web_port}", "--workers", "3",
            "--timeout", "60", "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-",
        ]  # fmt: skip

    def _worker(self, n: int) -> list[str]:
        return worker_argv(LANES, f"faults{n}@%h")  # docker-compose's worker command, with 2 slots

    def _beat(self) -> list[str]:
        return beat_argv(self.root / "data" / "celerybeat-schedule")


def wait_for_signal_exit(worker: Service, timeout: float) -> int:
    """The worker's exit code once it has exited (after a SIGTERM), within `timeout`."""
    try:
        return worker.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{worker.name} still running {timeout} s after SIGTERM:\n{tail(worker.log())}") from None
