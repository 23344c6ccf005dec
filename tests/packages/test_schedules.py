import json
import threading
from datetime import UTC, datetime, timedelta
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from executions.models import Execution, TriggerType
from executions.services import lane_for
from executions.ticks import PACKAGE, fire
from packages.models import MissedRunPolicy, Package
from packages.schedules import fire_time_of_tick, periodic_task_name, sync_package_schedule, tick_key
from tests.factories import make_package

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def scheduled(schedule="0 9 * * 0-4", **fields):
    package = make_package(files={"a.py": "print(1)"}, schedule=schedule, **fields)
    sync_package_schedule(package)
    return package


def task_of(package) -> PeriodicTask:
    return PeriodicTask.objects.select_related("crontab").get(name=periodic_task_name(package.pk))


def test_a_scheduled_package_gets_one_periodic_task_in_celery_numbering():
    package = scheduled("0 9 * * 0-4", timezone="Europe/Zurich")

    task = task_of(package)
    assert (task.task, task.queue, task.enabled) == ("executor.scheduled_tick", "scheduled", True)
    assert json.loads(task.kwargs) == {"package_id": package.pk}
    # FX Monday-Friday (0-4) is Celery's 1-5 (Celery counts from Sunday = 0).
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("0", "9", "1,2,3,4,5")
    assert str(task.crontab.timezone) == "Europe/Zurich"


def test_syncing_again_updates_the_same_task():
    package = scheduled("0 9 * * *")
    package.schedule = "30 18 * * 6"
    sync_package_schedule(package)

    assert PeriodicTask.objects.filter(name__startswith="executor.package.").count() == 1
    assert (task_of(package).crontab.minute, task_of(package).crontab.day_of_week) == ("30", "0")


def test_an_inactive_package_or_an_empty_schedule_disables_the_task():
    package = scheduled()
    package.active = False
    sync_package_schedule(package)
    assert task_of(package).enabled is False

    package.active, package.schedule = True, ""
    sync_package_schedule(package)
    assert task_of(package).enabled is False


def test_the_task_follows_every_save_and_delete_of_the_package_without_being_asked():
    package = make_package(files={"a.py": ""}, schedule="0 9 * * *")  # a plain save: no admin, no import
    assert task_of(package).enabled and task_of(package).crontab.hour == "9"

    package.schedule = "0 18 * * *"
    package.save()
    assert task_of(package).crontab.hour == "18"
    package.active = False
    package.save(update_fields=["active"])
    assert task_of(package).enabled is False

    package.delete()
    assert not PeriodicTask.objects.filter(name=periodic_task_name(package.pk)).exists()


def test_a_save_rolled_back_leaves_no_schedule():
    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), transaction.atomic():
        make_package("rolled_back", files={"a.py": ""}, schedule="0 9 * * *")
        assert PeriodicTask.objects.filter(name__startswith="executor.package.").exists()  # in the transaction
        raise Abandoned

    assert not Package.objects.exists() and not PeriodicTask.objects.exists()


def test_a_save_of_unrelated_fields_does_not_touch_the_task():
    package = scheduled("0 9 * * *")
    written = task_of(package).date_changed

    package.description = "edited"
    package.save(update_fields=["description"])
    package.save()  # everything, the schedule unchanged

    assert task_of(package).date_changed == written


def test_sync_schedules_repairs_drift_and_removes_orphans():
    package = scheduled("20 * * * *")
    task_of(package).delete()
    every_minute = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(name="executor.package.999999", task="executor.scheduled_tick", interval=every_minute)

    call_command("sync_schedules")

    assert task_of(package).crontab.minute == "20"
    assert not PeriodicTask.objects.filter(name="executor.package.999999").exists()


def test_a_tick_is_attributed_to_the_fire_time_it_stands_for():
    package = scheduled("20 * * * *")
    fire_time = datetime(2026, 3, 2, 10, 20, tzinfo=UTC)
    late = datetime(2026, 3, 2, 10, 20, 0, 300000, tzinfo=UTC)
    assert fire_time_of_tick(package.schedule, package.timezone, late) == fire_time
    # Sent a moment early by beat: still the 10:20 run, under the same key.
    early = datetime(2026, 3, 2, 10, 19, 58, tzinfo=UTC)
    assert fire_time_of_tick(package.schedule, package.timezone, early) == fire_time
    assert tick_key("p", package.schedule, package.timezone, early) == "p:2026-03-02T10:20:00+00:00"
    assert tick_key("p", package.schedule, package.timezone, late) == "p:2026-03-02T10:20:00+00:00"


def test_a_repeated_tick_creates_one_execution():
    package = scheduled("* * * * *")
    with mock.patch("executions.ticks.timezone.now", return_value=datetime(2026, 3, 2, 10, 20, 1, tzinfo=UTC)):
        first = fire(PACKAGE, package_id=package.pk)
    with mock.patch("executions.ticks.timezone.now", return_value=datetime(2026, 3, 2, 10, 20, 40, tzinfo=UTC)):
        second = fire(PACKAGE, package_id=package.pk)

    assert first.pk == second.pk
    assert first.trigger_type == TriggerType.SCHEDULED
    assert lane_for(first) == "scheduled"


def test_ticks_for_an_inactive_or_deleted_package_start_nothing():
    package = scheduled(active=False)
    assert fire(PACKAGE, package_id=package.pk) is None
    assert fire(PACKAGE, package_id=123456789) is None
    assert Execution.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_ticks_for_one_fire_time_create_exactly_one_execution():
    package = scheduled("* * * * *")
    barrier = threading.Barrier(8)
    results = []

    def tick():
        barrier.wait()
        try:
            results.append(fire(PACKAGE, package_id=package.pk).pk)
        finally:
            connection.close()

    # Patched once for all threads: patching inside each thread would race on the module attribute.
    with mock.patch("executions.ticks.timezone.now", return_value=datetime(2026, 3, 2, 10, 20, 2, tzinfo=UTC)):
        threads = [threading.Thread(target=tick) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(results) == 8 and len(set(results)) == 1
    assert Execution.objects.count() == 1


def test_schedule_since_moves_only_when_what_beat_fires_changes():
    package = scheduled("0 9 * * *")
    first = package.schedule_since
    assert first is not None and Package.objects.get(pk=package.pk).schedule_since == first

    package.description = "edited, same schedule"
    sync_package_schedule(package)
    assert Package.objects.get(pk=package.pk).schedule_since == first

    for change in ({"schedule": "0 10 * * *"}, {"timezone": ZoneInfo("Europe/Zurich")}, {"active": False},
                   {"active": True}, {"schedule": ""}, {"schedule": "0 10 * * *"}):  # fmt: skip
        previous = Package.objects.get(pk=package.pk).schedule_since
        for field, value in change.items():
            setattr(package, field, value)
        sync_package_schedule(package)
        assert Package.objects.get(pk=package.pk).schedule_since > previous, change


def test_the_missed_runs_policy_is_set_on_the_package_page(admin_client):
    package = scheduled("0 9 * * *")
    form = {
        "name": package.name, "package_name": package.package_name, "timezone": "UTC", "priority": "5",
        "schedule": "0 9 * * *", "active": "on", "retries_after_worker_loss": "0", "missed_runs": "skip",
        **{f"{prefix}-{key}": value for prefix in ("scripts", "environment_variables", "secrets")
           for key, value in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"))},
    }  # fmt: skip
    url = reverse("admin:packages_package_change", args=[package.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="missed_runs" value="catch_up"' in page and "Catch up once" in page

    assert admin_client.post(url, form).status_code == 302
    assert Package.objects.get(pk=package.pk).missed_runs == MissedRunPolicy.SKIP
    del form["missed_runs"]  # a form posted by a client that predates the policy: unchanged
    assert admin_client.post(url, form).status_code == 302
    assert Package.objects.get(pk=package.pk).missed_runs == MissedRunPolicy.SKIP
    form["missed_runs"] = "catch_up"
    assert admin_client.post(url, form).status_code == 302
    assert Package.objects.get(pk=package.pk).missed_runs == MissedRunPolicy.CATCH_UP


@pytest.mark.django_db(transaction=True)
def test_the_upgrade_starts_existing_schedules_now_with_the_catch_up_policy():
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([("packages", "0009_projects_access")])
        executor.loader.build_graph()
        old_package = executor.loader.project_state([("packages", "0009_projects_access")]).apps.get_model(
            "packages", "Package"
        )
        old_package.objects.create(name="Old", package_name="old", schedule="0 3 * * *")
        before = datetime.now(UTC)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    upgraded = Package.objects.get(package_name="old")
    assert upgraded.schedule_since >= before - timedelta(seconds=5)  # (the database's clock)
    assert upgraded.missed_runs == MissedRunPolicy.CATCH_UP
