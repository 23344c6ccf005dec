"""Bodies for POST /fx/events: a bridge event, a CloudEvent, and the bad inputs that the API tests send through
Django's test client and the end-to-end tests over real HTTP."""

import json
import uuid


def cloud_event(event_type="sales.order_created", data=None, **attributes):
    return {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "erp", "type": event_type,
            "datacontenttype": "application/json", "data": json.dumps(data or {}), **attributes}  # fmt: skip


BRIDGE = {"event_type": "sales.order_created", "event_source": "shop", "payload": {}}
BAD_INPUT = [
    ("malformed JSON", "{not json", "application/json", 400, "Malformed JSON"),
    ("not an object", "[1, 2]", "application/json", 400, "must be a JSON object, not list"),
    ("missing event_type", {"event_source": "shop"}, "application/json", 400, "event_type: Field required"),
    ("event_type not a string", {**BRIDGE, "event_type": 5}, "application/json", 400, "event_type: Input should be"),
    ("payload not an object", {**BRIDGE, "payload": [1]}, "application/json", 400, "payload: Input should be"),
    ("form encoded", "a=1", "application/x-www-form-urlencoded", 415, "is not accepted"),
    ("cloud event without id", {k: v for k, v in cloud_event().items() if k != "id"}, "application/cloudevents+json",
     400, "Missing required attributes: {'id'}"),
    ("cloud event bad time", cloud_event(time="yesterday"), "application/cloudevents+json", 400, "time:"),
    ("cloud event data not JSON", {**cloud_event(), "data": "{nope"}, "application/cloudevents+json", 400,
     "does not hold JSON"),
    ("cloud event data a list", {**cloud_event(), "data": [1]}, "application/cloudevents+json", 400,
     "data must be a JSON object"),
    ("cloud event XML data", {**cloud_event(), "datacontenttype": "text/xml", "data": "<a/>"},
     "application/cloudevents+json", 415, "datacontenttype text/xml"),
    ("bad _fxcid", {**BRIDGE, "payload": {"_fxcid": 12}}, "application/json", 400, "_fxcid must be a string"),
    ("bad _fxparentexec", {**BRIDGE, "payload": {"_fxparentexec": "nope"}}, "application/json", 400,
     "_fxparentexec must be an execution id"),
    ("direct trigger of an unknown package",
     {"event_type": "ferris_executor.run_execution.triggered_run", "event_source": "x",
      "payload": {"package_name": "nobody"}}, "application/json", 404, "No package with package_name 'nobody'"),
]  # fmt: skip
