"""The ready-to-send event that starts a package from outside ("Show Trigger Event", in FX's format)."""

import json
from datetime import datetime

from cloudevents.v1.conversion import to_dict
from cloudevents.v1.http import CloudEvent

from .models import Package

TRIGGERED_RUN = "ferris_executor.run_execution.triggered_run"
# Types whose events name the package they run in their data (executions/events.py:_targets), so the package form
# does not offer them as subscriptions.
INTERNAL_EVENT_TYPES = frozenset({TRIGGERED_RUN})


def trigger_event_for(package: Package, *, event_id: str, time: datetime) -> dict:
    """A CloudEvent 1.0 in structured JSON form; `data` is a JSON string, as FX sends it."""
    attributes = {
        "id": event_id,
        "source": "executor.admin",
        "type": TRIGGERED_RUN,
        "time": time.isoformat(),
        "datacontenttype": "application/json",
    }
    data = json.dumps({"package_id": package.pk, "package_name": package.package_name})
    return to_dict(CloudEvent(attributes, data))
