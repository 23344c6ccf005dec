"""Retention (executions/retention.py): what goes, what stays, and what goes with it, on PostgreSQL."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from executions import retention
from executions.chains import chain_of
from executions.later_runs import schedule_later_run
from executions.models import (
    Execution,
    ExecutionFile,
    ExecutionStatus,
    ExecutionStep,
    TriggerEvent,
    TriggerEventStatus,
    TriggerType,
)
from executions.notification_models import Delivery, NotificationRule
from executions.saved_runs import periodic_task_name
from executions.tasks import prune_executions
from packages.models import Package
from tests.factories import make_package, package_form
from tests.metrics_scrape import Scrape

pytestmark = pytest.mark.django_db

C, F, X, S = ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED, ExecutionStatus.SKIPPED


@pytest.fixture(autouse=True)
def rules(settings):
    settings.EXECUTOR_RETENTION_DAYS = 30
    settings.EXECUTOR_RETENTION_FAILED_DAYS = 90
    settings.EXECUTOR_RETENTION_KEEP_LAST = 2
    settings.EXECUTOR_RETENTION_PAUSE_MS = 0


def run(package: Package, status: str, days_old: float, **fields) -> Execution:
    fields.setdefault("correlation_id", f"cid-{package.pk}")
    execution = Execution.objects.create(package=package, status=status, trigger_type=TriggerType.MANUAL, **fields)
    Execution.objects.filter(pk=execution.pk).update(created_at=timezone.now() - timedelta(days=days_old))
    ExecutionStep.objects.create(execution=execution, position=1, file_name="main.py", stdout="output line")
    ExecutionStep.objects.create(execution=execution, position=2, file_name="after.py")
    return execution


def event(name: str, days_old: float, status: str = TriggerEventStatus.STARTED, **fields) -> TriggerEvent:
    created = TriggerEvent.objects.create(event_id=name, source="crm", type="order.created", correlation_id=name,
                                          status=status, **fields)  # fmt: skip
    TriggerEvent.objects.filter(pk=created.pk).update(received_at=timezone.now() - timedelta(days=days_old))
    return created


@pytest.fixture
def world():
    """Three packages and runs of every kind: `goes` lists what the rules delete, `stays` what they keep."""
    alice = make_package("alice_reports")  # the settings: 30 days, failed 90, the last 2
    bob = make_package("bob_exports", keep_last=4)  # only its last-N rule differs
    carol = make_package("carol_sync", keep_days=5, keep_failed_days=None, keep_last=0)
    goes, stays = {}, {}

    stays["young"] = run(alice, C, 3)
    stays["young_failed"] = run(alice, F, 4)
    goes["completed_40"] = run(alice, C, 40)
    goes["cancelled_40"] = run(alice, X, 41)
    goes["skipped_40"] = run(alice, S, 42)
    stays["failed_60"] = run(alice, F, 60)
    goes["failed_100"] = run(alice, F, 100)
    stays["saved_200"] = run(alice, C, 200, saved=True, name="Quarterly")
    stays["running_200"] = run(alice, ExecutionStatus.IN_PROGRESS, 200)
    stays["pending_200"] = run(alice, ExecutionStatus.PENDING, 200)
    # A chain: the parent goes, its young child stays and keeps a page; a re-run of a deleted run stays too.
    goes["parent_50"] = run(alice, C, 50, correlation_id="chain-1")
    stays["child"] = run(bob, C, 1, parent_execution=goes["parent_50"], chain_depth=1, correlation_id="chain-1")
    stays["rerun"] = run(alice, C, 2, rerun_of=goes["completed_40"])
    # A run whose later run is still to come stays, however old.
    stays["later_asker"] = run(alice, C, 45)
    schedule_later_run(stays["later_asker"], cron_expression="0 0 1 1 *", params={}, request_id="req-1")

    for days in (50, 51, 52):  # bob keeps its last 4 (child, 50, 51, 52): 53 and the failed one of 94 days go
        stays[f"bob_{days}"] = run(bob, C, days)
    goes["bob_53"] = run(bob, C, 53)
    goes["bob_54_failed"] = run(bob, F, 94)

    goes["carol_10"] = run(carol, C, 10)  # its own 5 days
    stays["carol_failed_10"] = run(carol, F, 10)  # failed: the setting's 90 days
    ExecutionFile.objects.create(execution=goes["completed_40"], path="_uploads/report/q1.csv", content=b"a,b\n")
    rule = NotificationRule.objects.create(name="failures", package=alice, email_to="ops@example.com")
    for execution in (goes["failed_100"], stays["failed_60"]):  # its notification goes with it, or stays
        Delivery.objects.create(rule=rule, execution=execution, event="failure", next_attempt_at=timezone.now())
    # An execution unsaved after its saved days keeps a disabled beat task: it goes with it.
    PeriodicTask.objects.create(name=periodic_task_name(goes["failed_100"].pk), task="executor.saved_run_tick",
                                enabled=False, interval=_interval())  # fmt: skip

    events_gone = {
        "started_only_deleted_runs": event("e1", 40),
        "no_subscribers_old": event("e3", 40, TriggerEventStatus.NO_SUBSCRIBERS),
        "sent_by_deleted_run": event("e5", 45, TriggerEventStatus.NO_SUBSCRIBERS, parent_execution=goes["parent_50"]),
    }
    events_kept = {
        "started_a_kept_run_too": event("e2", 40),
        "no_subscribers_young": event("e4", 10, TriggerEventStatus.NO_SUBSCRIBERS),
        "sent_by_kept_run": event("e6", 40, TriggerEventStatus.NO_SUBSCRIBERS, parent_execution=stays["failed_60"]),
        "started_a_saved_run": event("e7", 200),
    }
    Execution.objects.filter(pk=goes["completed_40"].pk).update(trigger_event=events_gone["started_only_deleted_runs"])
    Execution.objects.filter(pk__in=[goes["cancelled_40"].pk, stays["failed_60"].pk]).update(
        trigger_event=events_kept["started_a_kept_run_too"]
    )
    Execution.objects.filter(pk=stays["saved_200"].pk).update(trigger_event=events_kept["started_a_saved_run"])
    return {"goes": goes, "stays": stays, "events_gone": events_gone, "events_kept": events_kept}


def _interval():
    from django_celery_beat.models import IntervalSchedule

    return IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)


def _ids(executions: dict) -> set:
    return {execution.pk for execution in executions.values()}


def _table_sizes() -> dict[str, int]:
    models = (Execution, ExecutionStep, ExecutionFile, TriggerEvent, PeriodicTask)
    return {model.__name__: model.objects.count() for model in models}


EXPECTED_EXECUTIONS = {
    ("alice_reports", "completed, older than 30 days"): 2,  # completed_40, parent_50
    ("alice_reports", "cancelled, older than 30 days"): 1,
    ("alice_reports", "skipped, older than 30 days"): 1,
    ("alice_reports", "failed, older than 90 days"): 1,
    ("bob_exports", "completed, older than 30 days"): 1,
    ("bob_exports", "failed, older than 90 days"): 1,
    ("carol_sync", "completed, older than 5 days"): 1,
}


def test_it_deletes_exactly_what_the_rules_say_and_everything_of_those_runs(world, admin_client):
    report = retention.prune()

    assert set(Execution.objects.values_list("pk", flat=True)) == _ids(world["stays"])
    assert {k: v for k, v in report.executions.items() if v} == EXPECTED_EXECUTIONS
    gone = _ids(world["goes"])
    assert not ExecutionStep.objects.filter(execution_id__in=gone).exists()
    assert ExecutionStep.objects.count() == 2 * len(world["stays"])
    assert not ExecutionFile.objects.exists()
    assert not PeriodicTask.objects.filter(name=periodic_task_name(world["goes"]["failed_100"].pk)).exists()
    assert set(TriggerEvent.objects.values_list("pk", flat=True)) == _ids(world["events_kept"])
    assert report.totals() == {"executions": 8, "executions.Delivery": 1, "executions.ExecutionFile": 1,
                               "executions.ExecutionStep": 16, "trigger events": 3}  # fmt: skip
    assert list(Delivery.objects.values_list("execution_id", flat=True)) == [world["stays"]["failed_60"].pk]
    assert report.finished

    # The child of a deleted parent stays whole: its page, its chain (now rooted at itself), its steps.
    child = Execution.objects.get(pk=world["stays"]["child"].pk)
    assert child.parent_execution_id is None and child.chain_depth == 1
    assert [node.execution.pk for node in chain_of(child).roots] == [child.pk]
    page = admin_client.get(reverse("admin:executions_execution_change", args=[child.pk]))
    assert page.status_code == 200 and b"main.py" in page.content
    assert Execution.objects.get(pk=world["stays"]["rerun"].pk).rerun_of_id is None
    assert TriggerEvent.objects.get(pk=world["events_kept"]["sent_by_kept_run"].pk).parent_execution_id is not None

    again = retention.prune()  # nothing more is due
    assert sum(again.executions.values()) == 0 and again.totals()["trigger events"] == 0


def test_the_dry_run_deletes_nothing_and_reports_what_the_real_run_deletes(world):
    before = _table_sizes()

    dry = retention.prune(dry_run=True)

    assert _table_sizes() == before
    real = retention.prune()
    assert dry.dry_run and not real.dry_run
    assert dry.executions == real.executions and dry.totals() == real.totals()
    assert {k: v for k, v in dry.executions.items() if v} == EXPECTED_EXECUTIONS


def test_it_deletes_in_batches_of_the_given_size(world, monkeypatch):
    sizes = []
    delete_batch = retention._delete_batch
    monkeypatch.setattr(retention, "_delete_batch", lambda ids: sizes.append(len(ids)) or delete_batch(ids))

    report = retention.prune(batch_size=2)

    assert set(Execution.objects.values_list("pk", flat=True)) == _ids(world["stays"])
    assert {k: v for k, v in report.executions.items() if v} == EXPECTED_EXECUTIONS
    assert set(TriggerEvent.objects.values_list("pk", flat=True)) == _ids(world["events_kept"])
    assert max(sizes) == 2 and sum(sizes) == 8
    assert report.batches == len(sizes) + 3  # and 6 old events, 2 a page


def test_it_stops_at_its_time_budget_and_the_next_run_goes_on(world):
    first = retention.prune(batch_size=1, time_budget=0)

    assert not first.finished and first.batches == 1
    retention.prune(batch_size=1)
    assert set(Execution.objects.values_list("pk", flat=True)) == _ids(world["stays"])


def test_a_package_override_wins_and_an_empty_one_follows_the_setting(world, settings):
    settings.EXECUTOR_RETENTION_DAYS = 3650
    settings.EXECUTOR_RETENTION_FAILED_DAYS = 3650

    report = retention.prune()

    # Only carol's own 5 days still delete something; its failed run follows the setting (now 10 years).
    assert {k: v for k, v in report.executions.items() if v} == {("carol_sync", "completed, older than 5 days"): 1}
    assert Execution.objects.filter(pk=world["stays"]["carol_failed_10"].pk).exists()


def test_the_package_page_edits_the_overrides_and_blank_means_the_setting(admin_client):
    url = reverse("admin:packages_package_add")

    response = admin_client.post(url, package_form(keep_days="7", keep_failed_days="", keep_last="5"))

    assert response.status_code == 302, response.content[-2000:]
    package = Package.objects.get(package_name="seed_package")
    assert (package.keep_days, package.keep_failed_days, package.keep_last) == (7, None, 5)
    assert retention.Rules.of(package) == retention.Rules(keep_days=7, keep_failed_days=90, keep_last=5)
    page = admin_client.get(reverse("admin:packages_package_change", args=[package.pk]))
    assert b"keep failed executions (days)" in page.content.lower()


def test_the_command_prints_counts_per_package_and_reason(world, capsys):
    call_command("prune_executions", "--dry-run")
    dry = capsys.readouterr().out

    assert "Dry run: nothing deleted" in dry
    assert "alice_reports: completed, older than 30 days: 2" in dry
    assert "carol_sync: completed, older than 5 days: 1" in dry
    assert (
        "executions 8, executions.Delivery 1, executions.ExecutionFile 1, executions.ExecutionStep 16, trigger events 3"
    ) in dry
    assert Execution.objects.filter(pk__in=_ids(world["goes"])).count() == len(world["goes"])
    call_command("prune_executions", "--batch-size", "3")
    assert "In all, deleted: executions 8," in capsys.readouterr().out
    assert not Execution.objects.filter(pk__in=_ids(world["goes"])).exists()


def test_the_periodic_task_returns_its_counts_and_does_nothing_when_retention_is_off(world, settings):
    entry = settings.CELERY_BEAT_SCHEDULE["executor.prune_executions"]
    assert entry["options"]["queue"] == "maintenance"

    settings.EXECUTOR_RETENTION = False
    assert prune_executions() == {}
    assert Execution.objects.filter(pk__in=_ids(world["goes"])).count() == len(world["goes"])

    settings.EXECUTOR_RETENTION = True
    before = _deleted_metric("executions")
    assert prune_executions()["executions"] == 8
    assert _deleted_metric("executions") == before + 8  # executor_retention_deleted_total{kind="executions"}


def _deleted_metric(kind: str) -> float:
    return Scrape.parse(Client().get("/metrics").content.decode()).value("executor_retention_deleted_total", kind=kind)


def test_unfinished_and_saved_runs_stay_whatever_the_rules(settings):
    settings.EXECUTOR_RETENTION_DAYS = settings.EXECUTOR_RETENTION_FAILED_DAYS = 1
    settings.EXECUTOR_RETENTION_KEEP_LAST = 0
    package = make_package("dave_etl")
    kept = [run(package, status, 400) for status in (ExecutionStatus.PENDING, ExecutionStatus.IN_PROGRESS)]
    kept.append(run(package, F, 400, saved=True))

    retention.prune()

    assert set(Execution.objects.values_list("pk", flat=True)) == {execution.pk for execution in kept}
