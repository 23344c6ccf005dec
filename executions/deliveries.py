"""Every change of a Delivery's state (executions/notification_models.py has the diagram): each a conditional
UPDATE whose row count says whether it happened, as executions/transitions.py does for executions.

The sender (workers/notification_sending.py) `claim`s a due, pending delivery, which counts the attempt and locks it
for a while, then records the outcome: `sent`, or `attempt_failed`, which schedules the next attempt with
exponential backoff or, after EXECUTOR_NOTIFICATION_MAX_ATTEMPTS, marks it failed. A person may `retry` a failed one.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from .models import Delivery
from .notification_models import DeliveryStatus

# A message that arrives a little before its countdown ends (clocks of two hosts) still finds its delivery due.
EARLY_TOLERANCE = timedelta(seconds=2)
MAX_ERROR_LENGTH = 500  # Delivery.last_error


def lock_seconds() -> int:
    """How long a claim holds a delivery: past two timeouts of its attempt, the sender is taken for dead."""
    return 2 * settings.EXECUTOR_NOTIFICATION_TIMEOUT_SECONDS + 30


def claim(delivery_id: int, now: datetime | None = None) -> int:
    """pending and due, not locked -> locked for this attempt, counted. 0: not due, sent, failed or taken."""
    now = now or timezone.now()
    due = Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING,
                                  next_attempt_at__lte=now + EARLY_TOLERANCE)  # fmt: skip
    free = due.filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
    return free.update(locked_until=now + timedelta(seconds=lock_seconds()), attempts=F("attempts") + 1)


def sent(delivery_id: int, now: datetime | None = None) -> int:
    """pending -> sent."""
    return Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.SENT, sent_at=now or timezone.now(), locked_until=None, last_error=""
    )


def attempt_failed(delivery_id: int, error: str, *, final: bool = False, now: datetime | None = None) -> float | None:
    """Record a failed attempt: pending again after a backoff, or failed once the attempts are used up (or at once
    when `final`: the rule itself is wrong). Returns the seconds until the next attempt, None if there is none."""
    now = now or timezone.now()
    attempts = Delivery.objects.filter(pk=delivery_id).values_list("attempts", flat=True).first()
    if attempts is None:
        return None
    pending = Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
    if final or attempts >= settings.EXECUTOR_NOTIFICATION_MAX_ATTEMPTS:
        pending.update(status=DeliveryStatus.FAILED, last_error=error[:MAX_ERROR_LENGTH], locked_until=None)
        return None
    delay = backoff_seconds(attempts)
    pending.update(last_error=error[:MAX_ERROR_LENGTH], locked_until=None,
                   next_attempt_at=now + timedelta(seconds=delay))  # fmt: skip
    return delay


def backoff_seconds(attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt: RETRY_SECONDS, then twice as long each time."""
    return settings.EXECUTOR_NOTIFICATION_RETRY_SECONDS * 2 ** max(attempts - 1, 0)


def retry(delivery_ids: list[int], now: datetime | None = None) -> int:
    """failed -> pending, with its attempts counted from zero again (the admin's Retry now)."""
    return Delivery.objects.filter(pk__in=delivery_ids, status=DeliveryStatus.FAILED).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now or timezone.now(), locked_until=None
    )
