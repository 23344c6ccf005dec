"""Script side of the FX adapter: FX's backends answered from files the worker wrote (workers/fx_bridge.py).

The real FX libraries from PyPI are imported unchanged; only the network clients they build are swapped for
file-backed ones, at the moment their module is first imported:

- argv[1] is read from EXECUTOR_ARGS_FILE (workers/handlers/python.py says why);
- python-consul's `consul.Consul` -> FileConsul, whose `kv` reads and writes <EXECUTOR_FX_DIR>/consul/<key>
  (config, platform config, the package's state); the worker saves the state after the step;
- kafka-python's `kafka.KafkaProducer` -> OutboxProducer: events (FerrisEvents, context.events.send) are appended
  to <fx>/outbox/events.jsonl, one line per event, which the worker follows while the step runs and dispatches
  line by line (workers/fx_events.py); log records streamed to the logs topic are dropped (FX's log handler has
  already printed them);
- requests to ADAPTER_URL (SECRETS_API_URL and SERVICES_API_URL point there) are answered here: secrets.set and
  scheduler.retry/schedule go to the outbox for the worker; a secret not in argv[1] does not exist.
"""

# Imported into every script at start-up, so only cheap modules here: importlib.abc alone would pull in
# importlib.resources (about 28 ms); pathlib and urllib.parse are imported when a Consul client is built.
import importlib.machinery
import os
import sys


def install() -> None:
    _load_arguments()
    _load_environment()
    if "EXECUTOR_FX_DIR" in os.environ:
        install_patches()


def install_patches() -> None:
    """The clients are swapped whenever their module is imported. They find the step's files through
    EXECUTOR_FX_DIR when used, not when patched: the warm-step server (workers/runtime/zygote.py) patches before
    any step exists, and each of its steps then has its own directory."""
    if not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        patches = {"consul": _patch_consul, "kafka": _patch_kafka, "requests": _patch_requests}
        sys.meta_path.insert(0, _PatchOnImport(patches))


def _load_arguments() -> None:
    """argv[1] (the JSON with the run's parameters and secrets) comes in a file, so no `ps` can read it."""
    path = os.environ.pop("EXECUTOR_ARGS_FILE", None)
    if path and len(sys.argv) > 1 and sys.argv[1] == "@EXECUTOR_ARGS_FILE":
        with open(path) as handle:
            sys.argv[1] = handle.read()
        _forget(path)


def _load_environment() -> None:
    """The package's environment variables (workers/handlers/python.py says why they come in a file). The
    executor's own variables, already set, keep their values."""
    path = os.environ.pop("EXECUTOR_ENV_FILE", None)
    if path:
        import json  # ~1 ms: only steps of packages with variables pay it

        with open(path) as handle:
            for name, value in json.load(handle).items():
                os.environ.setdefault(name, value)
        _forget(path)


def _forget(path: str) -> None:
    """A private file that has been read goes at once. Without the sandbox (EXECUTOR_SANDBOX=off) it is on the
    worker's disk, holding secrets, and only this process knows when it has been read (the worker removes it
    after the step in any case). In the sandbox it is a memory-only file bound read-only: that unlink fails."""
    try:
        os.unlink(path)
    except OSError:
        pass


class _PatchOnImport:
    """A meta path finder (only find_spec is needed): lets the real module load, then patches it."""

    def __init__(self, patches):
        self.patches = patches

    def find_spec(self, fullname, path, target=None):
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _patch_consul(module) -> None:
    module.Consul = FileConsul


class FileConsul:
    """Stands in for consul.Consul(host=..., port=..., ...): same `kv` calls, answered from files."""

    def __init__(self, *args, **kwargs):
        from pathlib import Path

        self.kv = FileKV(Path(os.environ["EXECUTOR_FX_DIR"]) / "consul")


class FileKV:
    """The subset of python-consul's Consul.KV that FX libraries use, with python-consul's return shapes."""

    def __init__(self, root):
        self.root = root

    def get(self, key, index=None, recurse=False, **kwargs):
        from urllib.parse import unquote

        if recurse:
            items = [
                {"Key": unquote(path.name), "Value": path.read_bytes()}
                for path in sorted(self.root.iterdir())
                if unquote(path.name).startswith(key)
            ]
            return index, items or None
        path = self._path(key)
        if not path.is_file():
            return index, None
        return index, {"Key": key, "Value": path.read_bytes()}

    def put(self, key, value, **kwargs):
        data = value.encode() if isinstance(value, str) else bytes(value or b"")
        self._path(key).write_bytes(data)
        return True

    def delete(self, key, **kwargs):
        self._path(key).unlink(missing_ok=True)
        return True

    def _path(self, key):
        from urllib.parse import quote

        return self.root / quote(str(key), safe="")


ADAPTER_URL = "http://executor-fx-adapter/"
LOGS_TOPIC = "ferris.logs"  # FX's default; the worker's ferris.env names the same


def _outbox_append(kind: str, record: dict) -> None:
    import json

    with open(os.path.join(os.environ["EXECUTOR_FX_DIR"], "outbox", f"{kind}.jsonl"), "a") as outbox:
        outbox.write(json.dumps(record) + "\n")


def _outbox_read(kind: str) -> list:
    import json

    try:
        with open(os.path.join(os.environ["EXECUTOR_FX_DIR"], "outbox", f"{kind}.jsonl")) as outbox:
            return [json.loads(line) for line in outbox if line.strip()]
    except FileNotFoundError:
        return []


def _patch_kafka(module) -> None:
    module.KafkaProducer = OutboxProducer


class OutboxProducer:
    """Stands in for kafka.KafkaProducer(bootstrap_servers=..., value_serializer=..., ...)."""

    def __init__(self, *args, value_serializer=None, **kwargs):
        self.value_serializer = value_serializer

    def send(self, topic, value=None, key=None, **kwargs):
        if topic != LOGS_TOPIC:
            import json

            payload = self.value_serializer(value) if self.value_serializer else value
            event = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
            _outbox_append("events", {"topic": topic, "event": event})
        return _Delivered(topic)

    def flush(self, *args, **kwargs):
        pass

    def close(self, *args, **kwargs):
        pass


class _Delivered:
    """What KafkaProducer.send returns; FX only calls .get()."""

    def __init__(self, topic):
        self.topic = topic

    def get(self, timeout=None):
        return {"topic": self.topic}


def _patch_requests(module) -> None:
    original = module.sessions.Session.request

    def request(self, method, url, *args, **kwargs):
        if str(url).startswith(ADAPTER_URL):
            return _adapter_response(module, method.upper(), str(url)[len(ADAPTER_URL) :], kwargs)
        return original(self, method, url, *args, **kwargs)

    module.sessions.Session.request = request


def _adapter_response(requests, method, path, kwargs):
    """FX's secrets and services HTTP APIs, as far as fx_ef calls them."""
    import json

    status, body = _route(method, path.split("?")[0].strip("/"), kwargs.get("params") or {}, kwargs.get("json") or {})
    response = requests.models.Response()
    response.status_code, response.encoding = status, "utf-8"
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    response.url = ADAPTER_URL + path
    return response


def _route(method, path, params, body):
    if method == "GET" and path == "secrets/by-name":
        # argv[1] holds every secret the package may read; one set during this run is the only other kind.
        values = [s["value"] for s in _outbox_read("secrets") if s["name"] == params.get("name")]
        return 200, {"value": values[-1] if values else None}
    if method == "POST" and path == "secrets":
        if body.get("context") not in ("project", "platform"):
            return 400, {"detail": f"context must be 'project' or 'platform', not {body.get('context')!r}"}
        if not isinstance(body.get("name"), str) or not body["name"] or not isinstance(body.get("value"), str):
            return 400, {"detail": "name and value must be non-empty strings"}
        _outbox_append("secrets", {"name": body["name"], "value": body["value"], "scope": body["context"]})
        return 200, {"name": body["name"], "context": body["context"]}
    parts = path.split("/")
    if method == "POST" and len(parts) == 3 and parts[0] == "services" and parts[2] == "schedule":
        import uuid

        job_id = uuid.uuid4().hex
        _outbox_append("schedules", {"id": job_id, "schedule": body.get("schedule"),
                                     "parameters": body.get("parameters") or {}})  # fmt: skip
        return 200, {"scheduled_job_id": job_id}
    return 404, {"detail": f"the executor does not provide {method} {path}"}
