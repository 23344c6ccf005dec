"""Notification rules and their deliveries: who hears about an execution's end, and what became of each message.

A rule belongs to one package or to one project (all its packages), and says which ends it reports: failures,
recoveries (the first success after a failure of the same package), or every finish. Its channel is an email to a
list of addresses, or a JSON POST to a webhook in one of three shapes (generic, Slack, Teams). A webhook URL often
carries its token (Slack's and Teams' do), so it is stored encrypted like a secret (packages/encryption.py) and
only its scheme and host are ever shown.

A Delivery is one rule's message about one execution, recorded in the transaction that finishes the execution
(executions/notifications.py) and then sent by a worker (workers/notification_sending.py). Its states:

    pending --sent (a worker)--------------> sent
    pending --attempt failed, attempts left-> pending   next_attempt_at moves on (exponential backoff)
    pending --attempt failed, none left-----> failed    last_error says why
    failed  --Retry now (admin)-------------> pending

A sender takes a pending delivery with a conditional UPDATE that sets `locked_until` (workers/notification_sending.py):
two copies of its message, or the sweep and a late message, never send it twice at once, and a worker that dies
mid-send leaves a lock that expires.
"""

from django.db import models

from packages.encryption import decrypt, encrypt

from .webhook_urls import parse as parse_webhook_url


class NotifyChannel(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class WebhookFormat(models.TextChoices):
    GENERIC = "generic", "Generic JSON"
    SLACK = "slack", "Slack (incoming webhook)"
    TEAMS = "teams", "Microsoft Teams (workflow webhook, Adaptive Card)"


class NotifyEvent(models.TextChoices):
    FAILURE = "failure", "Failure"
    RECOVERY = "recovery", "Recovery"
    FINISHED = "finished", "Finished"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class NotificationRule(models.Model):
    name = models.CharField(max_length=100, help_text="What it is for, e.g. 'nightly failures to the data team'.")
    project = models.ForeignKey(
        "packages.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="notification_rules",
        help_text="Every package of this project. Choose a project or a package, not both.",
    )  # fmt: skip
    package = models.ForeignKey(
        "packages.Package", null=True, blank=True, on_delete=models.CASCADE, related_name="notification_rules",
        help_text="This package only.",
    )  # fmt: skip
    active = models.BooleanField(default=True)
    on_failure = models.BooleanField(default=True, help_text="When an execution fails.")
    on_recovery = models.BooleanField(
        default=True, help_text="When an execution completes after the package's previous one failed."
    )
    on_every_finish = models.BooleanField(
        default=False, help_text="Whenever an execution ends: completed, failed or cancelled."
    )
    channel = models.CharField(max_length=20, choices=NotifyChannel, default=NotifyChannel.EMAIL)
    email_to = models.TextField(blank=True, help_text="Email addresses, separated by commas or new lines.")
    webhook_url_encrypted = models.TextField(blank=True, editable=False)
    # scheme://host[:port] of the URL, to tell webhooks apart without showing the path or query (the token).
    webhook_target = models.CharField(max_length=300, blank=True, editable=False)
    webhook_format = models.CharField(max_length=20, choices=WebhookFormat, default=WebhookFormat.GENERIC)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(project__isnull=True, package__isnull=False)
                | models.Q(project__isnull=False, package__isnull=True),
                name="notification_rule_project_or_package",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def recipients(self) -> list[str]:
        return [part.strip() for part in self.email_to.replace("\n", ",").split(",") if part.strip()]

    def set_webhook_url(self, url: str) -> None:
        """Store a webhook URL encrypted (not saved); only its origin stays readable. Raises UnsafeWebhookUrl."""
        self.webhook_target = parse_webhook_url(url).origin
        self.webhook_url_encrypted = encrypt(url.strip())

    def webhook_url(self) -> str:
        """The decrypted URL, for the worker that posts to it (EncryptionError when the key is gone)."""
        return decrypt(self.webhook_url_encrypted)

    def wants(self, event: str) -> bool:
        """Whether this rule reports an execution end of kind `event` (a NotifyEvent)."""
        if self.on_every_finish:
            return True
        return (event == NotifyEvent.FAILURE and self.on_failure) or (
            event == NotifyEvent.RECOVERY and self.on_recovery
        )


class Delivery(models.Model):
    rule = models.ForeignKey(NotificationRule, on_delete=models.CASCADE, related_name="deliveries")
    # Deleted with its execution (retention): a delivery says nothing without it.
    execution = models.ForeignKey("executions.Execution", on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=20, choices=NotifyEvent)
    status = models.CharField(max_length=20, choices=DeliveryStatus, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        constraints = [
            # An execution finishes once: one message per rule, however often its finish is recorded.
            models.UniqueConstraint(fields=["rule", "execution"], name="delivery_one_per_rule_and_execution")
        ]
        indexes = [
            # The sweep reads the pending ones only: few among many sent.
            models.Index(fields=["next_attempt_at"], condition=models.Q(status="pending"), name="delivery_pending_due"),
        ]

    def __str__(self) -> str:
        return f"{self.get_event_display()} of {self.execution_id} to {self.rule}"
