"""HTTP request bodies to IncomingEvents: the FX Event Bridge shape or a CloudEvent 1.0.

Accepted: `{event_type, event_source, payload}` as application/json; a structured CloudEvent as
application/cloudevents+json (or as application/json with `specversion`); a binary-mode CloudEvent (`ce-*`
headers, the data as the body). A CloudEvent's `data` may be an object or a JSON string holding one, as FX sends
it. Every problem raises EventRejected with a message saying what is wrong, before anything is stored; nothing a
client sends raises anything else (tests/security/test_inputs.py sends the hostile ones).

JSON is read with executor_project.bounded_json: UTF-8 only, at most MAX_DEPTH (32) levels of objects and arrays
in the body and again in a `data` string, no NaN / Infinity / overflowing numbers, no NUL or lone surrogates in
strings (PostgreSQL stores neither). The body's size is capped before it is read (EXECUTOR_EVENT_MAX_BYTES, api.py).
"""

from typing import Any

from cloudevents.v1.conversion import from_http
from cloudevents.v1.exceptions import GenericException
from cloudevents.v1.pydantic.v2 import CloudEvent
from django.utils import timezone
from pydantic import BaseModel, Field, ValidationError

from executor_project import bounded_json

from .events import EventRejected, IncomingEvent

CLOUDEVENTS_JSON = "application/cloudevents+json"
JSON = "application/json"
MAX_DEPTH = bounded_json.MAX_DEPTH
_BINARY_REQUIRED = ("ce-specversion", "ce-id", "ce-source", "ce-type")
_DATACONTENTTYPE_LENGTH = 100  # TriggerEvent.datacontenttype
# What a library may raise on input it was not written for (pydantic's ValidationError is a ValueError too, but
# is caught first for its better message).
_LIBRARY_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeError)


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
        missing = [name for name in _BINARY_REQUIRED if name not in headers]
        if missing:  # else the library would read the body as a structured event instead
            raise EventRejected(f"Binary-mode CloudEvent without the required headers {', '.join(missing)}.")
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
    """A structured CloudEvent (its body already passed _json_object) or a binary-mode one (attributes in ce-*
    headers; the body, unread by the library, is the data and goes through _data_object)."""
    binary = "ce-specversion" in headers  # with all of _BINARY_REQUIRED (parse), as the library decides too
    try:
        event = from_http(CloudEventIn, dict(headers), body, data_unmarshaller=_unparsed if binary else None)
    except ValidationError as exc:
        raise EventRejected(f"Not a valid CloudEvent: {_explain(exc)}") from None
    except GenericException as exc:
        raise EventRejected(f"Not a valid CloudEvent: {_short(str(exc))}") from None
    except _LIBRARY_ERRORS as exc:
        raise EventRejected(f"Not a valid CloudEvent ({type(exc).__name__} reading its attributes).") from None
    content_type = (event.datacontenttype or JSON).split(";")[0].strip().lower()
    if event.data is not None and content_type != JSON:
        raise EventRejected(f"datacontenttype {_short(event.datacontenttype)} is not accepted: data must be {JSON}.",
                            415)  # fmt: skip
    if len(event.datacontenttype or "") > _DATACONTENTTYPE_LENGTH:
        raise EventRejected(f"datacontenttype is longer than {_DATACONTENTTYPE_LENGTH} characters.")
    _storable_text(type=event.type, source=event.source, id=event.id, subject=event.subject,
                   datacontenttype=event.datacontenttype)  # fmt: skip
    return IncomingEvent(
        type=event.type,
        source=event.source,
        event_id=event.id,
        time=event.time,
        datacontenttype=event.datacontenttype or JSON,
        subject=event.subject or "",
        data=_data_object(event.data),
    )


def _unparsed(data: str | bytes) -> str | bytes:
    """from_http's data unmarshaller for binary mode: keep the body as sent, for _data_object's bounded parser.
    (A structured event's body was checked by _json_object, so the library's own json.loads is safe on it.)"""
    return data


def _json_object(body: bytes) -> dict:
    if not body:
        raise EventRejected("The body is empty: send the event as JSON, with a Content-Length header.")
    try:
        document = bounded_json.loads(body)
    except bounded_json.MalformedJSON as exc:
        raise EventRejected(f"Malformed JSON: {exc}.") from None
    except bounded_json.JSONRejected as exc:
        raise EventRejected(f"The body is refused: {exc}.") from None
    if not isinstance(document, dict):
        raise EventRejected(f"The body must be a JSON object, not {type(document).__name__}.")
    return document


def _data_object(data) -> dict:
    """The event's data as an object: its keys become the scripts' parameters."""
    if data in (None, "", b""):
        return {}
    if isinstance(data, (str, bytes)):
        try:
            data = bounded_json.loads(data)
        except bounded_json.MalformedJSON as exc:
            raise EventRejected(f"data is a string that does not hold JSON ({exc}).") from None
        except bounded_json.JSONRejected as exc:
            raise EventRejected(f"data is refused: {exc}.") from None
    if not isinstance(data, dict):
        raise EventRejected(
            f"data must be a JSON object (or a string holding one), not {type(data).__name__}: its keys become "
            "the scripts' parameters."
        )
    try:  # again, for data the library decoded itself (data_base64)
        bounded_json.check(data)
    except bounded_json.JSONRejected as exc:
        raise EventRejected(f"data: {exc}.") from None
    return data


def _storable_text(**attributes: str | None) -> None:
    """Attributes from headers or the body end up in text columns: refuse what PostgreSQL cannot store."""
    for name, value in attributes.items():
        try:
            bounded_json.check_text(value, name)
        except bounded_json.JSONRejected as exc:
            raise EventRejected(f"{exc}.") from None


def _short(text: str | None, limit: int = 300) -> str:
    """Library messages may quote what was sent: keep a response from echoing a whole body back."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()
    )
