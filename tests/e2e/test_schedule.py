"""Schedules end to end: real `celery beat` processes (two of them, as after a bad deploy) and a real worker."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from executions.models import Execution, ExecutionStatus, TriggerType
from packages.schedules import sync_package_schedule
from tests.e2e.conftest import BASE_DIR, database_url_for_tests
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
TICK_RECEIVED = re.compile(r"Task executor\.scheduled_tick\[[0-9a-f-]+\] received")


def start_beat(log_path):
    env = {**os.environ, "DATABASE_URL": database_url_for_tests()}
    argv = [sys.executable, "-m", "celery", "--app", "executor_project", "beat", "--loglevel", "INFO",
            "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]  # fmt: skip
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_two_beats_give_exactly_one_execution_per_minute(celery_worker, tmp_path):
    package = make_package("every_minute", {"tick.py": "print('tick')"}, schedule="* * * * *")
    sync_package_schedule(package)
    received_before = len(TICK_RECEIVED.findall(celery_worker.log()))
    beats = [start_beat(tmp_path / f"beat{n}.log") for n in (1, 2)]
    try:
        deadline = time.monotonic() + 170
        while Execution.objects.filter(package=package, status=ExecutionStatus.COMPLETED).count() < 2:
            assert time.monotonic() < deadline, (
                "fewer than 2 scheduled runs in 170 s:\n" + (tmp_path / "beat1.log").read_text()
            )
            time.sleep(1)
    finally:
        for beat in beats:
            beat.send_signal(signal.SIGTERM)
            beat.wait(timeout=20)

    executions = list(Execution.objects.filter(package=package).order_by("created_at"))
    keys = [execution.idempotency_key for execution in executions]
    assert all(execution.trigger_type == TriggerType.SCHEDULED for execution in executions)
    assert len(keys) == len(set(keys)), keys  # one execution per fire time
    # Both beats really sent ticks: more ticks arrived than executions were created, and the extras started nothing.
    ticks = len(TICK_RECEIVED.findall(celery_worker.log())) - received_before
    assert ticks > len(executions), celery_worker.log()[-3000:]
