"""What a notification says and how it is sent (workers/notification_message.py, notification_sending.py,
webhooks.py): the three webhook shapes, masking, and real deliveries to a local SMTP server and HTTP receiver, run
in this process (tests/e2e/test_notifications.py sends them from a real worker)."""

import logging
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from executions import transitions
from executions.models import Delivery, ExecutionStatus, ExecutionStep, NotificationRule, StepStatus, TriggerType
from executions.notification_models import DeliveryStatus
from executions.notifications import SEND_TASK
from executions.services import trigger_execution
from packages.models import Project
from tests.factories import add_secret, make_package
from tests.notification_receivers import http_receiver, smtp_server
from workers import masking
from workers.notification_message import compose, execution_url, generic_payload, slack_payload, teams_payload
from workers.notification_sending import send
from workers.tasks import send_notification, sweep_notifications

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]

SECRET = "pa55-9d1c-secret"
STDERR = "".join(f"line {n}\n" for n in range(1, 31)) + f"Traceback: login failed with {SECRET} <!channel>\n"


@pytest.fixture
def failed_delivery(settings):
    """A failure delivery of package orders (Sales), whose failed step printed a secret in the last of 31 lines
    (stored unmasked here, as if the secret had been added after the run: the message masks it anyway)."""
    settings.EXECUTOR_BASE_URL = "https://executor.example"
    settings.EXECUTOR_NOTIFICATION_STDERR_LINES = 5
    package = make_package("orders", {"a.py": "", "b.py": ""}, project=Project.objects.create(name="Sales"))
    add_secret(package, name="PASSWORD", value=SECRET)
    rule = NotificationRule.objects.create(name="ops", package=package, email_to="ops@example.com, oncall@example.com")
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    ExecutionStep.objects.filter(execution=execution, position=2).update(status=StepStatus.FAILED, stderr=STDERR)
    transitions.claim(execution.pk, "w1", "token")
    transitions.finish(execution.pk, "token", ExecutionStatus.FAILED, "failed: step 2 (b.py) failed")
    return Delivery.objects.get(rule=rule, execution=execution)


def webhook_rule(delivery: Delivery, url: str, webhook_format: str = "generic") -> NotificationRule:
    rule = delivery.rule
    rule.channel, rule.webhook_format = "webhook", webhook_format
    rule.set_webhook_url(url)
    rule.save()
    return rule


def test_a_message_holds_the_link_package_project_reason_and_the_last_stderr_lines_masked(failed_delivery):
    message = compose(failed_delivery)

    execution_id = str(failed_delivery.execution_id)
    assert message.url == f"https://executor.example/admin/executions/execution/{execution_id}/change/"
    assert message.url.endswith(reverse("admin:executions_execution_change", args=[execution_id]))
    assert (message.package_name, message.project, message.status) == ("orders", "Sales", "failed")
    assert message.reason == "failed: step 2 (b.py) failed"
    assert message.failed_step == "2 (b.py)"
    assert message.stderr_tail.splitlines() == ["line 27", "line 28", "line 29", "line 30",
                                                f"Traceback: login failed with {masking.MASK} <!channel>"]  # fmt: skip
    assert message.subject == "[Executor] FAILED: orders (Sales)"


def test_the_generic_payload_names_every_field(failed_delivery):
    payload = generic_payload(compose(failed_delivery))

    assert payload["event"] == "failure"
    assert payload["delivery_id"] == failed_delivery.pk
    assert payload["execution"]["status"] == "failed"
    assert payload["execution"]["url"].startswith("https://executor.example/admin/executions/execution/")
    assert payload["package"] == {"name": "Orders", "package_name": "orders"}
    assert payload["project"] == "Sales"
    assert masking.MASK in payload["stderr_tail"] and SECRET not in str(payload)


def test_the_slack_payload_is_an_incoming_webhook_message_with_escaped_text(failed_delivery):
    message = compose(failed_delivery)
    payload = slack_payload(message)

    assert payload["text"] == f"FAILED: orders (Sales): {message.url}"
    heading, fields, stderr = payload["blocks"]
    assert heading["text"]["type"] == "mrkdwn" and f"<{message.url}|Open the execution>" in heading["text"]["text"]
    assert {"type": "mrkdwn", "text": "*Status*\nfailed"} in fields["fields"]
    # Slack reads <!channel> as a mention of everyone: it arrives escaped, as text.
    assert stderr["text"]["text"].startswith("```line 27") and "&lt;!channel&gt;" in stderr["text"]["text"]
    assert SECRET not in str(payload)


def test_the_teams_payload_is_a_message_with_one_adaptive_card(failed_delivery):
    message = compose(failed_delivery)
    payload = teams_payload(message)

    assert payload["type"] == "message"
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open the execution", "url": message.url}]
    facts = {fact["title"]: fact["value"] for fact in card["body"][1]["facts"]}
    assert facts["Package"] == "Orders (orders)" and facts["Project"] == "Sales" and facts["Status"] == "failed"
    (stderr,) = card["body"][2]["inlines"]  # plain text: a TextBlock would render the output's Markdown
    assert card["body"][2]["type"] == "RichTextBlock" and stderr["type"] == "TextRun"
    assert stderr["text"].endswith(f"login failed with {masking.MASK} <!channel>") and SECRET not in str(payload)


def test_an_email_reaches_a_real_smtp_server(failed_delivery, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"  # pytest-django's default is locmem
    with smtp_server() as (port, inbox):
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
        assert send(failed_delivery.pk) is None

    failed_delivery.refresh_from_db()
    assert (failed_delivery.status, failed_delivery.attempts, failed_delivery.last_error) == ("sent", 1, "")
    assert failed_delivery.sent_at is not None
    (mail,) = inbox
    assert mail.recipients == ["ops@example.com", "oncall@example.com"]
    assert mail.subject == "[Executor] FAILED: orders (Sales)"
    assert f"Execution: {compose(failed_delivery).url}" in mail.body
    assert f"login failed with {masking.MASK}" in mail.body and SECRET not in mail.body


def test_a_webhook_reaches_a_real_http_receiver_once(failed_delivery, settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
    with http_receiver() as receiver:
        webhook_rule(failed_delivery, receiver.url("/hooks/T0/xoxb-4417"), "slack")
        send(failed_delivery.pk)
        send(failed_delivery.pk)  # a second copy of its message: the delivery is sent already

    (post,) = receiver.posts
    assert post.path == "/hooks/T0/xoxb-4417"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Executor-Delivery"] == str(failed_delivery.pk)
    assert post.body["text"].startswith("FAILED: orders (Sales)")
    assert Delivery.objects.get(pk=failed_delivery.pk).status == DeliveryStatus.SENT


def test_the_webhooks_url_stays_out_of_the_log_even_at_debug_level(failed_delivery, settings, caplog):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
    caplog.set_level(logging.DEBUG)
    with http_receiver() as receiver:
        receiver.status = 500
        webhook_rule(failed_delivery, receiver.url("/hooks/xoxb-4417"))
        send(failed_delivery.pk)

    assert receiver.posts and "127.0.0.1 answered HTTP 500" in caplog.text
    assert "xoxb-4417" not in caplog.text


def test_a_failed_attempt_is_retried_with_backoff_and_then_marked_failed_without_its_url(failed_delivery, settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.EXECUTOR_NOTIFICATION_MAX_ATTEMPTS, settings.EXECUTOR_NOTIFICATION_RETRY_SECONDS = 3, 30
    delays = []
    with http_receiver() as receiver:
        receiver.status = 503
        webhook_rule(failed_delivery, receiver.url("/hooks/xoxb-4417"))
        for _ in range(3):
            delays.append(send(failed_delivery.pk))
            failed_delivery.refresh_from_db()
            assert send(failed_delivery.pk) is None  # not due before its backoff ends
            Delivery.objects.filter(pk=failed_delivery.pk).update(next_attempt_at=timezone.now())

    assert delays == [30, 60, None]
    assert len(receiver.posts) == 3
    failed_delivery.refresh_from_db()
    assert (failed_delivery.status, failed_delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert failed_delivery.last_error == "127.0.0.1 answered HTTP 503"


def test_a_webhook_gone_for_good_is_not_retried(failed_delivery, settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
    with http_receiver() as receiver:
        receiver.status = 404
        webhook_rule(failed_delivery, receiver.url())
        assert send(failed_delivery.pk) is None

    failed_delivery.refresh_from_db()
    assert (failed_delivery.status, failed_delivery.attempts) == (DeliveryStatus.FAILED, 1)


def test_a_worker_refuses_to_post_to_its_own_network_at_send_time(failed_delivery, settings):
    """The URL was fine when saved (the host was listed then); the worker checks again before posting."""
    with http_receiver() as receiver:
        settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
        webhook_rule(failed_delivery, f"https://127.0.0.1:{receiver.port}/xoxb-4417")
        settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = []
        send(failed_delivery.pk)

    assert receiver.posts == []
    failed_delivery.refresh_from_db()
    assert failed_delivery.status == DeliveryStatus.FAILED  # at once: retrying cannot help
    assert failed_delivery.last_error.startswith("refused: 127.0.0.1 resolves to 127.0.0.1, which is a loopback")
    assert "xoxb-4417" not in failed_delivery.last_error


def test_an_unreachable_webhook_says_so_without_its_url(failed_delivery, settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
    with http_receiver() as receiver:
        url = receiver.url("/xoxb-4417")
    webhook_rule(failed_delivery, url)  # nobody listens there any more

    assert send(failed_delivery.pk) == settings.EXECUTOR_NOTIFICATION_RETRY_SECONDS

    failed_delivery.refresh_from_db()
    assert failed_delivery.last_error == "127.0.0.1: could not connect (refused or unreachable)"


def test_the_rule_page_shows_where_a_webhook_posts_never_its_url(failed_delivery, admin_client, settings):
    settings.EXECUTOR_NOTIFICATION_ALLOWED_HOSTS = ["127.0.0.1"]
    rule = webhook_rule(failed_delivery, "http://127.0.0.1:9/hooks/xoxb-4417")

    page = admin_client.get(reverse("admin:executions_notificationrule_change", args=[rule.pk])).content.decode()

    assert "http://127.0.0.1:9/… (the rest of the URL is kept encrypted)" in page
    assert "xoxb-4417" not in page and "xoxb-4417" not in rule.webhook_url_encrypted
    assert rule.webhook_url() == "http://127.0.0.1:9/hooks/xoxb-4417"


def test_execution_url_matches_the_admin_route(settings):
    settings.EXECUTOR_BASE_URL = "https://executor.example"
    assert execution_url("abc") == "https://executor.example" + reverse(
        "admin:executions_execution_change", args=["abc"]
    )


def test_the_sweep_task_publishes_overdue_deliveries_and_a_malformed_message_is_dropped(failed_delivery, enqueued,
                                                                                        caplog):  # fmt: skip
    overdue = timezone.now() - timedelta(hours=1)
    Delivery.objects.filter(pk=failed_delivery.pk).update(next_attempt_at=overdue)
    enqueued.clear()

    sweep_notifications()
    send_notification("1; DROP TABLE")

    assert [(m.args, m.queue) for m in enqueued.of(SEND_TASK)] == [([failed_delivery.pk], "maintenance")]
    assert "dropping send_notification message with a malformed id" in caplog.text
