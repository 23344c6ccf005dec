"""The executions part of the /fx/ API (mounted in executor_project/api.py, which also describes the whole API):
POST /fx/events (FX Event Bridge compatible), GET /fx/executions/<id>, GET /fx/cid/<cid>."""

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import Prefetch, QuerySet
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from executor_project import bounded_json
from executor_project.api_auth import Error, key_with, within_reach
from executor_project.uploads import BadLength, declared_length

from . import event_input
from .events import EventRejected, count_received, dispatch
from .models import ApiKey, ApiScope, Execution, ExecutionStep
from .queueing import run_state
from .summary import execution_as_dict

router = Router()


class RunState(Schema):
    """`queued: false`: recorded, and published as soon as the broker takes it again (executions/queueing.py)."""

    execution_id: uuid.UUID
    status: str
    queued: bool
    reason: str | None


class EventAccepted(Schema):
    cid: str
    eventType: str
    eventId: str
    executions: list[uuid.UUID]
    runs: list[RunState]
    status: str
    statusReason: str
    duplicate: bool


# StepOut and ExecutionOut publish the shape executions/summary.py gives an execution (the CLI prints the same). No
# docstrings: they would change the published OpenAPI document.
class StepOut(Schema):
    position: int
    script: str
    status: str
    status_reason: str
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    execution_time: int | None


class ExecutionOut(Schema):
    execution_id: uuid.UUID
    service: str
    package_id: int
    status: str
    status_reason: str
    trigger_type: str
    origin_event_type: str | None
    data: dict[str, Any]
    datetime: datetime
    started_at: datetime | None
    finished_at: datetime | None
    execution_time: int | None
    cid: str
    parent_execution_id: uuid.UUID | None
    chain_depth: int
    steps: list[StepOut]


class Chain(Schema):
    cid: str
    executions: list[ExecutionOut]


# POST /events reads its body by hand (to word its own errors), so ninja does not see these two shapes: the API adds
# them to the OpenAPI components (executor_project/api.py), where EVENT_REQUEST_BODY refers to them.
EVENT_SCHEMAS = (event_input.BridgeEvent, event_input.CloudEventIn)
EVENT_REQUEST_BODY = {
    "required": True,
    "content": {
        event_input.JSON: {
            "schema": {
                "oneOf": [{"$ref": "#/components/schemas/BridgeEvent"}, {"$ref": "#/components/schemas/CloudEventIn"}]
            }
        },  # fmt: skip
        event_input.CLOUDEVENTS_JSON: {"schema": {"$ref": "#/components/schemas/CloudEventIn"}},
    },
}


@router.post(
    "/events",
    response={
        200: EventAccepted,
        202: EventAccepted,
        **{status: Error for status in (400, 401, 403, 404, 409, 411, 413, 415, 429)},
    },
    openapi_extra={"requestBody": EVENT_REQUEST_BODY},
    summary="Send an event",
    url_name="events",
)
def post_event(request):
    """Store the event and start one execution of every active package subscribed to its type (or, for
    `ferris_executor.run_execution.triggered_run` naming a package, that package). 202 with what it started;
    200 if this (source, id) was received before: the first delivery's outcome, nothing started again.
    A project key's event starts only its project's packages; a direct trigger of a package outside it is 404,
    of a package that does not allow manual triggering 403. Needs the scope events:send.
    Each of `runs` is `pending`; with `queued: false` and a reason when the broker refused its message: it is
    recorded and runs once the broker is back (202, not 503: a retried 503 would start it twice)."""
    api_key = key_with(request, ApiScope.EVENTS_SEND)
    try:
        incoming = event_input.parse(request.headers, _event_body(request))
    except (HttpError, EventRejected) as exc:  # refused before dispatch, which counts the others
        count_received("rejected", "api")
        if isinstance(exc, HttpError):
            raise
        raise HttpError(exc.status, str(exc)) from None
    try:
        outcome = dispatch(incoming, api_key=api_key)
    except EventRejected as exc:
        raise HttpError(exc.status, str(exc)) from None
    event = outcome.event
    runs = [run_state(execution) for execution in outcome.executions]
    return Status(
        200 if outcome.duplicate else 202,
        {
            "cid": event.correlation_id,
            "eventType": event.type,
            "eventId": event.event_id,
            "executions": [execution.id for execution in outcome.executions],
            "runs": runs,
            "status": event.status,
            "statusReason": event.status_reason + _not_queued_note(runs),
            "duplicate": outcome.duplicate,
        },
    )


def _not_queued_note(runs: list[dict]) -> str:
    """The event's own status says what it started; this says when the broker has not taken all of them yet."""
    waiting = sum(1 for run in runs if not run["queued"])
    if not waiting:
        return ""
    return f"; {waiting} of {len(runs)} recorded but not queued yet (queued as soon as the broker is back)"


def _event_body(request) -> bytes:
    """The request body, at most EXECUTOR_EVENT_MAX_BYTES: refused from its Content-Length before it is read.
    (RequestLimitsMiddleware answers the malformed-length and chunked cases first; this stays correct without it.)"""
    limit = settings.EXECUTOR_EVENT_MAX_BYTES
    try:
        length = declared_length(request.META)
    except BadLength as exc:
        raise HttpError(400, str(exc)) from None
    if request.headers.get("Transfer-Encoding"):
        raise HttpError(411, "Send the event with a Content-Length header: a chunked body is not read here.")
    if (length or 0) > limit:
        raise HttpError(413, f"The event is larger than {limit} bytes (EXECUTOR_EVENT_MAX_BYTES).")
    # Django reads no further than Content-Length (nothing without one), so the body is within the limit now.
    try:
        return request.body
    except RequestDataTooBig:  # EXECUTOR_EVENT_MAX_BYTES set above Django's own cap on bodies read whole
        cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise HttpError(413, f"The event is larger than {cap} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE, which is "
                             "EXECUTOR_MAX_SCRIPT_BYTES).") from None  # fmt: skip


@router.get("/executions/{execution_id}", response={200: ExecutionOut, 401: Error, 403: Error, 404: Error, 429: Error},
            summary="An execution with its steps")  # fmt: skip
def get_execution(request, execution_id: str):
    """Needs the scope executions:read; another project's execution is 404, like a missing one."""
    api_key = key_with(request, ApiScope.EXECUTIONS_READ)
    try:
        execution = _executions(api_key).get(pk=uuid.UUID(execution_id))
    except (ValueError, Execution.DoesNotExist):
        raise HttpError(404, f"No execution {execution_id}.") from None
    return execution_as_dict(execution)


@router.get("/cid/{cid}", response={200: Chain, 401: Error, 403: Error, 404: Error, 429: Error},
            summary="A chain: its executions in time order")  # fmt: skip
def get_chain(request, cid: str):
    """Needs the scope executions:read; a project key sees only its project's executions of the chain (404 when
    it has none there)."""
    api_key = key_with(request, ApiScope.EXECUTIONS_READ)
    try:
        bounded_json.check_text(cid)  # a NUL in the URL would reach PostgreSQL as a query parameter
    except bounded_json.JSONRejected:
        raise HttpError(404, "No execution with that correlation id.") from None
    executions = list(_executions(api_key).filter(correlation_id=cid).order_by("created_at"))
    if not executions:
        raise HttpError(404, f"No execution with correlation id {cid}.")
    return {"cid": cid, "executions": [execution_as_dict(execution) for execution in executions]}


def _executions(api_key: ApiKey) -> QuerySet:
    steps = Prefetch("steps", queryset=ExecutionStep.objects.defer("stdout", "stderr"))  # output can be MiBs
    executions = Execution.objects.select_related("package", "trigger_event").prefetch_related(steps)
    return within_reach(executions, api_key, "package__project_id")
