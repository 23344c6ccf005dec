"""Failure and recovery notifications sent by a real worker to a real SMTP server (aiosmtpd) and a real HTTP
receiver, both on this machine (tests/notification_receivers.py). The worker's SMTP port, its allowed hosts and its
fast retries come from tests/e2e/processes.py (TEST_WORKER_ENV)."""

import pytest
from django.urls import reverse

from executions.models import Delivery, ExecutionStatus, NotificationRule, TriggerType
from executions.notification_models import DeliveryStatus
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from packages.models import Project
from tests.e2e.processes import NOTIFICATION_SMTP_PORT, wait_until
from tests.factories import add_secret, make_package
from tests.notification_receivers import http_receiver, smtp_server
from workers.masking import MASK

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SECRET = "tok-e2e-51f0a9"
# Fails when asked to, printing its secret to stderr (the worker masks it; so must every notification).
SCRIPT = """
import json, sys
params = json.loads(sys.argv[1])
if params.get("fail"):
    print("connecting with", params["secrets"]["API_TOKEN"], file=sys.stderr)
    sys.exit(3)
print("ok")
"""


@pytest.fixture
def receivers(settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]  # for the rule's form checks in this process
    with smtp_server(NOTIFICATION_SMTP_PORT) as (_port, inbox), http_receiver() as hook:
        yield inbox, hook


def orders_package(hook, webhook_format: str = "slack"):
    """Package orders of Sales: failures and recoveries mailed for the project, posted for the package."""
    sales = Project.objects.create(name="Sales")
    package = make_package("orders", {"main.py": SCRIPT}, project=sales)
    add_secret(package, name="API_TOKEN", value=SECRET)
    NotificationRule.objects.create(name="ops mail", project=sales, email_to="ops@example.com")
    chat = NotificationRule(name="ops chat", package=package, channel="webhook", webhook_format=webhook_format)
    chat.set_webhook_url(hook.url("/services/T0/xoxb-e2e"))
    chat.save()
    return package


def run(package, **params):
    return wait_until_finished(trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params), timeout=60)


def received(inbox, hook, count: int) -> None:
    wait_until(lambda: len(inbox) >= count and len(hook.posts) >= count, timeout=30,
               failure=lambda: f"{len(inbox)} mails and {len(hook.posts)} posts, not {count} of each")  # fmt: skip


def test_a_failure_then_a_recovery_are_sent_and_a_success_after_a_success_is_not(celery_worker, receivers):
    inbox, hook = receivers
    package = orders_package(hook)

    failed = run(package, fail=True)
    assert failed.status == ExecutionStatus.FAILED
    received(inbox, hook, 1)
    link = f"https://executor.test/admin/executions/execution/{failed.id}/change/"
    mail, post = inbox[0], hook.posts[0]
    assert mail.recipients == ["ops@example.com"]
    assert mail.subject == "[Executor] FAILED: orders (Sales)"
    assert f"Execution: {link}" in mail.body and "Reason:    failed: step 1 (main.py) failed" in mail.body
    assert f"connecting with {MASK}" in mail.body
    assert post.path == "/services/T0/xoxb-e2e"
    assert post.body["text"] == f"FAILED: orders (Sales): {link}"
    assert f"connecting with {MASK}" in post.body["blocks"][-1]["text"]["text"]
    assert SECRET not in mail.body + str(post.body)

    recovered = run(package)
    assert recovered.status == ExecutionStatus.COMPLETED
    received(inbox, hook, 2)
    assert inbox[1].subject == "[Executor] RECOVERED: orders (Sales)"
    assert hook.posts[1].body["text"].startswith("RECOVERED: orders (Sales)")

    again = run(package)
    # Deliveries are recorded in the transaction that ends the execution: none now means none ever.
    assert again.status == ExecutionStatus.COMPLETED
    assert not Delivery.objects.filter(execution=again).exists()
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 4
    assert (len(inbox), len(hook.posts)) == (2, 2)


def test_a_failing_webhook_is_retried_then_shown_as_failed_in_the_admin(celery_worker, receivers, admin_client):
    inbox, hook = receivers
    hook.status = 500
    package = orders_package(hook, webhook_format="teams")

    failed = run(package, fail=True)

    delivery = Delivery.objects.get(execution=failed, rule__channel="webhook")
    wait_until(lambda: Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.FAILED, timeout=30,
               failure=lambda: f"delivery still {Delivery.objects.get(pk=delivery.pk).status}")  # fmt: skip
    delivery.refresh_from_db()
    assert delivery.attempts == 3  # EXECUTOR_NOTIFICATION_MAX_ATTEMPTS of the test worker
    assert len(hook.posts) == 3
    assert {post.headers["X-Executor-Delivery"] for post in hook.posts} == {str(delivery.pk)}
    assert hook.posts[0].body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert len(inbox) == 1  # the mail rule's delivery went through regardless

    page = admin_client.get(reverse("admin:executions_delivery_changelist") + "?status__exact=failed")
    html = page.content.decode()
    assert page.status_code == 200
    assert "127.0.0.1 answered HTTP 500" in html and 'executor-badge executor-failed">Failed<' in html
    assert "xoxb-e2e" not in html
