"""A task that cannot reach the database hands its message back to Redis instead of consuming it.

Celery entry points are thin: a message carries an id, the ledger holds the state. So a task that cannot reach
the database holds its message, trying again for EXECUTOR_DATABASE_WAIT_SECONDS (prefetch is 1, so its slot
takes no other message meanwhile), then rejects it with requeue (Reject(requeue=True): with acks_late Celery puts
it back in Redis, at the back of its queue), and it is delivered again later, to this worker or another. Every
attempt waits that long first: no hot loop. Used by every app's tasks.py.
"""

import logging
from collections.abc import Callable

from celery.exceptions import Reject
from django.conf import settings

from . import database

logger = logging.getLogger(__name__)


def hand_back(what: str, exc: BaseException) -> Reject:
    """The exception for a task to raise once it gave up waiting for the database: its message goes back."""
    logger.warning("%s: the database is still unreachable after %s s (%s): message handed back to Redis",
                   what, settings.EXECUTOR_DATABASE_WAIT_SECONDS, database.describe(exc))  # fmt: skip
    return Reject(f"database unreachable: {database.describe(exc)}", requeue=True)


def holding_the_message(action: Callable[[], object], what: str) -> None:
    """Run a task body that is safe to repeat (its effect is keyed by the message) through a database blink."""
    try:
        database.retrying(action, seconds=settings.EXECUTOR_DATABASE_WAIT_SECONDS, what=what)
    except database.UNREACHABLE as exc:
        raise hand_back(what, exc) from None
