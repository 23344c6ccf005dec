"""The one path every trigger takes: record the execution, then hand its id to a worker.

Manual runs, schedule ticks (executions/ticks.py), events and re-runs all call `trigger_execution`. It creates the
Execution and its steps in one transaction and enqueues `run_execution(execution_id)` only after that transaction
commits, so a worker never looks for a row that is not there yet, and a rollback never leaves a message behind.
"""

import logging
import uuid

from django.db import IntegrityError, transaction

from packages.audit import AuditAction, record
from packages.models import Package

from . import state_log
from .models import Execution, ExecutionFile, ExecutionStep, TriggerType
from .queueing import enqueue, enqueue_many, lane_for  # noqa: F401 (the run paths' entry points, used from here)

logger = logging.getLogger(__name__)


class TriggerRefused(Exception):
    """The package cannot be run this way; the message says why, for the person who asked."""


def trigger_execution(
    package: Package,
    *,
    trigger_type: TriggerType,
    params: dict | None = None,
    user=None,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    trigger_event=None,
    parent: Execution | None = None,
    rerun_of: Execution | None = None,
    files: dict[str, bytes] | None = None,
    api_key=None,
) -> Execution:
    """Create a pending execution of `package` with one pending step per script, and enqueue it on commit.

    With an `idempotency_key`, a repeated trigger (a redelivered tick, the same event twice) returns the
    execution the first one created and enqueues nothing. Raises TriggerRefused for a run that is not allowed.
    An execution started by a `trigger_event` (executions/events.py) is a child of the execution that sent it,
    one level deeper; one a `parent` asked for later (executions/later_runs.py) is its child at the same depth.

    A run a `user` or an `api_key` asked for is written to the audit log (RUN, or RERUN with `rerun_of`) in the
    same transaction; schedule ticks and events from scripts are not someone's action and are not.
    """
    _check_allowed(package, trigger_type)
    if params is not None and not isinstance(params, dict):
        raise TriggerRefused("Parameters must be a JSON object.")
    if idempotency_key:
        existing = Execution.objects.filter(idempotency_key=idempotency_key).first()
        if existing:
            return existing
    try:
        with transaction.atomic():
            execution = _create(
                package,
                trigger_type=trigger_type,
                params=params or {},
                created_by=user,
                correlation_id=correlation_id or uuid.uuid4().hex,
                idempotency_key=idempotency_key,
                trigger_event=trigger_event,
                parent_execution=trigger_event.parent_execution if trigger_event else parent,
                chain_depth=trigger_event.chain_depth if trigger_event else getattr(parent, "chain_depth", 0),
                rerun_of=rerun_of,
            )
            ExecutionFile.objects.bulk_create(
                ExecutionFile(execution=execution, path=path, content=content)
                for path, content in (files or {}).items()
            )
            if user is not None or api_key is not None:
                _audit_run(execution, user, api_key)
    except IntegrityError:
        # Lost a race with an identical trigger: the other one's execution stands.
        if idempotency_key:
            return Execution.objects.get(idempotency_key=idempotency_key)
        raise
    transaction.on_commit(lambda: _committed(execution))
    return execution


def _committed(execution: Execution) -> None:
    state_log.created([execution])
    enqueue(execution)


def _audit_run(execution: Execution, user, api_key) -> None:
    # Parameters' keys only: their values may be anything a person typed, secrets included.
    details = {"trigger_type": execution.trigger_type, "parameters": sorted(execution.params)}
    if execution.rerun_of_id:
        details["rerun_of"] = str(execution.rerun_of_id)
    action = AuditAction.RERUN if execution.rerun_of_id else AuditAction.RUN
    record(action, execution, user=user, api_key=api_key, details=details)


def _check_allowed(package: Package, trigger_type: TriggerType) -> None:
    if not package.active:
        raise TriggerRefused(f"Package {package.name!r} is inactive.")
    if trigger_type == TriggerType.MANUAL and not package.allow_manual_triggering:
        raise TriggerRefused(f"Package {package.name!r} does not allow manual triggering.")


def _create(package: Package, **fields) -> Execution:
    # Only the files that run get steps; support files (and the others, with an entrypoint) are shipped with them.
    scripts = list(package.scripts_that_run().only("id", "package_id", "file_name", "position"))
    if not scripts:
        missing = f"its entrypoint {package.entrypoint!r}" if package.entrypoint else "scripts to run"
        raise TriggerRefused(f"Package {package.name!r} has no {missing}.")
    execution = Execution.objects.create(package=package, **fields)
    ExecutionStep.objects.bulk_create(
        ExecutionStep(execution=execution, position=index, script=script, file_name=script.file_name)
        for index, script in enumerate(scripts, start=1)
    )
    return execution
