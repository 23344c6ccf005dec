"""One path for every tick beat sends: a package's schedule, a saved run's schedule, a later run a script asked for.

A tick's message names what it is for. Each kind of tick says, as data, how to find that (`find`), which run a
tick arriving now stands for (`key`: the idempotency key of its fire time) and how to start that run (`start`);
`fire` does the rest alike for all: a tick for something gone is ignored, one that matches no fire time is ignored
with a warning, a run the trigger path refuses is logged. Ticks are repeatable: two beats, or a message delivered
again after a database blink (executor_project/redelivery.py), map to the same key, and the UNIQUE idempotency key
lets exactly one execution through (executions/services.py). The tasks are in executions/tasks.py.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from django.utils import timezone

from executor_project import metrics
from packages.models import Package
from packages.schedules import tick_key

from .models import Execution, TriggerType
from .saved_runs import rerun
from .services import TriggerRefused, trigger_execution

logger = logging.getLogger(__name__)
Owner = TypeVar("Owner")


@dataclass(frozen=True)
class TickKind(Generic[Owner]):
    """What differs between kinds of tick."""

    name: str  # in the log, with the message's `id_field`: "tick for package 12"
    id_field: str
    find: Callable[..., Owner | None]  # called with the message's fields; None: it is gone
    gone: str  # in the log when `find` found nothing
    key: Callable[[Owner, datetime], str | None]  # for a tick arriving then; None: no fire time around then
    start: Callable[[Owner, str], Execution]  # with that key, through the trigger path


def fire(kind: TickKind[Owner], **message) -> Execution | None:
    """Start the run one tick stands for (or find the one an earlier tick for the same fire time started)."""
    what = f"tick for {kind.name} {message[kind.id_field]}"
    metrics.tick_from_beat("schedule")
    owner = kind.find(**message)
    if owner is None:
        logger.info("%s, %s: ignored", what, kind.gone)
        return None
    key = kind.key(owner, timezone.now())
    if key is None:
        logger.warning("%s matches no fire time of its schedule: ignored", what)
        return None
    try:
        return kind.start(owner, key)
    except TriggerRefused as exc:
        logger.info("%s: run not started: %s", what, exc)
        return None


# A package's own schedule (packages/schedules.py).
PACKAGE = TickKind[Package](
    name="package",
    id_field="package_id",
    find=lambda package_id: Package.objects.filter(pk=package_id).first(),
    gone="which no longer exists",
    key=lambda package, now: tick_key(f"schedule:{package.pk}", package.schedule, package.timezone, now),
    start=lambda package, key: trigger_execution(package, trigger_type=TriggerType.SCHEDULED, idempotency_key=key),
)

# A saved run's schedule (executions/saved_runs.py): a re-run with its parameters and files, while it is saved.
SAVED_RUN = TickKind[Execution](
    name="saved run",
    id_field="execution_id",
    find=lambda execution_id: Execution.objects.select_related("package").filter(pk=execution_id, saved=True).first(),
    gone="which is no longer saved",
    key=lambda saved, now: tick_key(f"saved:{saved.pk}", saved.schedule, saved.schedule_timezone, now),
    start=lambda saved, key: rerun(saved, trigger_type=TriggerType.SCHEDULED, idempotency_key=key),
)


@dataclass(frozen=True)
class LaterRun:
    """A one-off run a script asked for (executions/later_runs.py), with the execution that asked, if still there."""

    package: Package
    params: dict
    parent: Execution | None
    request_id: str


def _find_later_run(package_id: int, params: dict, parent_execution_id: str, request_id: str) -> LaterRun | None:
    package = Package.objects.filter(pk=package_id).first()
    if package is None:
        return None
    return LaterRun(package, params, Execution.objects.filter(pk=parent_execution_id).first(), request_id)


def _start_later_run(later: LaterRun, key: str) -> Execution:
    return trigger_execution(
        later.package,
        trigger_type=TriggerType.SCHEDULED,
        params=later.params,
        correlation_id=later.parent.correlation_id if later.parent else None,
        parent=later.parent,
        idempotency_key=key,
    )


LATER_RUN = TickKind[LaterRun](
    name="later run",
    id_field="request_id",
    find=_find_later_run,
    gone="whose package no longer exists",
    key=lambda later, now: f"later:{later.request_id}",  # one fire time only: the request is the key
    start=_start_later_run,
)
