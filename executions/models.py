"""Executions (runs of a package) and their steps (one per script). PostgreSQL is the ledger of both."""

import hashlib
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from timezone_field import TimeZoneField

from executor_project.env import RATE_FORMAT
from packages.models import Package, Script, validate_cron

# Notification rules and deliveries live in a module of their own; imported here so Django registers them.
from .notification_models import Delivery, NotificationRule  # noqa: F401


class TriggerType(models.TextChoices):
    MANUAL = "manual", "Manual"
    SCHEDULED = "scheduled", "Scheduled"
    TRIGGERED = "triggered", "Triggered"


class ExecutionStatus(models.TextChoices):
    """pending -> in_progress (a worker claimed it) -> completed | failed | cancelled; in_progress -> pending when
    handed back at a shutdown or retried after its worker was lost; pending -> cancelled without ever running;
    skipped: a missed schedule time, recorded so. Terminal states never change again. Each move, and who makes
    it: executions/transitions.py.
    """

    PENDING = "pending", "Pending"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped"


TERMINAL_EXECUTION_STATUSES = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED, ExecutionStatus.SKIPPED}
)


class StepStatus(models.TextChoices):
    """pending -> running -> completed | failed | cancelled; running -> pending (cut off, to run again);
    pending -> unprocessed | skipped. Each move: executions/transitions.py."""

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    UNPROCESSED = "unprocessed", "Unprocessed"
    SKIPPED = "skipped", "Skipped"
    CANCELLED = "cancelled", "Cancelled"


class TriggerEventStatus(models.TextChoices):
    STARTED = "started", "Started executions"
    NO_SUBSCRIBERS = "no_subscribers", "No subscribers"
    STOPPED = "stopped", "Stopped by a guard"


class TriggerEvent(models.Model):
    """Every event the executor received or emitted (CloudEvents 1.0), and what it started.

    (source, event_id) is unique, as CloudEvents defines an event's identity: the same event delivered twice
    is recorded once and starts nothing the second time.
    """

    event_id = models.CharField("id", max_length=255)
    source = models.CharField(max_length=255)
    type = models.CharField(max_length=255, db_index=True)
    time = models.DateTimeField(null=True, blank=True, help_text="When the sender says it happened.")
    datacontenttype = models.CharField(max_length=100, blank=True)
    subject = models.CharField(max_length=255, blank=True)
    data = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Who sent it: an API client, an execution (a script or its lifecycle), or nobody known.
    api_key = models.ForeignKey("ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    parent_execution = models.ForeignKey(
        "Execution", null=True, blank=True, on_delete=models.SET_NULL, related_name="emitted_events"
    )
    correlation_id = models.CharField(max_length=64, db_index=True)
    chain_depth = models.PositiveSmallIntegerField(default=0)
    # Whose event it is: the sending key's or execution's project. Empty: sent with a platform key (superusers
    # see it; members see it through the executions it started in their projects).
    project = models.ForeignKey(
        "packages.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="trigger_events"
    )
    status = models.CharField(max_length=20, choices=TriggerEventStatus)
    status_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [models.UniqueConstraint(fields=["source", "event_id"], name="event_unique_per_source")]

    def __str__(self) -> str:
        return f"{self.type} · {self.event_id[:12]}"


class Execution(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    package = models.ForeignKey(Package, on_delete=models.PROTECT, related_name="executions")
    status = models.CharField(max_length=20, choices=ExecutionStatus, default=ExecutionStatus.PENDING)
    status_reason = models.CharField(max_length=500, blank=True)
    trigger_type = models.CharField(max_length=20, choices=TriggerType)
    params = models.JSONField(default=dict, blank=True, help_text="Parameters merged into the scripts' argv[1].")
    correlation_id = models.CharField(max_length=64, db_index=True, help_text="FX _fxcid: shared along a chain.")
    trigger_event = models.ForeignKey(
        TriggerEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="executions"
    )
    # The execution whose event started this one (FX _fxparentexec); chain_depth counts the links to the root.
    parent_execution = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_executions"
    )
    chain_depth = models.PositiveSmallIntegerField(default=0)
    # Set for triggers that can repeat (schedule tick, event delivery): a second delivery finds the row.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Set by the worker that claimed it; every later write of that worker is fenced on lease_owner.
    worker_name = models.CharField(max_length=200, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True, editable=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When its message was last published.")
    # Set by a person's Cancel; the worker running it stops the current step (workers/lease.py watches this).
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    # The package's Git commit when a worker took it: the code it ran (packages/git_sync.py).
    source_commit = models.CharField(max_length=64, blank=True, editable=False)
    # Times a step cut off by a lost or shut-down worker was run again (Package.retries_after_worker_loss).
    retries = models.PositiveSmallIntegerField(default=0, editable=False)

    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    saved = models.BooleanField(default=False, help_text="List it under Saved executions, to run it again.")
    # A saved run can run on its own schedule, with its parameters (executions/saved_runs.py).
    schedule = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_cron],
        help_text="For a saved run: cron (minute hour day-of-month month day-of-week, 0 = Monday) to run the "
        "package with these parameters. Empty: not scheduled.",
    )
    schedule_timezone = TimeZoneField(default="UTC", use_pytz=False, help_text="The schedule's time zone.")
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns",
        help_text="The execution (or saved run) this one repeats.",
    )  # fmt: skip

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["package", "-created_at"], name="execution_package_recent"),
            models.Index(fields=["status", "-created_at"], name="execution_status_recent"),
            # Saved executions are few among millions: their list reads this small index.
            models.Index(fields=["-created_at"], condition=models.Q(saved=True), name="execution_saved_recent"),
            # Retention reads a package's old executions of one status, oldest first (executions/retention.py):
            # without status in the key it would walk the failed ones it keeps longer on every run.
            models.Index(fields=["package", "status", "created_at"], name="execution_retention"),
        ]

    def __str__(self) -> str:
        return f"{self.package} · {self.short_id}"

    def clean(self) -> None:
        # Only a saved run runs on a schedule: one nobody keeps would run unseen (the sync in
        # executions/saved_runs.py also keeps the task of an unsaved execution disabled).
        if self.schedule and not self.saved:
            message = "Only a saved run runs on a schedule: tick Saved, or empty the schedule."
            raise ValidationError({"schedule": message})

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_EXECUTION_STATUSES

    @property
    def cancelled_reason(self) -> str:
        return f"cancelled by {self.cancel_requested_by or 'an administrator'}"

    @property
    def duration_ms(self) -> int | None:
        if self.started_at and self.finished_at:
            return round((self.finished_at - self.started_at).total_seconds() * 1000)
        return None


class SavedExecutionManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(saved=True)


class SavedExecution(Execution):
    """Executions marked Saved: named, reusable sets of parameters (FX's saved runs)."""

    objects = SavedExecutionManager()

    class Meta:
        proxy = True
        verbose_name = "saved execution"


class ExecutionFile(models.Model):
    """A file given to a run through a `file` field of its run form; the worker puts it at `path` (relative to
    the scripts' working directory), which is the value the scripts receive."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=300)
    content = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["execution", "path"], name="execution_file_unique_path")]

    def __str__(self) -> str:
        return self.path


class ExecutionStep(models.Model):
    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveIntegerField()
    script = models.ForeignKey(Script, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    file_name = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=StepStatus, default=StepStatus.PENDING)
    status_reason = models.CharField(max_length=500, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["execution", "position"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "position"], name="step_position_unique_per_execution")
        ]

    def __str__(self) -> str:
        return self.file_name

    @property
    def stdout_lines(self) -> list[tuple[str, str]]:
        """FX numbers output lines: [("stdout_1", "first line"), ...]."""
        return [(f"stdout_{n}", line) for n, line in enumerate(self.stdout.splitlines(), start=1)]


class ApiScope(models.TextChoices):
    EVENTS_SEND = "events:send", "Send events (POST /fx/events)"
    EXECUTIONS_READ = "executions:read", "Read executions (GET /fx/executions, /fx/cid)"
    GIT_SYNC = "git:sync", "Sync Git repositories and read their status"


ALL_API_SCOPES = [scope.value for scope in ApiScope]
LAST_USE_PRECISION = timedelta(minutes=1)  # ApiKey.last_used_at


def validate_rate_limit(value: str) -> None:
    if value != "off" and not RATE_FORMAT.fullmatch(value):
        raise ValidationError('Write a count per period like "600/m", "20/s" or "1000/15m", or "off".')


class ApiKey(models.Model):
    """A key for the HTTP API (`X-API-KEY` header). Only its SHA-256 is stored: the key itself is shown once, when
    it is issued. Keys are random (256 bits), so a fast hash is enough; a lookup by hash finds the key.

    A project key reaches only its project's packages, executions and repositories; a platform key (no project,
    issued by superusers) reaches everything. `scopes` says which endpoints it may call at all."""

    PREFIX = "exk_"

    name = models.CharField(max_length=100, help_text="Who or what uses this key, e.g. the system sending events.")
    project = models.ForeignKey(
        "packages.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys",
        help_text="Empty: a platform key (superusers only), which reaches every project.",
    )  # fmt: skip
    scopes = models.JSONField(default=list, help_text="What the key may do: events:send, executions:read, git:sync.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(max_length=12, editable=False, help_text="The start of the key, to recognise it.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    rate_limit = models.CharField(
        max_length=20, blank=True, validators=[validate_rate_limit],
        help_text='Requests this key may make, e.g. "600/m", "20/s" or "1000/15m"; "off": no limit. Empty: the '
        "platform's EXECUTOR_API_RATE_LIMIT. Set by superusers.",
    )  # fmt: skip

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @staticmethod
    def hash(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def set_new_key(self) -> str:
        """Give this (unsaved) row a new random key; returns the key itself, which nothing keeps."""
        key = self.PREFIX + secrets.token_urlsafe(32)
        self.key_hash, self.hint = self.hash(key), key[:12]
        return key

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def issue(cls, name: str, user=None, *, project=None, scopes=None) -> tuple["ApiKey", str]:
        scopes = list(ALL_API_SCOPES if scopes is None else scopes)
        api_key = cls(name=name, created_by=user, project=project, scopes=scopes)
        key = api_key.set_new_key()
        api_key.save()
        return api_key, key

    @classmethod
    def authenticate(cls, key: str) -> "ApiKey | None":
        """The active key matching `key` (its last use recorded, to the minute), or None for an unknown or revoked
        one."""
        api_key = cls.objects.filter(key_hash=cls.hash(key), revoked_at__isnull=True).first()
        now = timezone.now()
        if api_key is not None and (api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USE_PRECISION):
            # Not on every request: a key sending 100 events/s would have every request write this one row.
            api_key.last_used_at = now
            cls.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return api_key

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            ApiKey.objects.filter(pk=self.pk).update(revoked_at=self.revoked_at)
