"""Which notifications an execution's end calls for, recorded with that end, then handed to a worker to send.

`record_finished` runs inside the transaction of every transition that ends an execution (executions/transitions.py:
finish, fail_unfinished, fail_lost, cancel_pending), so a notification is recorded if and only if the end is: a
worker that dies right after committing loses none, and an end that rolls back sends none. It writes one pending
Delivery per matching rule (notification_models.py); once the transaction commits, each is published to a worker
as `executor.send_notification(<delivery id>)` on the maintenance lane, never the step lanes, so a slow mail server
delays no run. The message carries the delivery's id only: what is sent is composed by the worker from the ledger,
with secrets masked (workers/notification_message.py).

A broker that refuses the publish (down, full) costs nothing: the run is finished already, the error is logged in
one line, and the delivery stays pending in the ledger, where the periodic sweep (`executor.sweep_notifications`,
every EXECUTOR_NOTIFICATION_SWEEP_SECONDS) finds it and publishes it again. So is one whose retry message was lost.

The kind of end (NotifyEvent): failed -> failure; completed after the package's previous completed-or-failed
execution failed -> recovery; anything else (completed after a success, cancelled) -> finished. Each rule
(package's and project's alike) then reports it or not (NotificationRule.wants).
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from executor_project import publishing
from packages.models import Package

from .models import Delivery, Execution, ExecutionStatus, NotificationRule
from .notification_models import DeliveryStatus, NotifyEvent

logger = logging.getLogger(__name__)

SEND_TASK = "executor.send_notification"  # workers/tasks.py; published by name, never imported from here
LANE = "maintenance"
SWEEP_BATCH = 200  # deliveries published per sweep: a backlog drains over a few sweeps, never in one long task


def record_finished(execution_id) -> list[int]:
    """Record the deliveries an execution's end calls for; call it in the transaction that ended it. Their
    messages are published when that transaction commits. Returns the new deliveries' ids."""
    rules = rules_for(execution_id)
    if not rules:
        return []  # most ends: one query, and nothing else
    execution = Execution.objects.get(pk=execution_id)
    event = event_for(execution.status, _previous_outcome(execution) if _completed(execution) else None)
    now = timezone.now()
    wanted = [Delivery(rule=rule, execution=execution, event=event, next_attempt_at=now) for rule in rules
              if rule.wants(event)]  # fmt: skip
    if not wanted:
        return []
    # ignore_conflicts: a finish recorded twice (a retried write whose reply was lost) still sends one message.
    Delivery.objects.bulk_create(wanted, ignore_conflicts=True)
    pending = Delivery.objects.filter(execution=execution, status=DeliveryStatus.PENDING)
    ids = list(pending.values_list("pk", flat=True))
    if ids:
        transaction.on_commit(lambda: publish(ids))
    return ids


def rules_for(execution_id) -> list[NotificationRule]:
    """The active rules of the execution's package and of its project. It runs at the end of every execution, rules
    or not, so it is one query written out: the ORM took longer to compile its two subqueries (~1 ms of CPU) than
    PostgreSQL to answer them (two primary-key lookups and a scan of the few rules)."""
    key = Execution._meta.pk.get_db_prep_value(execution_id, connection)  # SQLite keeps UUIDs as hex
    return list(NotificationRule.objects.raw(_RULES_SQL, [key, key]))


_RULES, _EXECUTIONS, _PACKAGES = (model._meta.db_table for model in (NotificationRule, Execution, Package))
_RULES_SQL = f"""
SELECT rule.* FROM {_RULES} rule
WHERE rule.active AND (
    rule.package_id = (SELECT package_id FROM {_EXECUTIONS} WHERE id = %s)
    OR rule.project_id = (SELECT package.project_id FROM {_PACKAGES} package
                          JOIN {_EXECUTIONS} execution ON execution.package_id = package.id WHERE execution.id = %s)
)"""


def event_for(status: str, previous: str | None) -> str:
    """The kind of end of an execution that ended with `status`, after a previous outcome `previous` (the status
    of the package's last completed or failed execution before it; None when unknown or none)."""
    if status == ExecutionStatus.FAILED:
        return NotifyEvent.FAILURE
    if status == ExecutionStatus.COMPLETED and previous == ExecutionStatus.FAILED:
        return NotifyEvent.RECOVERY
    return NotifyEvent.FINISHED


def publish(delivery_ids: list[int]) -> int:
    """Hand deliveries to the workers; returns how many the broker took. A refusal is logged, not raised: the
    deliveries stay pending and the sweep publishes them again."""
    for published, delivery_id in enumerate(delivery_ids):
        try:
            publishing.publish(SEND_TASK, [delivery_id], queue=LANE)
        except Exception as exc:
            # One line, no traceback; redis' and kombu's error texts do not contain the URL or its password. The
            # rest are not tried: each refusal takes about a second (CELERY_TASK_PUBLISH_RETRY_POLICY).
            logger.warning("could not publish notifications to the broker (%s: %s); the sweep sends them later: %s",
                           type(exc).__name__, exc, ", ".join(map(str, delivery_ids[published:])))  # fmt: skip
            return published
    return len(delivery_ids)


def sweep(now: datetime | None = None) -> int:
    """Publish again the pending deliveries that are overdue by a sweep period (their message was never published,
    or was lost); returns how many were published. Duplicates are harmless: a sender claims before sending."""
    now = now or timezone.now()
    overdue = now - timedelta(seconds=settings.EXECUTOR_NOTIFICATION_SWEEP_SECONDS)
    due = Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=overdue).filter(
        Q(locked_until__isnull=True) | Q(locked_until__lt=now)
    )
    ids = list(due.order_by("next_attempt_at").values_list("pk", flat=True)[:SWEEP_BATCH])
    return publish(ids)


def _completed(execution: Execution) -> bool:
    return execution.status == ExecutionStatus.COMPLETED


def _previous_outcome(execution: Execution) -> str | None:
    """The status of the package's last completed or failed execution created before this one (the index on
    (package, -created_at) finds it; cancelled and skipped runs say nothing about the package's health)."""
    earlier = Execution.objects.filter(
        package_id=execution.package_id,
        created_at__lt=execution.created_at,
        status__in=[ExecutionStatus.COMPLETED, ExecutionStatus.FAILED],
    ).order_by("-created_at")
    return earlier.values_list("status", flat=True).first()
