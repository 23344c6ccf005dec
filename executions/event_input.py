"""HTTP request bodies to IncomingEvents: the FX Event Bridge shape or a CloudEvent 1.0.

Accepted: `{event_type, event_source, payload}` as application/json; a structured CloudEvent as
application/cloudevents+json (or as application/json with `specversion`); a binary-mode CloudEvent (`ce-*`
headers, the data as the body). A CloudEvent's `data` may be an object or a JSON string holding one, as FX sends
it. Every problem raises EventRejected with a message saying what is wrong, before anything is stored.
"""

import json
from typing import Any

from cloudevents.v1.conversion import from_http
from cloudevents.v1.exceptions import GenericException
from cloudevents.v1.pydantic.v2 import CloudEvent
from django.utils import timezone
from pydantic import BaseModel, Field, ValidationError

from .events import EventRejected, IncomingEvent

CLOUDEVENTS_JSON = "application/cloudevents+json"
JSON = "application/json"


class BridgeEvent(BaseModel):
    """The FX Event Bridge shape. `payload` becomes the event's data: its keys reach the scripts' argv[1]."""

    event_type: str = Field(min_length=1, max_length=255, examples=["sales.order_created"])
    event_source: str = Field(min_length=1, max_length=255, examples=["shop"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"order_id": 42}])


class CloudEventIn(CloudEvent):
    """A CloudEvent 1.0 (structured mode). `data`: a JSON object, or a JSON string holding one (as FX sends it).
    (`source`, `id`) identifies the event: the same pair sent again starts nothing."""

    id: str = Field(min_length=1, max_length=255)
    source: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=255)
    subject: str | None = Field(default=None, max_length=255)


def parse(headers, body: bytes) -> IncomingEvent:
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type not in (JSON, CLOUDEVENTS_JSON):
        raise EventRejected(
            f"Content-Type {content_type or '(none)'} is not accepted: send {JSON} (the FX Event Bridge shape or "
            f"a CloudEvent) or {CLOUDEVENTS_JSON}.",
            status=415,
        )
    if "ce-specversion" in headers:  # binary mode: attributes in headers, the body is the data
        return _cloud_event(headers, body)
    document = _json_object(body)
    if content_type == CLOUDEVENTS_JSON or "specversion" in document:
        return _cloud_event(headers, body)
    try:
        event = BridgeEvent.model_validate(document)
    except ValidationError as exc:
        shape = "{event_type, event_source, payload}"
        raise EventRejected(f"Not an FX Event Bridge event {shape}: {_explain(exc)}") from None
    return IncomingEvent(type=event.event_type, source=event.event_source, data=event.payload, time=timezone.now())


def _cloud_event(headers, body: bytes) -> IncomingEvent:
    try:
        event = from_http(CloudEventIn, dict(headers), body)
    except ValidationError as exc:
        raise EventRejected(f"Not a valid CloudEvent: {_explain(exc)}") from None
    except GenericException as exc:
        raise EventRejected(f"Not a valid CloudEvent: {exc}") from None
    content_type = (event.datacontenttype or JSON).split(";")[0].strip().lower()
    if event.data is not None and content_type != JSON:
        raise EventRejected(f"datacontenttype {event.datacontenttype} is not accepted: data must be {JSON}.", 415)
    return IncomingEvent(
        type=event.type,
        source=event.source,
        event_id=event.id,
        time=event.time,
        datacontenttype=event.datacontenttype or JSON,
        subject=event.subject or "",
        data=_data_object(event.data),
    )


def _json_object(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise EventRejected("The body is not UTF-8 text.") from None
    except ValueError as exc:
        raise EventRejected(f"Malformed JSON: {exc}.") from None
    if not isinstance(document, dict):
        raise EventRejected(f"The body must be a JSON object, not {type(document).__name__}.")
    return document


def _data_object(data) -> dict:
    """The event's data as an object: its keys become the scripts' parameters."""
    if data is None:
        return {}
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError:
            raise EventRejected("data is a string that does not hold JSON.") from None
    if not isinstance(data, dict):
        raise EventRejected(
            f"data must be a JSON object (or a string holding one), not {type(data).__name__}: its keys become "
            "the scripts' parameters."
        )
    return data


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()
    )
