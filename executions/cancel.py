"""A person's Cancel: a pending execution is cancelled at once, a running one is flagged for its worker to stop."""

from django.db import transaction

from packages.audit import AuditAction, record

from . import transitions
from .models import Execution, ExecutionStatus


class NothingToCancel(Exception):
    """The execution already ended; the message says how."""


def request_cancel(execution: Execution, user) -> str:
    """Cancel a pending or running execution on a person's behalf; returns what happened, for that person.

    A pending execution is cancelled at once (transitions.cancel_pending races fairly with a worker's claim: one of
    the two wins). A running one is flagged; its worker stops the running step's process group within about a
    second (workers/lease.py), marks it cancelled and skips the rest.
    """
    reason = f"cancelled by {user}"
    # One transaction for the cancel and its audit entry: both are kept, or neither.
    with transaction.atomic():
        if transitions.cancel_pending(execution.pk, user, reason):
            record(AuditAction.CANCEL, execution, user=user, details={"was": ExecutionStatus.PENDING})
            return f"Execution {execution.short_id} {reason} before it started."
        if transitions.flag_cancel(execution.pk, user):
            record(AuditAction.CANCEL, execution, user=user, details={"was": ExecutionStatus.IN_PROGRESS})
            return f"Cancelling execution {execution.short_id}: its running step is being stopped."
    execution.refresh_from_db()
    if execution.status == ExecutionStatus.IN_PROGRESS:
        return f"Execution {execution.short_id} is already being cancelled."
    raise NothingToCancel(f"Execution {execution.short_id} already ended ({execution.get_status_display()}).")
