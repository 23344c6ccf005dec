"""Worker side of the FX adapter: the files FX backends answer from inside a step, and what a step left behind.

The script side lives in workers/runtime/site/executor_fx/ and is loaded into every script by the runtime's
sitecustomize. Together they are the one place that knows FX's backends:

- Consul (ferris_cli's ApplicationConfigurator, fx_ef's state): each key is a file in <fx>/consul/, named by the
  key percent-encoded. The package's config.json is stored under the package's technical name, the platform
  configuration under "ferris.env" (ferris_cli's DEFAULT_CONFIG), the package state under "<name>.state".
- Kafka (FerrisEvents, context.events.send) and FX's secrets and services HTTP APIs (secrets.set,
  scheduler.retry): the script side appends what they send to <fx>/outbox/*.jsonl. Events leave as they are sent:
  the worker follows events.jsonl while the step runs (workers/fx_events.py). After each step `collect` saves the
  state changes, stores the secrets, schedules the later runs and dispatches the events not sent yet, in that
  order, so a package started by an event sent at the end sees the state and secrets its sender left; one started
  by an event sent earlier sees them as they were when the step started (on FX a state put is in Consul at once).

The step can write in <fx>: everything there is read as hostile (executor_lib/safe_files.py). A link, FIFO or
oversized file where the state or an outbox file should be is not used, and the step's stderr says so.
"""

import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.core.exceptions import ValidationError

from executions.later_runs import schedule_later_run
from executions.models import Execution
from executor_lib.safe_files import UnsafeFile, empty_directory, open_directory, read_regular, write_new
from executor_project import bounded_json, database
from packages import state as package_state
from packages.cron import CronError
from packages.models import Secret, SecretScope

from .fx_events import StepEvents
from .lease import ExecutionWatch
from .workspace import Workspace

logger = logging.getLogger(__name__)

RUNTIME_SITE_DIR = Path(settings.BASE_DIR) / "workers" / "runtime" / "site"
PLATFORM_CONFIG_KEY = "ferris.env"
ADAPTER_URL = "http://executor-fx-adapter/"  # answered inside the script (executor_fx), never on the network
# ferris_cli builds its Kafka producer from these; the adapter's producer never connects.
FX_SECRET_SCOPES = (SecretScope.PROJECT, SecretScope.PLATFORM)  # what context.secrets.set accepts
MAX_RECORDS = 1000  # per kind and step: a script looping over context.events.send is not a message bus
MAX_STATE_BYTES = 1024 * 1024  # context.state is a small JSON object kept in one database row
MAX_OUTBOX_BYTES = 16 * 1024 * 1024  # per outbox file: MAX_RECORDS requests of a reasonable size
OUTBOX_KINDS = ("secrets", "schedules", "events")
PLATFORM_CONFIG = {
    "KAFKA_BOOTSTRAP_SERVER": "executor-fx-adapter",
    "KAFKA_PORT": "9092",
    "DEFAULT_TOPIC": "ferris.events",
    "DEFAULT_LOGS_TOPIC": "ferris.logs",
}


def prepare(workspace: Workspace, package_name: str, config_json: bytes | None) -> dict[str, str]:
    """Write the execution's FX files and return the environment variables that point the adapter at them."""
    fx_dir = workspace.fx_dir
    (fx_dir / "consul").mkdir()
    (fx_dir / "outbox").mkdir()
    with _consul(workspace) as consul:
        write_new(consul, _key_file(package_name), config_json or b"{}", mode=0o644)
        write_new(consul, _key_file(PLATFORM_CONFIG_KEY), json.dumps(PLATFORM_CONFIG).encode(), mode=0o644)
    return {
        "PYTHONPATH": str(RUNTIME_SITE_DIR),
        "EXECUTOR_FX_DIR": str(fx_dir),
        # ferris_cli only builds a Consul client when CONSUL_HOST is set; the adapter's client never connects.
        "CONSUL_HOST": "executor-fx-adapter",
        "CONSUL_PORT": "8500",
        "SECRETS_API_URL": ADAPTER_URL + "secrets/",
        "SERVICES_API_URL": ADAPTER_URL + "services/",
    }


def begin_step(workspace: Workspace, execution: Execution, uid: int | None) -> dict:
    """Put the package's current state where fx_ef reads it; returns it, to tell the step's changes apart.
    Whatever an earlier step left under that name is replaced, never written through."""
    # Before the script starts: a blink here waits like one during the step (ExecutionWatch), not fail the run.
    state = database.retrying(lambda: package_state.load(execution.package),
                              seconds=settings.EXECUTOR_DATABASE_OUTAGE_SECONDS,
                              what=f"execution {execution.id}: its package's state")  # fmt: skip
    try:
        with _consul(workspace) as consul:
            # fx_ef rewrites the whole key, as the step's uid
            write_new(consul, _key_file(_state_key(execution)), json.dumps(state).encode(), owner=uid)
    except UnsafeFile as exc:
        logger.warning("execution %s: state not written for the step: %s", execution.id, exc)
    return state


@dataclass
class Collected:
    notes: list[str] = field(default_factory=list)  # for the step's output: what could not be done, and why
    secret_values: list[str] = field(default_factory=list)  # set by the step: masked in its output too


def step_events(workspace: Workspace, execution: Execution, watch: ExecutionWatch | None) -> StepEvents:
    """The step's events, to be sent as they come: call its `tick` while the step runs, then pass it to
    `collect`."""
    return StepEvents(workspace, execution, watch, max_records=MAX_RECORDS, max_bytes=MAX_OUTBOX_BYTES)


def collect(workspace: Workspace, execution: Execution, state_before: dict, events: StepEvents | None = None
            ) -> Collected:  # fmt: skip
    """Carry out what the step asked FX's backends for and send the events `events` has not sent while it ran,
    then empty the outbox for the next step."""
    collected = Collected()
    events = events or step_events(workspace, execution, None)
    _save_state(workspace, execution, state_before, collected)
    requests = _read_outbox(workspace, events, collected)
    _store_secrets(requests["secrets"], execution, collected)
    _schedule_later_runs(requests["schedules"], execution, collected)
    events.send_rest()
    collected.notes.extend(events.notes)
    return collected


def _save_state(workspace: Workspace, execution: Execution, before: dict, collected: Collected) -> None:
    try:
        with _consul(workspace) as consul:
            content = read_regular(consul, _key_file(_state_key(execution)), MAX_STATE_BYTES)
    except UnsafeFile as exc:
        collected.notes.append(f"context.state not saved: {exc}.")
        return
    try:
        after = bounded_json.loads(content) if content is not None else {}
    except bounded_json.JSONRejected:  # also NaN, NUL, too deep: what jsonb could not store
        # ferris_cli's put_item turns every ' into ", so a value with an apostrophe breaks the JSON (as on FX).
        collected.notes.append("context.state not saved: the step left it as invalid JSON (a value with an ').")
        return
    if not isinstance(after, dict):
        collected.notes.append("context.state not saved: it must stay a JSON object.")
        return
    package_state.save_changes(execution.package, before, after)


def _read_outbox(workspace: Workspace, events: StepEvents, collected: Collected) -> dict[str, list[dict]]:
    """The step's requests of each kind (the events' into `events`, after those it read while the step ran), then
    an empty outbox for the next step."""
    requests: dict[str, list[dict]] = {kind: [] for kind in OUTBOX_KINDS}
    try:
        with open_directory(str(workspace.root), "fx", "outbox") as outbox:
            for kind in OUTBOX_KINDS:
                try:
                    if kind == "events":
                        events.read_rest(outbox)
                    else:
                        requests[kind] = _records(read_regular(outbox, f"{kind}.jsonl", MAX_OUTBOX_BYTES), kind,
                                                  collected)  # fmt: skip
                except UnsafeFile as exc:
                    collected.notes.append(f"{kind} not read: {exc}.")
            empty_directory(outbox)
    except UnsafeFile as exc:
        collected.notes.append(f"nothing the step sent was read: {exc}.")
    return requests


def _store_secrets(requests: list[dict], execution: Execution, collected: Collected) -> None:
    package = execution.package
    for request in requests:
        name, scope, value = request.get("name"), request.get("scope"), request.get("value")
        if not (isinstance(name, str) and isinstance(value, str) and scope in FX_SECRET_SCOPES):
            continue  # the adapter wrote only valid requests; anything else was written by the script itself
        collected.secret_values.append(value)
        if scope == SecretScope.PROJECT and package.project_id is None:
            collected.notes.append(f"secret {name} not saved: the package belongs to no project.")
            continue
        owner = {"project_id": package.project_id} if scope == SecretScope.PROJECT else {}
        secret = Secret.objects.filter(scope=scope, name=name, **owner).first() or Secret(scope=scope, name=name,
                                                                                          **owner)  # fmt: skip
        secret.set_value(value)
        try:
            secret.full_clean(exclude=["encrypted_value"])
        except ValidationError as exc:
            collected.notes.append(f"secret {name!r} not saved: {'; '.join(exc.messages)}")
            continue
        secret.save()


def _schedule_later_runs(requests: list[dict], execution: Execution, collected: Collected) -> None:
    for request in requests:
        params = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
        try:
            run_at = schedule_later_run(execution, cron_expression=str(request.get("schedule")), params=params,
                                        request_id=uuid.uuid4().hex)  # fmt: skip
        except CronError as exc:
            collected.notes.append(f"later run not scheduled: {exc}")
            continue
        logger.info("execution %s: later run of %s at %s", execution.id, execution.package.package_name, run_at)


def _records(content: bytes | None, kind: str, collected: Collected) -> list[dict]:
    """The step's requests of one kind. The script wrote the file, so nothing in it is trusted."""
    if content is None:
        return []
    records = []
    for line in content.decode(errors="replace").splitlines():
        try:
            record = bounded_json.loads(line)
        except bounded_json.JSONRejected:
            record = None
        if isinstance(record, dict):
            records.append(record)
    if len(records) > MAX_RECORDS:
        collected.notes.append(f"{len(records) - MAX_RECORDS} of {len(records)} {kind} ignored: "
                               f"at most {MAX_RECORDS} per step.")  # fmt: skip
    return records[:MAX_RECORDS]


def _state_key(execution: Execution) -> str:
    return f"{execution.package.package_name}.state"


def _key_file(key: str) -> str:
    return quote(key, safe="")


def _consul(workspace: Workspace):
    return open_directory(str(workspace.root), "fx", "consul")
