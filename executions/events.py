"""Events in, executions out: store every event once, then start every package it reaches.

Events come from the HTTP API (executions/api.py) and from executions themselves (lifecycle events,
executions/lifecycle.py). All of them go through `dispatch`, which in ONE transaction stores the event, registers
its type, and creates one pending execution per target package; the executions are enqueued together when it
commits (executions/queueing.py, enqueue_many), so the packages run in parallel on whichever workers are free.

Cost: an event takes the same handful of queries however many packages it starts (its executions and their steps
are inserted with one statement per table, and published in one round trip to the broker), so a burst of events
is bounded by the database's commits, not by the fan-out.

Targets: an event of type `ferris_executor.run_execution.triggered_run` whose data names a package
(`package_id` / `package_name`, the package page's "Show Trigger Event") starts that package, if it allows manual
triggering; any other event starts every active package subscribed to its type.

Reach: an event starts only packages of one project, or of every project. An event sent with a project API key
reaches that key's project; one emitted by an execution (a script's outbox, a lifecycle event) reaches the
emitting package's project. Otherwise a package author of one team could start another team's packages (and
feed them data) just by emitting an event of a type they subscribe to. Only a platform API key, a package of no
project (the platform's) and the platform's own callers reach every project. The stored event records the project
it reached; outside that reach a named package, a parent execution or an earlier delivery is "not here".

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
from django.utils import timezone

from executor_project import metrics
from packages.audit import AuditAction, record
from packages.models import EventType, Package
from packages.trigger_events import TRIGGERED_RUN

from . import state_log
from .models import Execution, ExecutionStep, TriggerEvent, TriggerEventStatus, TriggerType
from .queueing import enqueue_many

logger = logging.getLogger(__name__)
# What creating a package's execution, its audit entry and its queue need (Package.lane reads the priority).
TARGET_FIELDS = ("id", "name", "package_name", "project_id", "active", "allow_manual_triggering", "entrypoint",
                 "priority")  # fmt: skip
Scripts = dict[int, list[tuple[int, str]]]  # each package's scripts as (script id, file name), in run order


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
    """Store `incoming` and start what it reaches: with an `api_key`, the packages of the key's project (all of
    them for a platform key); with a `parent` (an execution emitting it), those of the parent's package's project
    (all for a package of no project). Raises EventRejected (nothing stored) for a direct trigger naming no
    package within reach or one that does not allow manual triggering, for malformed chain keys, and for a
    (source, id) received before from outside the reach. A repeated (source, id) returns the first delivery."""
    project_id = _reach(api_key, parent)
    sender = "api" if api_key is not None else "execution" if parent is not None else "platform"
    try:
        parent = parent or _parent_named_in(incoming.data, project_id)
        correlation_id = _correlation_id(incoming.data, parent)
        targets, scripts = _targets(incoming, project_id)
    except EventRejected:
        # A repeated delivery gets its first outcome, even if the same event would be refused today.
        existing = _received(incoming, project_id)
        if existing:
            return _counted(existing, sender)
        count_received("rejected", sender)
        raise
    chain_depth = parent.chain_depth + 1 if parent else 0
    plan = _plan(incoming.type, targets, scripts, chain_depth)
    try:
        with transaction.atomic():
            # Inserted first: a repeated (source, id) fails on the unique constraint before anything else is
            # written. Cheaper than looking for it before every event, since repeats are rare.
            event = _store(incoming, api_key, parent, correlation_id, project_id, plan)
            if not targets or incoming.type == TRIGGERED_RUN:
                # Subscribers prove the type is registered; otherwise it may be new. Registered as FX does.
                EventType.objects.get_or_create(name=incoming.type)
            executions = _create_runs(event, plan.runs)
            if api_key is not None:
                _audit(event, executions, api_key)
            transaction.on_commit(lambda: _committed(executions))
    except IntegrityError:
        # Received before, or a concurrent delivery of the same event won the unique (source, id): its outcome
        # stands.
        existing = _received(incoming, project_id)
        if existing is None:
            raise
        return _counted(existing, sender)
    logger.info("event %s (%s): %s", event.event_id, event.type, event.status_reason)
    return _counted(Dispatch(event, executions, duplicate=False), sender)


def _committed(executions: list[Execution]) -> None:
    state_log.created(executions)
    enqueue_many(executions, stamped=True)


def _counted(outcome: Dispatch, sender: str) -> Dispatch:
    count_received("duplicate" if outcome.duplicate else outcome.event.status, sender)
    return outcome


def count_received(outcome: str, sender: str) -> None:
    """executor_events_received_total (executor_project/metrics.py); the API counts the bodies it refuses itself."""
    metrics.inc(metrics.EVENTS_RECEIVED, outcome=outcome, sender=sender)


def _reach(api_key, parent: Execution | None) -> int | None:
    """The project whose packages the event may start; None: every project."""
    if api_key is not None:
        return api_key.project_id
    if parent is not None:
        return parent.package.project_id
    return None  # the platform's own callers


def _received(incoming: IncomingEvent, project_id: int | None) -> Dispatch | None:
    event = TriggerEvent.objects.filter(source=incoming.source, event_id=incoming.event_id).first()
    if event is None:
        return None
    if project_id is not None and event.project_id != project_id:
        # Answering with the first delivery would show another project's executions; storing it again would
        # break the (source, id) identity. The sender can pick a new id; nothing of the other event is told.
        raise EventRejected("An event with this source and id was received before from another sender: "
                            "send it with a new id.", status=409)  # fmt: skip
    return Dispatch(event, list(event.executions.order_by("created_at")), duplicate=True)


@dataclass(frozen=True)
class _Plan:
    """What an event will do, decided before anything is written: its status and reason, and the packages it
    starts with the scripts each one runs."""

    status: str
    reason: str
    runs: list[tuple[Package, list[tuple[int, str]]]]  # each package with its steps' (script id, file name)


def _plan(event_type: str, targets: list[Package], scripts: dict[int, list[tuple[int, str]]], chain_depth: int
          ) -> _Plan:  # fmt: skip
    max_depth, max_fan_out = settings.EXECUTOR_EVENT_MAX_CHAIN_DEPTH, settings.EXECUTOR_EVENT_MAX_FAN_OUT
    if chain_depth > max_depth:
        return _Plan(TriggerEventStatus.STOPPED,
                     f"stopped: chain depth {chain_depth} is over the limit of {max_depth} "
                     "(EXECUTOR_EVENT_MAX_CHAIN_DEPTH); do packages trigger each other in a loop?", [])  # fmt: skip
    if len(targets) > max_fan_out:
        return _Plan(TriggerEventStatus.STOPPED,
                     f"stopped: {len(targets)} packages subscribe to {event_type}, over the fan-out limit of "
                     f"{max_fan_out} (EXECUTOR_EVENT_MAX_FAN_OUT)", [])  # fmt: skip
    if not targets:
        return _Plan(TriggerEventStatus.NO_SUBSCRIBERS, "no active package subscribes to this type", [])
    runs, refusals = [], []
    for package in targets:
        steps, refusal = _steps_of(package, scripts.get(package.pk, []))
        if refusal:
            refusals.append(refusal)
        else:
            runs.append((package, steps))
    names = ", ".join(package.package_name for package, _ in runs)
    reason = "; ".join(([f"started {names}"] if runs else []) + [f"not started: {r}" for r in refusals])
    status = TriggerEventStatus.STARTED if runs else TriggerEventStatus.STOPPED
    return _Plan(status, reason[:500], runs)


def _steps_of(package: Package, scripts: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], str]:
    """The scripts (in run order) a run of `package` has steps for, or why it cannot run (the rules and words of
    services.trigger_execution, which starts runs one at a time)."""
    if not package.active:
        return [], f"Package {package.name!r} is inactive."
    if package.entrypoint:  # only the entrypoint runs; the other files are shipped with it
        scripts = [script for script in scripts if script[1] == package.entrypoint]
    if not scripts:
        missing = f"its entrypoint {package.entrypoint!r}" if package.entrypoint else "scripts to run"
        return [], f"Package {package.name!r} has no {missing}."
    return scripts, ""


def _store(incoming: IncomingEvent, api_key, parent: Execution | None, correlation_id: str, project_id: int | None,
           plan: _Plan) -> TriggerEvent:  # fmt: skip
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
        project_id=project_id,
        status=plan.status,
        status_reason=plan.reason,
    )


def _create_runs(event: TriggerEvent, runs: list[tuple[Package, list[tuple[int, str]]]]) -> list[Execution]:
    """One pending execution per package with one pending step per script: one INSERT per table, however many
    packages the event starts (inside the caller's transaction). They carry `enqueued_at` from the start: published
    right after the commit, they need no UPDATE for it (executions/queueing.py)."""
    now = timezone.now()
    executions = [
        Execution(
            package=package,
            trigger_type=TriggerType.TRIGGERED,
            params=event.data,
            correlation_id=event.correlation_id,
            trigger_event=event,
            parent_execution_id=event.parent_execution_id,
            chain_depth=event.chain_depth,
            enqueued_at=now,
        )
        for package, _ in runs
    ]
    Execution.objects.bulk_create(executions)
    for execution in executions:
        # Until enqueue_many, after the commit, says otherwise: `enqueued_at` alone would read as queued.
        execution.queued = False
    ExecutionStep.objects.bulk_create(
        ExecutionStep(execution=execution, position=position, script_id=script_id, file_name=file_name)
        for execution, (_, scripts) in zip(executions, runs, strict=True)
        for position, (script_id, file_name) in enumerate(scripts, start=1)
    )
    return executions


def _audit(event: TriggerEvent, executions: list[Execution], api_key) -> None:
    """Who sent what, and for a direct trigger who ran what: names and ids only, never the event's data."""
    started = [execution.package.package_name for execution in executions]
    details = {"type": event.type, "event_id": event.event_id, "status": event.status, "started": started}
    record(AuditAction.SEND_EVENT, event, api_key=api_key, details=details)
    if event.type == TRIGGERED_RUN and ("package_id" in event.data or "package_name" in event.data):
        for execution in executions:
            record(AuditAction.RUN, execution, api_key=api_key, details={"event_id": event.event_id})


def _targets(incoming: IncomingEvent, project_id: int | None) -> tuple[list[Package], Scripts]:
    """The packages the event names or that subscribe to it, and each one's scripts (see _with_scripts)."""
    data = incoming.data
    if incoming.type == TRIGGERED_RUN and ("package_id" in data or "package_name" in data):
        return _named_package(data, project_id)
    subscribers = _within(Package.objects.filter(active=True, trigger_event_types__name=incoming.type), project_id)
    return _with_scripts(subscribers)


def _with_scripts(packages) -> tuple[list[Package], Scripts]:
    """The packages (in pk order) with what starting them needs, and no more, and each one's scripts as (id, file
    name) in run order. One query for both, portable to SQLite: a row per script with its package's columns (a row
    of NULL script for a package without one), instead of a second query for the scripts; an event may reach a
    hundred packages."""
    fields = [f.attname for f in Package._meta.concrete_fields if f.attname in TARGET_FIELDS]  # from_db's order
    rows = packages.order_by("pk", "scripts__position", "scripts__file_name").values_list(
        *fields, "scripts__id", "scripts__file_name", "scripts__runs"
    )
    targets, scripts = {}, {}
    for *values, script_id, file_name, runs in rows:
        package_id = values[fields.index("id")]
        if package_id not in targets:
            targets[package_id] = Package.from_db(rows.db, fields, values)  # as .only(*TARGET_FIELDS) does
            scripts[package_id] = []
        if script_id is not None and runs:  # files a manifest does not list are shipped, not run (Script.runs)
            scripts[package_id].append((script_id, file_name))
    return list(targets.values()), scripts


def _within(packages, project_id: int | None):
    return packages if project_id is None else packages.filter(project_id=project_id)


def _named_package(data: dict, project_id: int | None) -> tuple[list[Package], Scripts]:
    """The package a direct trigger names. Both keys may be given (Show Trigger Event does); they must agree.
    A package outside the reach is answered exactly like a missing one: the sender learns nothing of it."""
    package_id, package_name = data.get("package_id"), data.get("package_name")
    if package_id is not None and not str(package_id).isdigit():
        raise EventRejected(f"data.package_id must be a package's number, not {package_id!r}.")
    packages = _within(Package.objects.all(), project_id)
    if package_id is not None:
        packages = packages.filter(pk=int(package_id))
    if package_name is not None:
        packages = packages.filter(package_name=package_name)
    found, scripts = _with_scripts(packages)
    if not found:
        given = {"package_id": package_id, "package_name": package_name}
        named = " and ".join(f"{key} {value!r}" for key, value in given.items() if value is not None)
        raise EventRejected(f"No package with {named}.", status=404)
    package = found[0]
    if not package.allow_manual_triggering:
        # A direct trigger is a Run from outside: the package's owners turned that off.
        raise EventRejected(f"Package {package.name!r} does not allow manual triggering (its Allow manual "
                            "triggering is off), so a triggered_run event cannot start it.", status=403)  # fmt: skip
    return [package], scripts


def _parent_named_in(data: dict, project_id: int | None) -> Execution | None:
    """The execution named by `_fxparentexec`; None when absent or unknown here (an event from another system,
    or an execution outside the reach: a project key cannot hang its runs under another project's)."""
    parent_id = data.get("_fxparentexec")
    if parent_id is None:
        return None
    try:
        parent_id = uuid.UUID(str(parent_id))
    except ValueError:
        raise EventRejected(f"data._fxparentexec must be an execution id (a UUID), not {parent_id!r}.") from None
    executions = Execution.objects.filter(pk=parent_id)
    if project_id is not None:
        executions = executions.filter(package__project_id=project_id)
    return executions.only("id", "correlation_id", "chain_depth").first()


def _correlation_id(data: dict, parent: Execution | None) -> str:
    cid = data.get("_fxcid")
    if cid is not None and (not isinstance(cid, str) or not 0 < len(cid) <= 64):
        raise EventRejected("data._fxcid must be a string of 1 to 64 characters.")
    return cid or (parent.correlation_id if parent else uuid.uuid4().hex)
