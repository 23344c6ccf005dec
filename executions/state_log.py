"""What happens after an execution's status changed (executions/transitions.py calls `changed` after every
transition that happened): one log line, and the metrics of executor_project/metrics.py.

The log line names the execution, its package and project and its correlation id (FX `_fxcid`), so a log pipeline
can join it with the admin and with the lines of the runs of the same chain; with LOG_FORMAT=json they are fields of
their own (executor_project/log_format.py):

    execution 3f2a... pending -> in_progress (claim) package=nightly project=finance cid=9b1c... trigger=scheduled

Run after the transition's transaction commits (at once when none is open), so a rolled-back transition says
nothing, and a lookup that fails cannot break the transaction. It costs one query by primary key per transition;
whatever fails here is logged and swallowed: the transition happened, its log line must not undo or fail it.
"""

import logging
from datetime import datetime

from django.db import transaction

from executor_project import metrics

from .models import Execution

logger = logging.getLogger(__name__)

FINAL = frozenset({"completed", "failed", "cancelled", "skipped"})
_FIELDS = ("package__package_name", "package__project__name", "trigger_type", "correlation_id", "created_at",
           "started_at", "worker_name", "retries")  # fmt: skip


def changed(execution_id, transition: str, old: str, new: str, reason: str = "", *,
            claimed_at: datetime | None = None) -> None:  # fmt: skip
    """Log and count `transition` of the execution from `old` to `new` once its transaction commits.
    `claimed_at`: the claim's time, to tell a first claim (its start latency counted) from a hand-over's."""
    transaction.on_commit(lambda: _record(execution_id, transition, old, new, reason, claimed_at), robust=True)


def _record(execution_id, transition: str, old: str, new: str, reason: str, claimed_at: datetime | None) -> None:
    try:
        _log_and_count(execution_id, transition, old, new, reason, claimed_at)
    except Exception:
        logger.warning("execution %s: could not log its change to %s", execution_id, new, exc_info=True)


def _log_and_count(execution_id, transition: str, old: str, new: str, reason: str,
                   claimed_at: datetime | None) -> None:  # fmt: skip
    try:
        row = Execution.objects.filter(pk=execution_id).values(*_FIELDS).first() or {}
    except Exception as exc:  # the database blinked right after the transition: say what is known
        logger.warning("execution %s: %s -> %s (%s); its details could not be read (%s)", execution_id, old, new,
                       transition, type(exc).__name__)  # fmt: skip
        row = {}
    fields = {
        "execution_id": str(execution_id),
        "package": row.get("package__package_name") or "",
        "project": row.get("package__project__name") or "",
        "cid": row.get("correlation_id") or "",
        "trigger_type": row.get("trigger_type") or "",
        "transition": transition,
        "from_status": old,
        "to_status": new,
        "reason": reason,
    }
    first_claim = transition == "claim" and claimed_at is not None and row.get("started_at") == claimed_at
    _count(fields, row, first_claim)
    level = logging.WARNING if transition in ("fail_lost", "retry_lost", "fail_unfinished") else logging.INFO
    logger.log(
        level,
        "execution %s %s -> %s (%s) package=%s project=%s cid=%s trigger=%s%s",
        fields["execution_id"], old, new, transition, fields["package"], fields["project"] or "-", fields["cid"],
        fields["trigger_type"], f" reason={reason!r}" if reason else "",
        extra={**fields, "worker": row.get("worker_name") or "", "retries": row.get("retries", 0)},
    )  # fmt: skip


def _count(fields: dict, row: dict, first_claim: bool) -> None:
    labels = {"package": fields["package"], "project": fields["project"], "trigger_type": fields["trigger_type"]}
    metrics.record(metrics.TRANSITIONS.labels(transition=fields["transition"]).inc)
    if first_claim:
        metrics.record(metrics.EXECUTIONS_STARTED.labels(**labels).inc)
        latency = (row["started_at"] - row["created_at"]).total_seconds()
        metrics.record(metrics.START_LATENCY.labels(trigger_type=fields["trigger_type"]).observe, max(latency, 0.0))
    if fields["to_status"] in FINAL:
        metrics.record(metrics.EXECUTIONS_FINISHED.labels(**labels, status=fields["to_status"]).inc)
