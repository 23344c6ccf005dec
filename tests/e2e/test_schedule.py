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

    def ticks() -> int:
        return len(TICK_RECEIVED.findall(celery_worker.log())) - received_before

    def both_beats_ticked() -> bool:
        """A run done, and more ticks arrived than runs were made: both beats ticked, the extras started nothing."""
        runs = Execution.objects.filter(package=package)
        return runs.filter(status=ExecutionStatus.COMPLETED).exists() and ticks() > runs.count()

    with contextlib.ExitStack() as beats:
        first, _ = [beats.enter_context(beat_process(tmp_path / f"beat{n}.log")) for n in (1, 2)]
        deadline = time.monotonic() + 170
        while not both_beats_ticked():
            assert time.monotonic() < deadline, "no duplicate tick came in 170 s:\n" + first.log()
            time.sleep(0.5)
        time.sleep(1)  # time enough for a duplicate run of that fire time to be recorded, were there one

    executions = list(Execution.objects.filter(package=package).order_by("created_at"))
    keys = [execution.idempotency_key for execution in executions]
    assert all(execution.trigger_type == TriggerType.SCHEDULED for execution in executions)
    assert len(keys) == len(set(keys)), keys  # one execution per fire time
