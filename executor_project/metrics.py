"""Every Prometheus metric of the executor, and the one way to record one: `record(...)` never raises.

Multi-process mode (prometheus_client's): each process (gunicorn worker, Celery pool process, the worker's main
process, beat, the development server) writes its values to memory-mapped files in one directory,
PROMETHEUS_MULTIPROC_DIR (settings: `EXECUTOR_METRICS_DIR`), and `/metrics` (executor_project/metrics_view.py) adds
up the files of all of them at each scrape. A file is named after its process as `<host>-<pid>`, not the pid alone,
so containers sharing one directory (each has its own pid 1) never write the same file. Files of dead processes stay:
their counters must not go backwards; only "live" gauges of dead processes are removed (`clean_dead_processes`, at
import, i.e. when a process starts). `make run` empties the directory when it starts. An unusable directory (or an
empty PROMETHEUS_MULTIPROC_DIR) falls back to this process's values only, with a warning: metrics never stop a
process.

Label cardinality stays bounded: no execution ids. `package` is a package's technical name and `project` a project's
name, so their series grow with the number of packages (and their renames), like the admin's lists; every other
label has a fixed set of values, listed in the README (Operating Executor, Metrics).

Other apps record through `inc(METRIC, **labels)`, `observe(METRIC, value, **labels)` or `record(callable)`. The
gauges sampled on a scrape (queue depths, executions by status) are filled in by samplers the apps register here
(`register_sampler`, e.g. executions/apps.py), since this module may not import them (pyproject's import contracts).
"""

import glob
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

logger = logging.getLogger(__name__)

# --- Multi-process set-up (before any metric is defined: each value opens its file as it is created) -------------


# '_' separates the parts of the file names prometheus_client parses. Read once: prometheus_client asks for the
# process's id at every write (to notice a fork), and a fork keeps the host.
_HOST = socket.gethostname().replace("_", "-")


def _process_id() -> str:
    return f"{_HOST}-{os.getpid()}"


def _use_directory(directory: str) -> str | None:
    """The directory, made if needed, with prometheus_client writing there; None when it cannot be used."""
    if not directory:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".probe-{_process_id()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        logger.warning("metrics: %s is not usable (%s); this process's metrics are its own only", directory, exc)
        return None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # read by prometheus_client as each value file is opened
    values.ValueClass = values.MultiProcessValue(_process_id)
    return directory


MULTIPROCESS_DIR = _use_directory(settings.EXECUTOR_METRICS_DIR)
if MULTIPROCESS_DIR is None:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    values.ValueClass = values.MutexValue


def clean_dead_processes(directory: str | None = MULTIPROCESS_DIR) -> int:
    """Remove the live gauges of this host's processes that are gone (prometheus_client's mark_process_dead);
    returns how many processes that was. Counters and histograms of dead processes are kept on purpose."""
    if directory is None:
        return 0
    host = f"{_HOST}-"
    dead = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        process = os.path.basename(path)[: -len(".db")].split("_")[-1]
        pid = process.removeprefix(host)
        if pid != process and pid.isdigit() and not _alive(int(pid)):
            dead.add(process)
    for process in dead:
        multiprocess.mark_process_dead(process, directory)
    return len(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --- Recording --------------------------------------------------------------------------------------------------


_COMPLAINT_SECONDS = 60.0  # a full disk would fail every write: one warning a minute is enough
_complained_at = float("-inf")


def record(action: Callable[..., object], *args) -> None:
    """Call `action(*args)` (e.g. `metric.labels(...).inc`), swallowing any error: a metric must never fail the
    code it observes (a full disk under the metrics directory, a label mistake)."""
    global _complained_at
    try:
        action(*args)
    except Exception:
        if time.monotonic() - _complained_at >= _COMPLAINT_SECONDS:
            _complained_at = time.monotonic()
            logger.warning("metrics: could not record %r (more such failures stay quiet for %d s)", action,
                           _COMPLAINT_SECONDS, exc_info=True)  # fmt: skip


def inc(metric, amount: float = 1, **labels: str) -> None:
    """`metric.labels(**labels).inc(amount)` (no labels: `metric.inc(amount)`) that never raises."""
    record(lambda: (metric.labels(**labels) if labels else metric).inc(amount))


def observe(metric, value: float, **labels: str) -> None:
    """`metric.labels(**labels).observe(value)` that never raises."""
    record(lambda: (metric.labels(**labels) if labels else metric).observe(value))


# Seconds: from a blink to an hour-long step (EXECUTOR_STEP_TIMEOUT_SECONDS defaults to 600).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# The classic text format every Prometheus reads (our names need none of 1.0.0's UTF-8 escaping).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
REGISTRY = CollectorRegistry()  # this process's values: /metrics uses it only without a multi-process directory
# Every metric has labels, on purpose: a value (and its file) is made when a process first records it, so a process
# that records nothing (a `manage.py` command, a health check run every few seconds) leaves no file behind.

# --- Executions (executions/state_log.py records these on every transition) --------------------------------------
EXECUTIONS_CREATED = Counter(
    "executor_executions_created", "Executions recorded (pending), by what triggered them.",
    ["package", "project", "trigger_type"], registry=REGISTRY,
)  # fmt: skip
EXECUTIONS_STARTED = Counter(
    "executor_executions_started", "Executions a worker claimed for the first time (a hand-over or retry is not "
    "counted again).", ["package", "project", "trigger_type"], registry=REGISTRY,
)  # fmt: skip
EXECUTIONS_FINISHED = Counter(
    "executor_executions_finished", "Executions that reached a final status.",
    ["package", "project", "trigger_type", "status"], registry=REGISTRY,
)  # fmt: skip
TRANSITIONS = Counter(
    "executor_execution_transitions", "Execution status changes, by transition (executions/transitions.py).",
    ["transition"], registry=REGISTRY,
)  # fmt: skip
START_LATENCY = Histogram(
    "executor_execution_start_latency_seconds", "From an execution's trigger (its creation) to its first claim by "
    "a worker.", ["trigger_type"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
# --- Steps (workers/steps.py) ------------------------------------------------------------------------------------
STEP_DURATION = Histogram(
    "executor_step_duration_seconds", "How long a step's process ran, by handler (python, sql) and outcome.",
    ["handler", "status"], buckets=DURATION_BUCKETS, registry=REGISTRY,
)  # fmt: skip
SANDBOX_START_FAILURES = Counter(
    "executor_sandbox_start_failures", "Steps whose sandbox could not start (cold), warm-step servers that failed "
    "(warm), failed sandbox self-tests (self_test).", ["kind"], registry=REGISTRY,
)  # fmt: skip
# --- Recovery, events, schedules, Git ----------------------------------------------------------------------------
REAPER_ACTIONS = Counter(
    "executor_reaper_actions", "Lost runs failed or retried (reaper and heartbeat), lost messages published again.",
    ["action"], registry=REGISTRY,
)  # fmt: skip
EVENTS_RECEIVED = Counter(
    "executor_events_received", "Events received, by outcome (started, no_subscribers, stopped, duplicate, "
    "rejected) and sender (api, execution, platform).", ["outcome", "sender"], registry=REGISTRY,
)  # fmt: skip
BEAT_LAST_TICK = Gauge(
    "executor_beat_last_tick_timestamp_seconds", "When a worker last received a message beat sends on its own, by "
    "message (reap: the periodic reaper; schedule: a schedule's tick): beat is alive and its messages get through.",
    ["message"], multiprocess_mode="max", registry=REGISTRY,
)  # fmt: skip
GIT_SYNCS = Counter("executor_git_syncs", "Git repository syncs, by result.", ["status"], registry=REGISTRY)
API_RATE_LIMIT = Counter(
    "executor_api_rate_limit", "API requests the rate limit refused (429), or let through uncounted with Redis "
    "unreachable.", ["outcome"], registry=REGISTRY,
)  # fmt: skip
RETENTION_DELETED = Counter(
    "executor_retention_deleted", "Rows retention deleted (executions/retention.py), by kind: executions, and what "
    "went with them (steps, run-form files, trigger events, ...).", ["kind"], registry=REGISTRY,
)  # fmt: skip
# --- Sampled on a scrape (at most once per EXECUTOR_METRICS_SAMPLE_SECONDS per process) ---------------------------
QUEUE_DEPTH = Gauge(
    "executor_queue_depth", "Messages waiting in a lane's Redis queue (LLEN).", ["lane"],
    multiprocess_mode="mostrecent", registry=REGISTRY,
)  # fmt: skip
EXECUTIONS_CURRENT = Gauge(
    "executor_executions_current", "Executions now pending or in progress.", ["status"],
    multiprocess_mode="mostrecent", registry=REGISTRY,
)  # fmt: skip
SAMPLE_ERRORS = Counter(
    "executor_metrics_sample_errors", "Samples that failed (the database or Redis unreachable).", ["sampler"],
    registry=REGISTRY,
)  # fmt: skip


def tick_from_beat(message: str) -> None:
    record(lambda: BEAT_LAST_TICK.labels(message=message).set_to_current_time())


# --- Samplers -------------------------------------------------------------------------------------------------

_samplers: dict[str, Callable[[], None]] = {}
_sampled_at: dict[str, float] = {}
_sampling = threading.Lock()


def register_sampler(name: str, sampler: Callable[[], None]) -> None:
    """`sampler()` sets some gauges; /metrics calls it at most once per EXECUTOR_METRICS_SAMPLE_SECONDS in each
    process, so a scrape every few seconds (or several Prometheus servers) costs the database and Redis nothing
    more. Its errors are counted and logged, never raised."""
    _samplers[name] = sampler


def sample(now: float | None = None) -> None:
    """Run the samplers whose last run here is older than EXECUTOR_METRICS_SAMPLE_SECONDS."""
    now = time.monotonic() if now is None else now
    with _sampling:  # one scrape samples; a concurrent one (a threaded server) shows the values of the last
        for name, sampler in _samplers.items():
            if now - _sampled_at.get(name, float("-inf")) < settings.EXECUTOR_METRICS_SAMPLE_SECONDS:
                continue
            _sampled_at[name] = now
            try:
                sampler()
            except Exception as exc:
                inc(SAMPLE_ERRORS, sampler=name)
                logger.warning("metrics: sampling %s failed (%s: %s)", name, type(exc).__name__, exc)


clean_dead_processes()


def exposition() -> bytes:
    """Every process's metrics in Prometheus' text format: the files of the multi-process directory added up, or
    this process's own values without one."""
    registry = REGISTRY
    if MULTIPROCESS_DIR is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    return generate_latest(registry)
