"""Real processes for end-to-end tests: a `celery worker` against the test database and the test Redis."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.db import connection

from executions.models import Execution, TriggerType
from executions.services import trigger_execution
from workers.tasks import run_execution

BASE_DIR = Path(settings.BASE_DIR)
LANES = "priority,default,slow,scheduled,maintenance"
# Test repositories are file:// URLs, which production refuses (packages/git_urls.py).
TEST_WORKER_ENV = {"EXECUTOR_GIT_ALLOW_LOCAL": "true"}


class WorkerProcess:
    def __init__(self, log_path: Path, proc: subprocess.Popen, queues: str):
        self.log_path, self.proc, self.queues = log_path, proc, queues

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} x{count} not in the worker log after {timeout} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.2)


def database_url_for_tests() -> str:
    """DATABASE_URL pointing at the database pytest-django created (test_<name>)."""
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path="/" + connection.settings_dict["NAME"]).geturl()


@contextlib.contextmanager
def worker_process(log_path: Path, *, queues: str = LANES, name: str = "e2e", env: dict[str, str] | None = None):
    """A `celery worker` (2 slots) against the test database, stopped with SIGTERM (then SIGKILL) at the end."""
    database_url = database_url_for_tests()
    argv = [
        sys.executable, "-m", "celery", "--app", "executor_project", "worker", "--loglevel", "INFO",
        "--queues", queues, "--concurrency", "2", "--hostname", f"{name}-{uuid.uuid4().hex[:8]}@%h",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv, cwd=BASE_DIR, env={**os.environ, **TEST_WORKER_ENV, "DATABASE_URL": database_url, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    worker = WorkerProcess(log_path, proc, queues)
    try:
        worker.wait_for_log(" ready.")
        yield worker
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, grace_seconds: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within the grace period."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # no messages left over from an earlier run
    with django_db_blocker.unblock(), worker_process(tmp_path_factory.mktemp("worker") / "worker.log") as worker:
        yield worker


def start_on(worker: WorkerProcess, package, monkeypatch, **params) -> Execution:
    """Trigger a manual run of `package` for this worker alone: published to its own queue, not the lane's."""
    with monkeypatch.context() as patch:
        patch.setattr("executions.services.enqueue", lambda execution: None)
        execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
    run_execution.apply_async(args=[str(execution.id)], queue=worker.queues)
    return execution


def counting_script(key: str, then: str = "") -> str:
    """Python for a step that counts its runs in Redis: the sandbox hides the host's files, so a run leaves its
    mark outside through the network (the package needs network_access). `then` runs afterwards."""
    broker = urlsplit(settings.CELERY_BROKER_URL)
    host, port, db = broker.hostname or "127.0.0.1", broker.port or 6379, broker.path.strip("/") or "0"
    return (
        "import socket\n"
        f"with socket.create_connection(({host!r}, {port})) as redis:\n"
        f"    redis.sendall(b'SELECT {db}\\r\\nINCR {key}\\r\\n')\n"
        "    reply = b''\n"
        "    while reply.count(b'\\r\\n') < 2:\n"
        "        reply += redis.recv(64)\n"
        f"{then}"
    )


def run_count(key: str) -> int:
    return int(redis.Redis.from_url(settings.CELERY_BROKER_URL).get(key) or 0)
