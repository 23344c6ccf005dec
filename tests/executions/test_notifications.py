"""Which notifications an execution's end records (executions/notifications.py), recorded with the end itself, and
what a broker outage does to them; the webhook URL policy (executions/webhook_urls.py)."""

import base64
import io
import json
import time
from datetime import timedelta

import pytest
import redis
from django.core.management import call_command
from django.utils import timezone

from executions import notifications, transitions
from executions.models import Delivery, Execution, ExecutionStatus, NotificationRule, TriggerType
from executions.notification_models import DeliveryStatus, NotifyEvent
from executions.notifications import SEND_TASK, event_for
from executions.services import trigger_execution
from executions.webhook_urls import UnsafeWebhookUrl, check, parse
from packages.encryption import generate_key
from packages.models import Project
from tests.e2e.processes import free_port
from tests.factories import make_package
from tests.redis_server import broker_of_this_process

pytestmark = pytest.mark.django_db

FAILED, COMPLETED, CANCELLED = ExecutionStatus.FAILED, ExecutionStatus.COMPLETED, ExecutionStatus.CANCELLED


@pytest.mark.parametrize(
    ("status", "previous", "event"),
    [
        (FAILED, None, NotifyEvent.FAILURE),
        (FAILED, FAILED, NotifyEvent.FAILURE),
        (COMPLETED, FAILED, NotifyEvent.RECOVERY),
        (COMPLETED, COMPLETED, NotifyEvent.FINISHED),
        (COMPLETED, None, NotifyEvent.FINISHED),
        (CANCELLED, FAILED, NotifyEvent.FINISHED),
    ],
)
def test_it_tells_the_kind_of_end(status, previous, event):
    assert event_for(status, previous) == event


@pytest.mark.parametrize(
    ("ticked", "event", "wanted"),
    [
        ({"on_failure": True, "on_recovery": False}, NotifyEvent.FAILURE, True),
        ({"on_failure": True, "on_recovery": False}, NotifyEvent.RECOVERY, False),
        ({"on_failure": False, "on_recovery": True}, NotifyEvent.RECOVERY, True),
        ({"on_failure": True, "on_recovery": True}, NotifyEvent.FINISHED, False),
        ({"on_failure": False, "on_recovery": False, "on_every_finish": True}, NotifyEvent.FINISHED, True),
        ({"on_failure": False, "on_recovery": False, "on_every_finish": True}, NotifyEvent.FAILURE, True),
    ],
)
def test_a_rule_wants_what_it_is_ticked_for(ticked, event, wanted):
    assert NotificationRule(**ticked).wants(event) is wanted


@pytest.fixture
def sales():
    return Project.objects.create(name="Sales")


@pytest.fixture
def orders(sales):
    return make_package("orders", {"main.py": "print(1)"}, project=sales)


def email_rule(name: str, **fields) -> NotificationRule:
    return NotificationRule.objects.create(name=name, channel="email", email_to="ops@example.com", **fields)


def end(package, status: str, reason: str = "") -> Execution:
    """An execution of `package` that a worker claimed and ended with `status`, as the runner does."""
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    transitions.claim(execution.pk, "w1", "token")
    assert transitions.finish(execution.pk, "token", status, reason) == 1
    execution.refresh_from_db()
    return execution


def test_an_end_records_one_delivery_per_matching_rule_and_publishes_it_after_commit(
    sales, orders, enqueued, django_capture_on_commit_callbacks
):
    on_project = email_rule("project failures", project=sales)
    on_package = email_rule("every orders run", package=orders, on_failure=False, on_every_finish=True)
    email_rule("another project", project=Project.objects.create(name="HR"))
    email_rule("switched off", project=sales, active=False)
    email_rule("recoveries only", package=orders, on_failure=False)

    with django_capture_on_commit_callbacks(execute=True):
        execution = end(orders, FAILED, "failed: step 1 (main.py) failed")

    deliveries = Delivery.objects.filter(execution=execution)
    assert {(d.rule, d.event, d.status) for d in deliveries} == {
        (on_project, NotifyEvent.FAILURE, DeliveryStatus.PENDING),
        (on_package, NotifyEvent.FAILURE, DeliveryStatus.PENDING),
    }
    assert sorted(m.args[0] for m in enqueued.of(SEND_TASK)) == sorted(d.pk for d in deliveries)
    assert {m.queue for m in enqueued.of(SEND_TASK)} == {"maintenance"}


def test_recovery_is_the_first_success_after_a_failure_and_a_success_after_a_success_sends_nothing(orders, enqueued):
    rule = email_rule("failures and recoveries", package=orders)

    failed = end(orders, FAILED)
    cancelled = end(orders, CANCELLED)  # says nothing about the package's health
    recovered = end(orders, COMPLETED)
    again = end(orders, COMPLETED)

    events = dict(Delivery.objects.filter(rule=rule).values_list("execution_id", "event"))
    assert events == {failed.pk: NotifyEvent.FAILURE, recovered.pk: NotifyEvent.RECOVERY}
    assert cancelled.pk not in events and again.pk not in events


def test_every_ending_transition_records_its_notifications(orders, enqueued):
    rule = email_rule("everything", package=orders, on_every_finish=True)
    unfinished = trigger_execution(orders, trigger_type=TriggerType.MANUAL)
    lost = trigger_execution(orders, trigger_type=TriggerType.MANUAL)
    never_started = trigger_execution(orders, trigger_type=TriggerType.MANUAL)
    transitions.claim(unfinished.pk, "w1", "t1")
    transitions.claim(lost.pk, "w2", "t2")

    transitions.fail_unfinished(unfinished.pk, "t1", "failed: internal error in the worker (KeyError)")
    transitions.fail_lost(lost.pk, "t2", "failed: worker lost")
    transitions.cancel_pending(never_started.pk, None, "cancelled by root")

    assert dict(Delivery.objects.filter(rule=rule).values_list("execution_id", "event")) == {
        unfinished.pk: NotifyEvent.FAILURE,
        lost.pk: NotifyEvent.FAILURE,
        never_started.pk: NotifyEvent.FINISHED,
    }


def test_an_end_that_no_rule_covers_is_two_statements_and_no_transaction(orders, enqueued, django_assert_num_queries):
    email_rule("another package's", package=make_package("bob_reports", {"main.py": ""}))
    execution = trigger_execution(orders, trigger_type=TriggerType.MANUAL)
    transitions.claim(execution.pk, "w1", "token")

    with django_assert_num_queries(2):  # the rules, then the UPDATE: every run without a rule ends like this
        assert transitions.finish(execution.pk, "token", COMPLETED, "") == 1

    execution.refresh_from_db()
    assert execution.status == COMPLETED and not Delivery.objects.exists()


def test_a_finish_recorded_twice_still_makes_one_delivery(orders, enqueued):
    email_rule("failures", package=orders)
    execution = end(orders, FAILED)

    notifications.record_finished(execution.pk)

    assert Delivery.objects.filter(execution=execution).count() == 1


def test_a_broker_outage_at_the_end_fails_nothing_and_the_sweep_sends_it_later(
    orders, settings, django_capture_on_commit_callbacks, caplog
):
    """Redis is down (nothing listens on its port) when the run ends; the sweep publishes to the real test Redis."""
    email_rule("failures", package=orders)

    execution = trigger_execution(orders, trigger_type=TriggerType.MANUAL)
    transitions.claim(execution.pk, "w1", "token")
    with broker_of_this_process(f"redis://127.0.0.1:{free_port()}/0"):
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            assert transitions.finish(execution.pk, "token", FAILED, "failed: step 1 (main.py) failed") == 1
        took = time.monotonic() - started

    execution.refresh_from_db()
    assert execution.status == FAILED  # the run's end is recorded
    assert took < 3  # the refused publish costs the end of the run about a second, not a hang
    delivery = Delivery.objects.get(execution=execution)
    assert delivery.status == DeliveryStatus.PENDING  # and so is its notification, not lost
    assert "could not publish notifications to the broker" in caplog.text
    assert "the sweep sends them later" in caplog.text

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(notifications.LANE)
    assert notifications.sweep(timezone.now()) == 0  # not overdue yet: its own message may still be on its way
    later = timezone.now() + timedelta(seconds=settings.EXECUTOR_NOTIFICATION_SWEEP_SECONDS + 1)
    assert notifications.sweep(later) == 1
    (message,) = broker.lrange(notifications.LANE, 0, -1)
    assert json.loads(base64.b64decode(json.loads(message)["body"]))[0] == [delivery.pk]
    broker.delete(notifications.LANE)


def test_a_bug_in_the_notifications_never_keeps_a_run_from_ending(orders, monkeypatch, enqueued, caplog):
    email_rule("failures", package=orders)

    def broken(execution_id):
        raise RuntimeError("a bug")

    monkeypatch.setattr("executions.notifications.record_finished", broken)
    execution = end(orders, FAILED)

    assert execution.status == FAILED
    assert "its notifications could not be recorded" in caplog.text


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://hooks.example.com/xoxb-9f3e", "must start with https://"),
        ("https://user:xoxb-9f3e@hooks.example.com/x", "user name or password"),
        ("http://hooks.example.com/T0/B0/xoxb-9f3e", "unencrypted"),
        ("https://hooks.example.com/xoxb-9f3e b", "spaces"),
        ("https://hooks.example.com:99999/xoxb-9f3e", "port"),
        ("", "enter the webhook's URL"),
    ],
)
def test_a_malformed_or_plain_http_webhook_url_is_refused_without_repeating_it(url, says):
    with pytest.raises(UnsafeWebhookUrl, match=says) as refused:
        parse(url)
    assert "xoxb-9f3e" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://127.0.0.1:8000/admin/", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://[::ffff:169.254.169.254]/x", "link-local"),
        ("https://localhost/hook", "loopback"),
    ],
)
def test_a_webhook_to_the_workers_own_network_is_refused(url, kind):
    with pytest.raises(UnsafeWebhookUrl, match=f"{kind} address"):
        check(url)


def test_a_listed_host_may_be_internal_and_plain_http(settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]

    parsed, addresses = check("http://127.0.0.1:8125/hook?token=abc")

    assert (parsed.origin, parsed.target, addresses) == ("http://127.0.0.1:8125", "/hook?token=abc", ["127.0.0.1"])


def test_rotate_webhook_urls_re_encrypts_them_under_the_new_key(orders, settings):
    old_key, new_key = generate_key(), generate_key()
    settings.EXECUTOR_FERNET_KEYS = [old_key]
    rule = NotificationRule(name="chat", package=orders, channel="webhook")
    rule.set_webhook_url("https://hooks.example.com/services/T0/xoxb-1")
    rule.save()
    email_rule("mail", package=orders)  # no URL: left alone

    settings.EXECUTOR_FERNET_KEYS = [new_key, old_key]
    call_command("rotate_webhook_urls", stdout=io.StringIO())

    settings.EXECUTOR_FERNET_KEYS = [new_key]
    rule.refresh_from_db()
    assert rule.webhook_url() == "https://hooks.example.com/services/T0/xoxb-1"
