"""Publishing again the pending executions whose message was lost (called by the reaper, workers/reaper.py).

A pending execution whose message was published more than EXECUTOR_REPUBLISH_AFTER_SECONDS ago, or never (the
broker was down), is published again. A duplicate message is harmless: only one worker can claim.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q

from executions.models import Execution, ExecutionStatus
from executions.services import enqueue

logger = logging.getLogger(__name__)


def republish_lost(now: datetime) -> int:
    """Publish again the pending executions whose message looks lost; returns how many."""
    stale = now - timedelta(seconds=settings.EXECUTOR_REPUBLISH_AFTER_SECONDS)
    lost = Execution.objects.select_related("package").filter(
        Q(enqueued_at__lt=stale) | Q(enqueued_at__isnull=True, created_at__lt=stale), status=ExecutionStatus.PENDING
    )
    republished = 0
    for execution in lost:
        logger.warning("execution %s still pending since %s: publishing it again", execution.id, execution.created_at)
        enqueue(execution)
        republished += 1
    return republished
