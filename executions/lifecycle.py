"""Lifecycle events: what an execution emits as it runs (FX's names), so packages can react to other packages.

processing_started (a worker began it), script_processed (after each step, with the step's status) and
execution_finished (with the final status). Each event carries the execution's `_fxcid` and `_fxparentexec`,
so what it starts joins the chain one level deeper, and the chain depth guard stops a package that reacts to its
own events. An event's data reaches the scripts it starts as top-level argv[1] keys; the platform sets
`package_name` and friends for the receiving package, so the sender's are named `source_*`.

Events are emitted only for the types some active package within reach subscribes to (looked up once per
execution): a run nobody listens to writes nothing extra to the ledger. Within reach means of the emitting
package's project (every project for a package of no project), as for any event an execution emits
(executions/events.py says why): a package of one team finishing must not start another team's packages.

An execution started by a lifecycle event emits none of its own, like a failure callback in Airflow: otherwise
two packages that react to `execution_finished` would start each other until the chain depth guard stopped them,
on every run.
"""

import logging

from django.utils import timezone

from packages.models import EventType

from .events import IncomingEvent, dispatch
from .models import Execution, ExecutionStep

logger = logging.getLogger(__name__)

PREFIX = "ferris_executor.run_execution."
PROCESSING_STARTED = PREFIX + "processing_started"
SCRIPT_PROCESSED = PREFIX + "script_processed"
EXECUTION_FINISHED = PREFIX + "execution_finished"
TYPES = (PROCESSING_STARTED, SCRIPT_PROCESSED, EXECUTION_FINISHED)


class Lifecycle:
    def __init__(self, execution: Execution):
        self.execution = execution
        self.audience: frozenset[str] = frozenset()
        if not (execution.trigger_event and execution.trigger_event.type in TYPES):
            self.audience = _subscribed_types(execution.package.project_id)

    def started(self) -> None:
        self._emit(PROCESSING_STARTED, {"status": "in_progress"})

    def script_processed(self, step: ExecutionStep) -> None:
        self._emit(SCRIPT_PROCESSED, {"script_name": step.file_name, "script_position": step.position,
                                      "status": step.status})  # fmt: skip

    def finished(self, status: str) -> None:
        self._emit(EXECUTION_FINISHED, {"status": status})

    def _emit(self, event_type: str, details: dict) -> None:
        if event_type not in self.audience:
            return
        execution, package = self.execution, self.execution.package
        data = {
            "source_package_name": package.package_name,
            "source_package_id": package.pk,
            "source_execution_id": str(execution.id),
            **details,
            "_fxcid": execution.correlation_id,
            "_fxparentexec": str(execution.id),
        }
        event = IncomingEvent(type=event_type, source=f"executor/{package.package_name}", data=data,
                              subject=str(execution.id), time=timezone.now())  # fmt: skip
        try:
            dispatch(event, parent=execution)
        except Exception:
            # The run itself is recorded either way; a reaction that could not start must not fail it.
            logger.exception("execution %s: could not emit %s", execution.id, event_type)


def _subscribed_types(project_id: int | None) -> frozenset[str]:
    """The lifecycle types some active package the execution's events reach subscribes to."""
    subscriber = {"subscribers__active": True}
    if project_id is not None:
        subscriber["subscribers__project_id"] = project_id  # in one filter(): the same subscriber, active and ours
    subscribed = EventType.objects.filter(name__in=TYPES, **subscriber)
    return frozenset(subscribed.values_list("name", flat=True).distinct())
