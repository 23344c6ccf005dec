"""Schedules end to end: real `celery beat` processes (two of them, as after a bad deploy) and a real worker."""

import contextlib
import re
import time

import pytest

from executions.models import Execution, ExecutionStatus, TriggerType
from packages.schedules import sync_package_schedule
from tests.e2e.processes import beat_process
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
TICK_RECEIVED = re.compile(r"Task executor\.scheduled_tick\[[0-9a-f-]+\] received")


def test_two_beats_give_exactly_one_execution_per_minute(celery_worker, tmp_path):
    package = make_package("every_minute", {"tick.py": "print('tick')"}, schedule="* * * * *")
    sync_package_schedule(package)
    received_before = len(TICK_RECEIVED.findall(celery_worker.log()))
    with contextlib.ExitStack() as beats:
        first, _ = [beats.enter_context(beat_process(tmp_path / f"beat{n}.log")) for n in (1, 2)]
        deadline = time.monotonic() + 170
        while Execution.objects.filter(package=package, status=ExecutionStatus.COMPLETED).count() < 2:
            assert time.monotonic() < deadline, "fewer than 2 scheduled runs in 170 s:\n" + first.log()
            time.sleep(1)

    executions = list(Execution.objects.filter(package=package).order_by("created_at"))
    keys = [execution.idempotency_key for execution in executions]
    assert all(execution.trigger_type == TriggerType.SCHEDULED for execution in executions)
    assert len(keys) == len(set(keys)), keys  # one execution per fire time
    # Both beats really sent ticks: more ticks arrived than executions were created, and the extras started nothing.
    ticks = len(TICK_RECEIVED.findall(celery_worker.log())) - received_before
    assert ticks > len(executions), celery_worker.log()[-3000:]
