"""PostgreSQL blinks under a real worker: its connections go through a proxy (tests/db_proxy.py) that drops them
and refuses new ones for a few seconds, as a restart does, while the test itself keeps its own connection.
Running steps go on, queued messages are not consumed, and only an outage past EXECUTOR_DATABASE_OUTAGE_SECONDS
fails a run, saying so.

Only this worker is cut off (a partition rather than a restart): the reapers (the test's, and the other worker's
heartbeat thread) still reach the database and would take a silent worker for dead after the lease. So this
worker beats every second, to stay well within the lease through the blink. When PostgreSQL itself restarts the
reaper is cut off too, and its pause rule gives workers a lease to beat again (tests/workers/test_reaper.py)."""

import contextlib
import os
import threading
import time
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.db import connection

from executions.models import Execution, ExecutionStatus, StepStatus
from tests.db_proxy import DatabaseProxy
from tests.e2e.processes import database_url_for_tests, worker_process
from tests.e2e.runs import start_on, step_processes
from tests.factories import make_package
from workers.reaper import reap

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
QUEUE = "blink"


@contextlib.contextmanager
def reaper_every(seconds: float):
    """What beat does with CELERY_BEAT_SCHEDULE's executor.reap, in a thread of the test."""
    stop = threading.Event()

    def loop():
        try:
            while not stop.wait(seconds):
                reap()
        finally:
            connection.close()

    thread = threading.Thread(target=loop, daemon=True)
    reap()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def proxy():
    server = urlsplit(os.environ["DATABASE_URL"])
    proxy = DatabaseProxy((server.hostname or "127.0.0.1", server.port or 5432))
    yield proxy
    proxy.close()


@contextlib.contextmanager
def worker_behind(proxy: DatabaseProxy, log_path, **env):
    env = {"DATABASE_URL": proxy.url(database_url_for_tests()), "EXECUTOR_HEARTBEAT_SECONDS": "1", **env}
    with worker_process(log_path, queues=QUEUE, name="blink", env=env) as worker:
        yield worker


def wait_for(condition, worker, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, worker.log()[-4000:]
        time.sleep(0.2)


def step_running(execution) -> bool:
    return Execution.objects.filter(pk=execution.pk, steps__status=StepStatus.RUNNING).exists()


def script_running(execution) -> bool:
    """Its step's process runs as a slot's uid: the worker is past the step's set-up (which reads the database
    too) and supervises the process, which is what an outage during a step means here."""
    return step_running(execution) and bool(step_processes())


def finished(*executions) -> bool:
    return not Execution.objects.filter(
        pk__in=[e.pk for e in executions], status__in=[ExecutionStatus.PENDING, ExecutionStatus.IN_PROGRESS]
    ).exists()


def test_a_running_step_survives_a_blink_and_completes(celery_worker, proxy, tmp_path, monkeypatch):
    script = "import time\nprint('before', flush=True)\ntime.sleep(8)\nprint('after')\n"
    package = make_package("blinking", {"slow.py": script, "next.py": "print('next')"})
    with reaper_every(3), worker_behind(proxy, tmp_path / "worker.log") as worker:
        execution = start_on(worker, package, monkeypatch)
        wait_for(lambda: step_running(execution), worker)
        time.sleep(1)
        proxy.blink(4)
        wait_for(lambda: finished(execution), worker)
        log = worker.log()

    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (ExecutionStatus.COMPLETED, ""), log[-4000:]
    first, second = execution.steps.order_by("position")
    assert (first.status, first.stdout) == (StepStatus.COMPLETED, "before\nafter\n")
    assert (second.status, second.stdout) == (StepStatus.COMPLETED, "next\n")
    assert proxy.refused > 0  # the worker did try, and was refused
    assert "the database is unreachable" in log and "the database is reachable again" in log
    assert log.count("heartbeat: the database is unreachable") == 1  # said once per outage


def test_messages_that_arrive_while_the_database_is_down_are_not_consumed_and_all_run_afterwards(
    celery_worker, proxy, tmp_path, monkeypatch
):
    package = make_package("queued_in_outage", {"a.py": "print('ran')"})
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    # Each slot holds its message 2 s, then hands it back to Redis and takes the next (or the same) one.
    with worker_behind(proxy, tmp_path / "worker.log", EXECUTOR_DATABASE_WAIT_SECONDS="2") as worker:
        with proxy.outage():
            executions = [start_on(worker, package, monkeypatch) for _ in range(4)]
            time.sleep(7)
            handed_back = worker.log().count("message handed back to Redis")
            queued = broker.llen(QUEUE)
            pending = Execution.objects.filter(pk__in=[e.pk for e in executions], status=ExecutionStatus.PENDING)
            assert pending.count() == 4
        wait_for(lambda: finished(*executions), worker)

    assert handed_back >= 2, worker.log()[-4000:]  # the slots gave their messages back
    assert handed_back <= 2 * (7 / 2 + 1)  # ... each after holding it for the wait: no hot loop
    assert queued >= 2  # the others waited in Redis, not consumed
    for execution in executions:
        execution.refresh_from_db()
        assert execution.status == ExecutionStatus.COMPLETED, worker.log()[-4000:]
        assert execution.steps.get().stdout == "ran\n"


def test_an_outage_past_the_bound_fails_the_run_saying_the_database_was_unreachable(
    celery_worker, proxy, tmp_path, monkeypatch
):
    package = make_package("outlasted", {"slow.py": "import time; time.sleep(60)", "next.py": "print('never')"})
    with worker_behind(proxy, tmp_path / "worker.log", EXECUTOR_DATABASE_OUTAGE_SECONDS="3") as worker:
        execution = start_on(worker, package, monkeypatch)
        wait_for(lambda: script_running(execution), worker)
        proxy.blink(6)  # the step is stopped after 3 s; its result is recorded once the database is back
        wait_for(lambda: finished(execution), worker, timeout=30)

    execution.refresh_from_db()
    reason = "failed: the database was unreachable for 3 s"
    assert (execution.status, execution.status_reason) == (ExecutionStatus.FAILED, reason)
    assert list(execution.steps.order_by("position").values_list("status", "status_reason")) == [
        (StepStatus.FAILED, reason),
        (StepStatus.SKIPPED, "skipped: the database was unreachable"),
    ]
    first = execution.steps.get(position=1)
    assert 2500 <= first.duration_ms < 20000  # stopped after the bound, not at the blink, not at its end
