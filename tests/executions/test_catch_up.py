"""Missed schedule times (executions/catch_up.py) against the real database: caught up once, or recorded as missed."""

import logging
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from executions.catch_up import catch_up_missed
from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.ticks import PACKAGE, fire
from packages.models import MissedRunPolicy, Package
from packages.schedules import periodic_task_name, sync_package_schedule
from tests.factories import make_package
from workers.reaper import reap

pytestmark = pytest.mark.django_db

# A reaper cycle 45 s after the 10:20 fire time of an every-minute schedule: 10:20 is the latest missed time.
NOW = datetime(2026, 3, 2, 10, 20, 45, tzinfo=UTC)
KEY_1020 = "schedule:{}:2026-03-02T10:20:00+00:00"


def scheduled(schedule="* * * * *", since=NOW - timedelta(hours=1), name="every_minute", **fields) -> Package:
    package = make_package(name, files={"a.py": "print(1)", "b.py": "print(2)"}, schedule=schedule, **fields)
    sync_package_schedule(package)
    Package.objects.filter(pk=package.pk).update(schedule_since=since)  # the schedule was set `since`, not now
    return package


def tick_at(package, moment):
    with mock.patch("executions.ticks.timezone.now", return_value=moment):
        return fire(PACKAGE, package_id=package.pk)


def test_catch_up_once_starts_one_run_for_the_latest_missed_time_and_the_next_cycle_none(caplog):
    package = scheduled(since=NOW - timedelta(hours=5))  # 300 fire times passed without a tick: one run, not 300

    with caplog.at_level(logging.WARNING, logger="executions.catch_up"):
        assert catch_up_missed(NOW) == 1
    assert catch_up_missed(NOW + timedelta(seconds=3)) == 0

    execution = Execution.objects.get(package=package)
    assert execution.idempotency_key == KEY_1020.format(package.pk)
    assert (execution.status, execution.trigger_type) == (ExecutionStatus.PENDING, TriggerType.SCHEDULED)
    assert execution.description.startswith("caught up: the 2026-03-02 10:20 UTC tick was not delivered")
    assert list(execution.steps.values_list("status", flat=True)) == [StepStatus.PENDING, StepStatus.PENDING]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "10:20 UTC" in lines[0] and str(execution.id) in lines[0]


def test_skip_records_one_skipped_execution_with_no_steps():
    package = scheduled(missed_runs=MissedRunPolicy.SKIP)

    assert catch_up_missed(NOW) == 1
    assert catch_up_missed(NOW + timedelta(seconds=3)) == 0

    execution = Execution.objects.get(package=package)
    assert execution.idempotency_key == KEY_1020.format(package.pk)
    assert execution.status == ExecutionStatus.SKIPPED and execution.is_finished
    assert execution.status_reason.startswith("missed: the 2026-03-02 10:20 UTC run was not started")
    assert execution.finished_at == NOW and execution.started_at is None
    assert not execution.steps.exists()


def test_a_schedule_set_after_the_fire_time_owes_nothing():
    scheduled(since=datetime(2026, 3, 2, 10, 20, 30, tzinfo=UTC))  # set at 10:20:30: 10:20 is not its run
    assert catch_up_missed(NOW) == 0
    assert not Execution.objects.exists()


def test_changing_the_schedule_moves_schedule_since_so_an_earlier_time_is_not_caught_up():
    package = scheduled(schedule="0 3 * * *", since=NOW - timedelta(days=3))
    package.refresh_from_db()
    package.schedule = "* * * * *"
    package.save()
    sync_package_schedule(package)  # as the admin and the importer do

    assert package.schedule_since > NOW  # (real time is later than NOW) the change counts from now
    assert catch_up_missed(NOW) == 0


def test_an_inactive_package_catches_up_nothing():
    package = scheduled(active=False)
    assert catch_up_missed(NOW) == 0
    # Even with its beat task left enabled by hand: the package is what counts.
    PeriodicTask.objects.filter(name=periodic_task_name(package.pk)).update(enabled=True)
    assert catch_up_missed(NOW) == 0
    assert not Execution.objects.exists()


def test_a_beat_task_disabled_by_hand_owes_nothing():
    package = scheduled()
    PeriodicTask.objects.filter(name=periodic_task_name(package.pk)).update(enabled=False)
    assert catch_up_missed(NOW) == 0


def test_a_fire_time_whose_tick_arrived_is_left_alone():
    package = scheduled()
    tick = tick_at(package, datetime(2026, 3, 2, 10, 20, 1, tzinfo=UTC))

    assert catch_up_missed(NOW) == 0
    assert list(Execution.objects.values_list("pk", flat=True)) == [tick.pk]
    assert tick.description == ""


@pytest.mark.parametrize("policy", [MissedRunPolicy.CATCH_UP, MissedRunPolicy.SKIP])
def test_a_tick_arriving_after_the_catch_up_creates_no_duplicate(policy):
    package = scheduled(missed_runs=policy)
    assert catch_up_missed(NOW) == 1
    caught = Execution.objects.get()

    late_tick = tick_at(package, datetime(2026, 3, 2, 10, 20, 50, tzinfo=UTC))

    assert late_tick.pk == caught.pk
    assert Execution.objects.count() == 1


def test_a_tick_only_slightly_late_is_not_pre_empted():
    # 20 s after 10:20 is within the grace: 10:20 is left to its tick, only 10:19 (unrun) is caught up.
    package = scheduled()
    assert catch_up_missed(datetime(2026, 3, 2, 10, 20, 20, tzinfo=UTC)) == 1
    assert Execution.objects.get().idempotency_key == f"schedule:{package.pk}:2026-03-02T10:19:00+00:00"


def test_a_fire_time_beyond_the_look_back_is_not_caught_up(settings):
    scheduled(schedule="0 3 * * *", since=NOW - timedelta(days=3))  # latest: 03:00 today, 7 h 20 min before NOW
    settings.EXECUTOR_SCHEDULE_CATCH_UP_SECONDS = 6 * 3600
    assert catch_up_missed(NOW) == 0
    settings.EXECUTOR_SCHEDULE_CATCH_UP_SECONDS = 0  # off
    assert catch_up_missed(NOW) == 0
    settings.EXECUTOR_SCHEDULE_CATCH_UP_SECONDS = 8 * 3600
    assert catch_up_missed(NOW) == 1
    assert Execution.objects.get().idempotency_key.endswith(":2026-03-02T03:00:00+00:00")


def test_fire_times_are_those_of_the_schedules_zone():
    package = scheduled(schedule="30 9 * * *", timezone="Europe/Zurich", since=NOW - timedelta(days=1))
    assert catch_up_missed(NOW) == 1  # 09:30 in Zurich is 08:30 UTC in March (CET)
    assert Execution.objects.get().idempotency_key == f"schedule:{package.pk}:2026-03-02T08:30:00+00:00"


def test_a_package_that_cannot_start_is_recorded_once_not_retried_every_cycle():
    package = scheduled()
    package.scripts.all().delete()

    assert catch_up_missed(NOW) == 1
    assert catch_up_missed(NOW + timedelta(seconds=3)) == 0
    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.SKIPPED
    assert execution.status_reason.startswith("not started: the 2026-03-02 10:20 UTC run was missed")
    assert "has no scripts to run" in execution.status_reason


def test_a_cycle_costs_two_queries_however_many_packages(django_assert_num_queries):
    packages = [scheduled(name=f"every_minute_{n}") for n in range(6)]
    for package in packages:
        tick_at(package, datetime(2026, 3, 2, 10, 20, 1, tzinfo=UTC))
    with django_assert_num_queries(2):  # the candidates, then the existing keys
        assert catch_up_missed(NOW) == 0


def test_the_reaper_runs_the_catch_up_and_counts_it():
    scheduled()
    report = reap(NOW)
    assert report.caught_up == 1
    assert Execution.objects.count() == 1


def test_the_package_page_lists_missed_and_caught_up_runs(admin_client):
    caught = scheduled(name="caught")
    skipped = scheduled(name="skipped", missed_runs=MissedRunPolicy.SKIP)
    now = datetime.now(UTC)
    catch_up_missed(now)
    missed = Execution.objects.get(package=skipped)

    page = admin_client.get(reverse("admin:packages_package_change", args=[skipped.pk])).content.decode()
    assert "Missed runs, last 7 days" in page
    assert missed.short_id in page and "skipped: missed: the " in page
    assert f"package__id__exact={skipped.pk}&amp;status__exact=skipped" in page

    page = admin_client.get(reverse("admin:packages_package_change", args=[caught.pk])).content.decode()
    assert "pending: caught up: the " in page
    listing = admin_client.get(reverse("admin:executions_execution_changelist") + "?status__exact=skipped")
    assert missed.short_id in listing.content.decode()
    record = admin_client.get(reverse("admin:executions_execution_change", args=[missed.pk])).content.decode()
    assert missed.status_reason in record
