"""What follows a change of an execution's status: one log line, and the metrics of executor_project/metrics.py.

Told by the only places that change a status: executions/transitions.py after every transition that happened
(`changed`), and the trigger paths after recording new pending executions (`created`: executions/services.py, an
event's in executions/events.py). The line names the execution, its package and project and its correlation id
(FX `_fxcid`), so a log pipeline can join it with the admin and with the lines of the other runs of its chain; with
LOG_FORMAT=json each is a field of its own (executor_project/log_format.py):

    execution 3f2a... pending -> in_progress (claim) package=nightly project=finance cid=9b1c... trigger=scheduled

Everything here runs after the change's transaction commits (`changed` registers itself with on_commit, `created`
is called from the trigger paths' after-commit callbacks): a rolled-back change says nothing, and a lookup that
fails cannot break the transaction. A change costs one query by primary key (none for the end of a run claimed by
the same process; a creation: one for its projects' names, none without a project); whatever fails here is logged
and swallowed, since the change happened and its log line must not fail the code that made it.
"""

import logging
from datetime import datetime

from django.db import transaction

from executor_project import metrics
from packages.models import Project

from .models import Execution

logger = logging.getLogger(__name__)

FINAL = frozenset({"completed", "failed", "cancelled", "skipped"})
# Some of an execution's state changes need a person's or an operator's attention.
_WARNING = frozenset({"fail_lost", "retry_lost", "fail_unfinished"})
_FIELDS = ("package__package_name", "package__project__name", "trigger_type", "correlation_id", "created_at",
           "started_at", "worker_name")  # fmt: skip
# What a claim read, by execution id, for the same process's next change of that execution (the worker that claimed a
# run finishes it): one query per run instead of one per change. Bounded; a run's entry goes when it ends.
_CLAIMED: dict[str, dict] = {}
_CLAIMED_MAX = 256


def created(executions: list[Execution]) -> None:
    """New pending executions (their objects in hand, with their packages), told from the trigger paths' own
    after-commit callbacks, before they publish the executions (so a creation's line comes before its claim's)."""
    if executions:
        _safely(_record_created, executions)


def changed(execution_id, transition: str, old: str, new: str, reason: str = "", *,
            claimed_at: datetime | None = None) -> None:  # fmt: skip
    """`transition` moved the execution from `old` to `new`. `claimed_at`: a claim's time, which tells a first
    claim (a start, with its latency from the trigger) from a claim after a hand-over or a retry."""
    transaction.on_commit(
        lambda: _safely(_record_changed, execution_id, transition, old, new, reason, claimed_at), robust=True
    )


def _safely(record, *args) -> None:
    try:
        record(*args)
    except Exception:
        logger.warning("could not log an execution's state change (%s)", record.__name__, exc_info=True)


def _record_created(executions: list[Execution]) -> None:
    project_ids = {execution.package.project_id for execution in executions} - {None}
    projects = dict(Project.objects.filter(pk__in=project_ids).values_list("pk", "name")) if project_ids else {}
    for execution in executions:
        package = execution.package
        fields = _fields(execution.id, package.package_name, projects.get(package.project_id, ""),
                         execution.correlation_id, execution.trigger_type, "create", "", "pending", "")  # fmt: skip
        metrics.inc(metrics.EXECUTIONS_CREATED, **_labels(fields))
        metrics.inc(metrics.TRANSITIONS, transition="create")
        _log(logging.INFO, fields)


def _record_changed(execution_id, transition: str, old: str, new: str, reason: str,
                    claimed_at: datetime | None) -> None:  # fmt: skip
    row = _read(str(execution_id), fresh=transition == "claim")
    if new in FINAL:
        _CLAIMED.pop(str(execution_id), None)
    fields = _fields(execution_id, row.get("package__package_name"), row.get("package__project__name"),
                     row.get("correlation_id"), row.get("trigger_type"), transition, old, new, reason)  # fmt: skip
    metrics.inc(metrics.TRANSITIONS, transition=transition)
    if transition == "claim" and row and row["started_at"] == claimed_at:
        latency = max((row["started_at"] - row["created_at"]).total_seconds(), 0.0)
        metrics.inc(metrics.EXECUTIONS_STARTED, **_labels(fields))
        metrics.observe(metrics.START_LATENCY, latency, trigger_type=fields["trigger_type"])
    if new in FINAL:
        metrics.inc(metrics.EXECUTIONS_FINISHED, **_labels(fields), status=new)
    level = logging.WARNING if transition in _WARNING else logging.INFO
    _log(level, fields, worker=row.get("worker_name") or "")


def _read(execution_id: str, *, fresh: bool) -> dict:
    """The execution's package, project and correlation id (and a claim's times and worker): {} if unreadable."""
    row = None if fresh else _CLAIMED.get(execution_id)
    if row is not None:
        return row
    try:
        row = Execution.objects.filter(pk=execution_id).values(*_FIELDS).first() or {}
    except Exception as exc:  # the database blinked right after the change: the line says what is known
        logger.warning("execution %s: could not read its package and project (%s)", execution_id, type(exc).__name__)
        return {}
    if fresh and row:
        while len(_CLAIMED) >= _CLAIMED_MAX:
            _CLAIMED.pop(next(iter(_CLAIMED)))
        _CLAIMED[execution_id] = row
    return row


def _fields(execution_id, package, project, cid, trigger_type, transition, old, new, reason) -> dict[str, str]:
    # str(): statuses and trigger types are TextChoices; as plain strings they print and serialise as their values.
    return {"execution_id": str(execution_id), "package": package or "", "project": project or "", "cid": cid or "",
            "trigger_type": str(trigger_type or ""), "transition": transition, "from_status": str(old),
            "to_status": str(new), "reason": reason}  # fmt: skip


def _labels(fields: dict[str, str]) -> dict[str, str]:
    return {"package": fields["package"], "project": fields["project"], "trigger_type": fields["trigger_type"]}


def _log(level: int, fields: dict[str, str], **more) -> None:
    logger.log(
        level,
        "execution %s %s -> %s (%s) package=%s project=%s cid=%s trigger=%s%s",
        fields["execution_id"], fields["from_status"] or "(new)", fields["to_status"], fields["transition"],
        fields["package"], fields["project"] or "-", fields["cid"], fields["trigger_type"],
        f" reason={fields['reason']!r}" if fields["reason"] else "",
        extra={**fields, **more},
    )  # fmt: skip
