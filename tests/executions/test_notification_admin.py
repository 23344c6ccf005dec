"""Notification rules and deliveries in the admin follow the role table (packages/access.py), and a webhook URL is
never shown again once saved.

The people: Vera viewer and Mark maintainer of Sales; Hank owner of HR only. Staff users without a single model
permission: their roles are what counts.
"""

from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from executions import transitions
from executions.models import Delivery, NotificationRule, TriggerType
from executions.notification_models import DeliveryStatus
from executions.notifications import SEND_TASK
from executions.services import trigger_execution
from packages.models import AuditEntry, Package, Project
from tests.factories import make_member, make_package

pytestmark = pytest.mark.django_db

RULES = reverse("admin:executions_notificationrule_changelist")
ADD_RULE = reverse("admin:executions_notificationrule_add")
DELIVERIES = reverse("admin:executions_delivery_changelist")
TOKEN = "xoxb-77e1-token"


@dataclass
class World:
    sales: Project
    orders: Package
    payroll: Package  # HR
    rule: NotificationRule  # Sales'
    delivery: Delivery  # the rule's, failed


@pytest.fixture
def world(enqueued) -> World:
    sales, hr = Project.objects.create(name="Sales"), Project.objects.create(name="HR")
    for username, project, role in [("vera", sales, "viewer"), ("mark", sales, "maintainer"), ("hank", hr, "owner")]:
        # No password: they log in with force_login, and hashing three passwords per test costs seconds.
        make_member(get_user_model().objects.create_user(username, is_staff=True), project, role)
    orders = make_package("orders", {"main.py": ""}, project=sales)
    payroll = make_package("payroll", {"main.py": ""}, project=hr)
    rule = NotificationRule.objects.create(name="sales failures", project=sales, email_to="sales@example.com")
    execution = trigger_execution(orders, trigger_type=TriggerType.MANUAL)
    transitions.claim(execution.pk, "w1", "token")
    transitions.finish(execution.pk, "token", "failed", "failed: step 1 (main.py) failed")
    delivery = Delivery.objects.get(rule=rule)
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.FAILED, attempts=5,
                                                   last_error="email: SMTPServerDisconnected: gone")  # fmt: skip
    return World(sales, orders, payroll, rule, delivery)


def client_of(username: str) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client


def rule_form(**fields) -> dict:
    return {"name": "orders chat", "project": "", "package": "", "active": "on", "on_failure": "on",
            "on_recovery": "on", "channel": "webhook", "email_to": "", "webhook_url": "",
            "webhook_format": "slack", **fields}  # fmt: skip


def change_url(obj) -> str:
    return reverse(f"admin:executions_{obj._meta.model_name}_change", args=[obj.pk])


def test_a_maintainer_adds_a_webhook_rule_whose_url_is_stored_encrypted_and_never_shown(world, settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
    mark = client_of("mark")

    response = mark.post(ADD_RULE, rule_form(package=world.orders.pk, webhook_url=f"http://127.0.0.1:9/h/{TOKEN}"))

    assert response.status_code == 302, response.content.decode()[:3000]
    rule = NotificationRule.objects.get(name="orders chat")
    assert rule.webhook_url() == f"http://127.0.0.1:9/h/{TOKEN}" and TOKEN not in rule.webhook_url_encrypted
    page = mark.get(change_url(rule)).content.decode()
    assert "http://127.0.0.1:9/…" in page and TOKEN not in page
    assert TOKEN not in mark.get(RULES).content.decode()
    entry = AuditEntry.objects.get(action="create")
    assert "webhook_url" in entry.details["fields"] and TOKEN not in str(entry.details)

    # Saved again without a URL: the stored one stays.
    response = mark.post(change_url(rule), rule_form(package=world.orders.pk, name="renamed"))
    assert response.status_code == 302
    assert NotificationRule.objects.get(pk=rule.pk).webhook_url() == f"http://127.0.0.1:9/h/{TOKEN}"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"webhook_url": "https://169.254.169.254/latest/meta-data/"}, "link-local address"),
        ({"webhook_url": f"http://hooks.example.com/{TOKEN}"}, "use https://"),
        ({"webhook_url": ""}, "A webhook rule needs its URL."),
        ({"channel": "email", "email_to": "ops@example.com, not-an-address"}, "not-an-address is not an email"),
        ({"project": "SALES", "webhook_url": "https://hooks.example.com/x"}, "Choose a project (all its packages) or"),
    ],
)
def test_a_rule_is_refused_with_a_reason(world, fields, says):
    if fields.get("project") == "SALES":
        fields["project"] = world.sales.pk
    response = client_of("mark").post(ADD_RULE, rule_form(package=world.orders.pk, **fields))

    assert response.status_code == 200
    page = response.content.decode()
    assert says in page and TOKEN not in page.replace(f'value="http://hooks.example.com/{TOKEN}"', "")
    assert not NotificationRule.objects.filter(name="orders chat").exists()


def test_a_maintainer_cannot_attach_a_rule_to_another_projects_package(world):
    response = client_of("mark").post(ADD_RULE, rule_form(channel="email", email_to="a@example.com",
                                                          package=world.payroll.pk))  # fmt: skip

    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not NotificationRule.objects.filter(name="orders chat").exists()


def test_a_viewer_sees_rules_and_deliveries_but_changes_and_retries_nothing(world, enqueued):
    vera = client_of("vera")

    assert "sales failures" in vera.get(RULES).content.decode()
    assert vera.post(change_url(world.rule), rule_form(project=world.sales.pk)).status_code == 403
    assert vera.post(ADD_RULE, rule_form(project=world.sales.pk)).status_code == 403
    page = vera.get(DELIVERIES).content.decode()
    assert "email: SMTPServerDisconnected: gone" in page and "retry_now" not in page
    vera.post(DELIVERIES, {"action": "retry_now", "_selected_action": [world.delivery.pk]})
    assert Delivery.objects.get(pk=world.delivery.pk).status == DeliveryStatus.FAILED
    assert enqueued.of(SEND_TASK) == []


def test_another_projects_owner_sees_neither_the_rule_nor_its_deliveries(world):
    hank = client_of("hank")

    assert "sales failures" not in hank.get(RULES).content.decode()
    assert hank.get(change_url(world.rule)).status_code == 404
    assert "SMTPServerDisconnected" not in hank.get(DELIVERIES).content.decode()
    assert hank.get(change_url(world.delivery)).status_code == 404


def test_a_maintainer_retries_a_failed_delivery(world, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_of("mark").post(DELIVERIES, {"action": "retry_now", "_selected_action": [world.delivery.pk]})

    assert response.status_code == 302
    delivery = Delivery.objects.get(pk=world.delivery.pk)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 0)
    assert [message.args for message in enqueued.of(SEND_TASK)] == [[delivery.pk]]
