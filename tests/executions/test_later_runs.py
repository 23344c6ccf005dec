"""Later runs (FX scheduler.retry / schedule): a one-off beat task each, deleted once beat has fired it."""

from datetime import timedelta

import pytest
from django_celery_beat.models import ClockedSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from executions import later_runs
from executions.models import Execution, TriggerType
from tests.factories import make_package
from workers.reaper import reap

pytestmark = pytest.mark.django_db


@pytest.fixture
def parent():
    package = make_package("later_pkg", {"main.py": "print(1)"})
    return Execution.objects.create(package=package, trigger_type=TriggerType.MANUAL, correlation_id="cid")


def ask(parent, request_id: str):
    """A later run, as a step asking for it in a minute leaves it; returns its task's name and its time."""
    run_at = later_runs.schedule_later_run(parent, cron_expression="* * * * *", params={}, request_id=request_id)
    return later_runs.periodic_task_name(request_id), run_at


def fired_by_beat(name: str, *, reloaded: bool = True) -> None:
    """What django-celery-beat's DatabaseScheduler does with a one-off task it fires (its own code, run here):
    last_run_at written at its next sync, then the task disabled when it next reloads the schedule."""
    next(ModelEntry(PeriodicTask.objects.get(name=name))).save()
    if reloaded:
        ModelEntry(PeriodicTask.objects.get(name=name)).is_due()


def test_a_fired_later_run_is_deleted_with_its_clocked_schedule(parent):
    name, run_at = ask(parent, "fired")
    fired_by_beat(name)
    assert not PeriodicTask.objects.get(name=name).enabled

    assert later_runs.delete_fired(now=run_at + timedelta(seconds=1)) == 1

    assert not PeriodicTask.objects.exists() and not ClockedSchedule.objects.exists()


def test_a_later_run_that_has_not_fired_is_never_deleted(parent):
    waiting, run_at = ask(parent, "waiting")
    stopped_by_hand, _ = ask(parent, "stopped")
    task = PeriodicTask.objects.get(name=stopped_by_hand)
    task.enabled = False
    task.save()

    assert later_runs.delete_fired() == 0  # before their time
    assert later_runs.delete_fired(now=run_at + timedelta(hours=1)) == 1  # stopped, and its time has passed
    assert list(PeriodicTask.objects.values_list("name", flat=True)) == [waiting]
    assert ClockedSchedule.objects.count() == 1


def test_a_fired_task_beat_has_not_disabled_yet_is_left_to_beat(parent):
    name, run_at = ask(parent, "synced")
    fired_by_beat(name, reloaded=False)  # beat still holds it in memory and would write it back
    assert PeriodicTask.objects.get(name=name).last_run_at is not None

    assert later_runs.delete_fired(now=run_at + timedelta(minutes=1)) == 0
    ModelEntry(PeriodicTask.objects.get(name=name)).is_due()  # beat's next reload
    assert later_runs.delete_fired(now=run_at + timedelta(minutes=1)) == 1


def test_the_reaper_cleans_up_fired_later_runs(parent):
    name, run_at = ask(parent, "reaped")
    fired_by_beat(name)
    ClockedSchedule.objects.update(clocked_time=run_at - timedelta(minutes=2))  # its minute is over

    reap()

    assert not PeriodicTask.objects.exists() and not ClockedSchedule.objects.exists()


def test_with_nothing_fired_the_clean_up_is_one_query(parent, django_assert_num_queries):
    ask(parent, "pending")

    with django_assert_num_queries(1):
        assert later_runs.delete_fired() == 0
