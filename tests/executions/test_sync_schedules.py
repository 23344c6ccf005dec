"""`manage.py sync_schedules`: repairs the beat tasks of every kind and removes orphans, idempotently."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from executions import later_runs, saved_runs
from executions.models import Execution, TriggerType
from packages.models import Package
from packages.schedules import periodic_task_name
from tests.factories import make_package

pytestmark = pytest.mark.django_db


def sync_schedules(verbosity: int = 1) -> str:
    out = io.StringIO()
    call_command("sync_schedules", verbosity=verbosity, stdout=out)
    return out.getvalue()


def saved_run(package, schedule: str) -> Execution:
    execution = Execution.objects.create(package=package, trigger_type=TriggerType.MANUAL, correlation_id="c")
    execution.saved, execution.schedule = True, schedule
    execution.save()
    return execution


def task(name: str) -> PeriodicTask:
    return PeriodicTask.objects.select_related("crontab").get(name=name)


def test_it_repairs_every_kind_and_removes_orphans():
    package = make_package("hourly", {"a.py": ""}, schedule="20 * * * *")
    drifted = make_package("drifted", {"a.py": ""}, schedule="0 9 * * *")
    Package.objects.filter(pk=drifted.pk).update(schedule="0 10 * * *")  # a bulk write: no signal, the task lags
    task(periodic_task_name(package.pk)).delete()  # lost, say in a restore
    PeriodicTask.objects.create(name="executor.package.999999", task="executor.scheduled_tick",
                                crontab=CrontabSchedule.objects.first())  # fmt: skip
    kept, unsaved = saved_run(package, "0 * * * *"), saved_run(package, "30 * * * *")
    Execution.objects.filter(pk=unsaved.pk).update(saved=False)  # no signal: its task is still enabled
    task(saved_runs.periodic_task_name(kept.pk)).delete()
    PeriodicTask.objects.create(name=saved_runs.periodic_task_name("00000000-0000-0000-0000-000000000000"),
                                task="executor.saved_run_tick", crontab=CrontabSchedule.objects.first())  # fmt: skip
    later_runs.schedule_later_run(kept, cron_expression="* * * * *", params={}, request_id="pending")
    run_at = later_runs.schedule_later_run(kept, cron_expression="* * * * *", params={}, request_id="fired")
    fired = later_runs.periodic_task_name("fired")
    next(ModelEntry(task(fired))).save()
    ModelEntry(task(fired)).is_due()  # as beat leaves a one-off task it fired: disabled
    ClockedSchedule.objects.filter(periodictask__name=fired).update(clocked_time=run_at - timedelta(minutes=5))
    ClockedSchedule.objects.create(clocked_time=timezone.now() - timedelta(days=1))  # its task deleted by hand
    future = ClockedSchedule.objects.create(clocked_time=timezone.now() + timedelta(days=1))

    output = sync_schedules()

    assert task(periodic_task_name(package.pk)).crontab.minute == "20"
    assert task(periodic_task_name(drifted.pk)).crontab.hour == "10"
    assert task(saved_runs.periodic_task_name(kept.pk)).enabled
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == {
        periodic_task_name(package.pk), periodic_task_name(drifted.pk), saved_runs.periodic_task_name(kept.pk),
        later_runs.periodic_task_name("pending"),
    }  # fmt: skip
    assert set(ClockedSchedule.objects.all()) == {task(later_runs.periodic_task_name("pending")).clocked, future}
    assert output.splitlines() == [
        "package tasks: 1 created, 1 updated, 1 deleted, 2 in all",
        "saved run tasks: 1 created, 0 updated, 2 deleted, 1 in all",
        "later run tasks: 0 created, 0 updated, 1 deleted, 1 in all",
        "clocked schedules: 1 unused deleted",
    ]


def test_it_is_idempotent_and_changes_nothing_on_a_healthy_installation():
    package = make_package("hourly", {"a.py": ""}, schedule="20 * * * *")
    make_package("inactive", {"a.py": ""}, schedule="0 9 * * *", active=False)
    saved_run(package, "0 * * * *")
    before = {t.name: t.date_changed for t in PeriodicTask.objects.all()}

    first, second = sync_schedules(verbosity=2), sync_schedules(verbosity=2)

    assert first == second and "0 created, 0 updated, 0 deleted" in first and "  " not in first
    assert {t.name: t.date_changed for t in PeriodicTask.objects.all()} == before
