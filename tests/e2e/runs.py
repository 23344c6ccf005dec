"""Runs on real workers: publish a run to one worker, count a step's runs from outside its sandbox, list the
processes steps run as."""

from urllib.parse import urlsplit

import psutil
import redis
from django.conf import settings

from executions.models import Execution, TriggerType
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from tests.e2e.processes import Worker
from workers.tasks import run_execution


def start_on(worker: Worker, package, monkeypatch, **params) -> Execution:
    """Trigger a manual run of `package` for this worker alone: published to its own queue, not the lane's."""
    with monkeypatch.context() as patch:
        patch.setattr("executions.services.enqueue", lambda execution: None)
        execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
    run_execution.apply_async(args=[str(execution.id)], queue=worker.queues)
    return execution


def run_on(worker: Worker, package, monkeypatch, **params) -> Execution:
    """A manual run of `package` on this worker alone, once it has finished."""
    return wait_until_finished(start_on(worker, package, monkeypatch, **params), timeout=60)


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


def step_processes() -> list[psutil.Process]:
    """Processes running as any worker slot's uid (the steps' own uids)."""
    base = settings.EXECUTOR_STEP_UID_BASE
    return [p for p in psutil.process_iter(["uids"]) if base <= p.info["uids"].real < base + 64]
