"""Events in, executions out: store every event once, then start every package it reaches.

Events come from the HTTP API (executions/api.py) and from executions themselves (lifecycle events,
executions/lifecycle.py). All of them go through `dispatch`, which in ONE transaction stores the event, registers
its type, and creates one pending execution per target package; the executions are enqueued when it commits
(executions/services.py), so the packages run in parallel on whichever workers are free.

Targets: an event of type `ferris_executor.run_execution.triggered_run` whose data names a package
(`package_id` / `package_name`, the package page's "Show Trigger Event") starts that package; any other event
starts every active package subscribed to its type.

Chains: `_fxcid` in the data names the correlation id to join (a new one otherwise); `_fxparentexec` names the
execution that sent the event, and the new executions become its children, one level deeper. Two guards stop
runaway chains and fan-outs with a stored reason instead of starting anything.
"""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction

from packages.models import EventType, Package
from packages.trigger_events import TRIGGERED_RUN

from .models import Execution, TriggerEvent, TriggerEventStatus, TriggerType
from .services import TriggerRefused, trigger_execution

logger = logging.getLogger(__name__)


class EventRejected(Exception):
    """The event cannot be accepted as sent; nothing was stored. `status` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class IncomingEvent:
    """A CloudEvent 1.0 with its data decoded to an object (the keys scripts receive in argv[1])."""

    type: str
    source: str
    data: dict
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # FX ids are 32 hex characters
    time: datetime | None = None
    datacontenttype: str = "application/json"
    subject: str = ""


@dataclass(frozen=True)
class Dispatch:
    event: TriggerEvent
    executions: list[Execution]
    duplicate: bool  # the event had been received before; this delivery started nothing


def dispatch(incoming: IncomingEvent, *, api_key=None, parent: Execution | None = None) -> Dispatch:
    """Store `incoming` and start what it reaches. Raises EventRejected (nothing stored) for a direct trigger
    naming no known package or for malformed chain keys. A repeated (source, id) returns the first delivery."""
    existing = _received(incoming)
    if existing:
        return existing
    parent = parent or _parent_named_in(incoming.data)
    correlation_id = _correlation_id(incoming.data, parent)
    targets = _targets(incoming)
    try:
        with transaction.atomic():
            event = _store(incoming, api_key, parent, correlation_id)
            executions = _start(event, targets, parent)
    except IntegrityError:
        # A concurrent delivery of the same event won the unique (source, id); its outcome stands.
        existing = _received(incoming)
        if existing is None:
            raise
        return existing
    logger.info("event %s (%s): %s", event.event_id, event.type, event.status_reason)
    return Dispatch(event, executions, duplicate=False)


def _received(incoming: IncomingEvent) -> Dispatch | None:
    event = TriggerEvent.objects.filter(source=incoming.source, event_id=incoming.event_id).first()
    if event is None:
        return None
    return Dispatch(event, list(event.executions.order_by("created_at")), duplicate=True)


def _store(incoming: IncomingEvent, api_key, parent: Execution | None, correlation_id: str) -> TriggerEvent:
    EventType.objects.get_or_create(name=incoming.type)  # unknown types are registered, as FX does
    return TriggerEvent.objects.create(
        event_id=incoming.event_id,
        source=incoming.source,
        type=incoming.type,
        time=incoming.time,
        datacontenttype=incoming.datacontenttype,
        subject=incoming.subject,
        data=incoming.data,
        api_key=api_key,
        parent_execution=parent,
        correlation_id=correlation_id,
        chain_depth=parent.chain_depth + 1 if parent else 0,
    )


def _start(event: TriggerEvent, targets: list[Package], parent: Execution | None) -> list[Execution]:
    """Create the executions (or record why none), inside the caller's transaction."""
    max_depth, max_fan_out = settings.EXECUTOR_EVENT_MAX_CHAIN_DEPTH, settings.EXECUTOR_EVENT_MAX_FAN_OUT
    if event.chain_depth > max_depth:
        return _record(event, [], TriggerEventStatus.STOPPED,
                       f"stopped: chain depth {event.chain_depth} is over the limit of {max_depth} "
                       "(EXECUTOR_EVENT_MAX_CHAIN_DEPTH); do packages trigger each other in a loop?")  # fmt: skip
    if len(targets) > max_fan_out:
        return _record(event, [], TriggerEventStatus.STOPPED,
                       f"stopped: {len(targets)} packages subscribe to {event.type}, over the fan-out limit of "
                       f"{max_fan_out} (EXECUTOR_EVENT_MAX_FAN_OUT)")  # fmt: skip
    if not targets:
        return _record(event, [], TriggerEventStatus.NO_SUBSCRIBERS, "no active package subscribes to this type")
    executions, refusals = [], []
    for package in targets:
        try:
            executions.append(
                trigger_execution(
                    package,
                    trigger_type=TriggerType.TRIGGERED,
                    params=event.data,
                    correlation_id=event.correlation_id,
                    trigger_event=event,
                )  # fmt: skip
            )
        except TriggerRefused as exc:
            refusals.append(str(exc))
    names = ", ".join(execution.package.package_name for execution in executions)
    reason = "; ".join(([f"started {names}"] if executions else []) + [f"not started: {r}" for r in refusals])
    status = TriggerEventStatus.STARTED if executions else TriggerEventStatus.STOPPED
    return _record(event, executions, status, reason)


def _record(event: TriggerEvent, executions: list[Execution], status: str, reason: str) -> list[Execution]:
    event.status, event.status_reason = status, reason[:500]
    event.save(update_fields=["status", "status_reason"])
    return executions


def _targets(incoming: IncomingEvent) -> list[Package]:
    data = incoming.data
    if incoming.type == TRIGGERED_RUN and ("package_id" in data or "package_name" in data):
        return [_named_package(data)]
    subscribers = Package.objects.filter(active=True, trigger_event_types__name=incoming.type)
    return list(subscribers.order_by("pk"))


def _named_package(data: dict) -> Package:
    """The package a direct trigger names. Both keys may be given (Show Trigger Event does); they must agree."""
    package_id, package_name = data.get("package_id"), data.get("package_name")
    if package_id is not None and not str(package_id).isdigit():
        raise EventRejected(f"data.package_id must be a package's number, not {package_id!r}.")
    packages = Package.objects.all()
    if package_id is not None:
        packages = packages.filter(pk=int(package_id))
    if package_name is not None:
        packages = packages.filter(package_name=package_name)
    package = packages.first()
    if package is None:
        given = {"package_id": package_id, "package_name": package_name}
        named = " and ".join(f"{key} {value!r}" for key, value in given.items() if value is not None)
        raise EventRejected(f"No package with {named}.", status=404)
    return package


def _parent_named_in(data: dict) -> Execution | None:
    """The execution named by `_fxparentexec`; None when absent or unknown here (an event from another system)."""
    parent_id = data.get("_fxparentexec")
    if parent_id is None:
        return None
    try:
        parent_id = uuid.UUID(str(parent_id))
    except ValueError:
        raise EventRejected(f"data._fxparentexec must be an execution id (a UUID), not {parent_id!r}.") from None
    return Execution.objects.filter(pk=parent_id).only("id", "correlation_id", "chain_depth").first()


def _correlation_id(data: dict, parent: Execution | None) -> str:
    cid = data.get("_fxcid")
    if cid is not None and (not isinstance(cid, str) or not 0 < len(cid) <= 64):
        raise EventRejected("data._fxcid must be a string of 1 to 64 characters.")
    return cid or (parent.correlation_id if parent else uuid.uuid4().hex)
