"""Sending one notification: claim its delivery, compose the message, send it by email or webhook, record the
outcome (executions/deliveries.py), and schedule the next attempt after a failure.

Runs in the `executor.send_notification` task on the maintenance lane, never on a step lane: a mail server that
takes its time delays no run. Retries are the ledger's, not Celery's: a failed attempt sets the delivery's
next_attempt_at (exponential backoff) and publishes a message with that countdown; should that message be lost
(a worker killed while holding it), the sweep (executions/notifications.py) finds the delivery overdue and
publishes it again. The claim makes every copy but one a no-op.

What an error says is stored in Delivery.last_error and shown in the admin, so it never holds a secret: webhook
errors name the host only (workers/webhooks.py), SMTP errors are Django's and smtplib's, which hold the server's
reply, never our password.
"""

import logging
import smtplib
from urllib.parse import urlsplit

from django.core.mail import EmailMessage, get_connection

from executions import deliveries
from executions.models import Delivery
from executions.notification_models import NotifyChannel
from executor_project import database
from packages.encryption import EncryptionError

from . import masking
from .notification_message import PAYLOADS, Message, compose, email_body
from .webhooks import WebhookFailed, post_json

logger = logging.getLogger(__name__)


class SendFailed(Exception):
    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def send(delivery_id: int) -> float | None:
    """Make one attempt at a delivery, if it is due and nobody else is at it. Returns the seconds until the next
    attempt when this one failed and another is left; None otherwise."""
    if not deliveries.claim(delivery_id):
        return None  # sent, failed, not due yet, or being sent by another worker
    delivery = Delivery.objects.select_related("rule").get(pk=delivery_id)
    try:
        message = compose(delivery)
        _deliver(delivery, message)
    except database.UNREACHABLE:
        raise  # not the attempt's fault: its lock runs out and the sweep sends it once the database is back
    except Exception as exc:
        if not isinstance(exc, SendFailed):
            logger.exception("notification %s: internal error", delivery_id)
            exc = SendFailed(f"internal error in the worker ({type(exc).__name__})")
        delay = deliveries.attempt_failed(delivery_id, str(exc), final=exc.final)
        then = "gave up" if delay is None else f"next attempt in {delay:.0f} s"
        logger.warning("notification %s (rule %s): attempt %s failed: %s; %s", delivery_id, delivery.rule_id,
                       delivery.attempts, exc, then)  # fmt: skip
        return delay
    deliveries.sent(delivery_id)
    logger.info("notification %s (rule %s) sent: %s of execution %s", delivery_id, delivery.rule_id,
                delivery.event, delivery.execution_id)  # fmt: skip
    return None


def _deliver(delivery: Delivery, message: Message) -> None:
    rule = delivery.rule
    if rule.channel == NotifyChannel.EMAIL:
        _send_email(rule.recipients, message)
    else:
        _post_webhook(rule, message)


def _send_email(recipients: list[str], message: Message) -> None:
    if not recipients:
        raise SendFailed("the rule names no email address", final=True)
    try:
        with get_connection() as connection:  # EMAIL_* settings, EMAIL_TIMEOUT
            EmailMessage(message.subject, email_body(message), to=recipients, connection=connection).send()
    except smtplib.SMTPRecipientsRefused as exc:
        raise SendFailed(f"the mail server refused the recipients: {', '.join(exc.recipients)}", final=True) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise SendFailed(f"email: {type(exc).__name__}: {exc}") from None


def _post_webhook(rule, message: Message) -> None:
    try:
        url = rule.webhook_url()
    except EncryptionError as exc:
        raise SendFailed(f"the webhook URL cannot be decrypted: {exc}", final=True) from None
    payload = PAYLOADS[rule.webhook_format](message)
    try:
        # The delivery id lets a receiver drop a repeated attempt it already took (an answer lost on the way back).
        post_json(url, payload, headers={"X-Executor-Delivery": str(message.delivery_id)})
    except WebhookFailed as exc:
        # Belt and braces: whatever the text, the URL and its parts never reach the ledger or the log.
        parts = urlsplit(url)
        raise SendFailed(masking.mask(str(exc), [url, parts.path, parts.query]), final=exc.final) from None
