"""Liveness of the worker and beat processes, recorded in the broker's Redis where any process can read it.

Workers (workers/heartbeat.py) and beat (record_beat_ticks below) each keep one entry, a small JSON object, in ONE
hash, `executor:liveness`, under their node name (`worker@host`, `beat@host`). The check command
(`manage.py check_health`, the compose health checks) and the admin dashboard read it back in one HGETALL.

Why a hash and not a key per process with a TTL: the dashboard lists every process in one command, without a SCAN
of a keyspace that also holds one marker per queued execution (executions/queueing.py), and a process that died
stays listed, with the time of its last beat, instead of vanishing: "stale for 5 minutes" is what an operator needs
to see. A worker that stops softly deletes its own entry; entries nobody refreshed for FORGET_SECONDS are dropped by
every worker (at its start, then hourly), and the hash as a whole expires FORGET_SECONDS after the last write.

Times are wall-clock (time.time()): entries are compared across processes and hosts, whose clocks NTP keeps
within far less than the limits used here (EXECUTOR_HEALTH_STALE_SECONDS).

Redis is reached with a client of our own (short timeouts, no retries): a health check must answer within a
second or two when Redis is down or frozen, where a publish through kombu tries again for about two seconds.
Errors are reported by their type only: redis' messages never hold the password, but the URL must not be logged.
"""

import functools
import json
import logging
import os
import socket
import time

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from .env import redis_py_url

logger = logging.getLogger(__name__)

KEY = "executor:liveness"
FORGET_SECONDS = 24 * 3600
TIMEOUT_SECONDS = 1.0
BEAT_RECORD_EVERY_SECONDS = 1.0  # beat ticks far less often; this only bounds a burst of due entries


def client() -> redis.Redis:
    """A client of the broker's Redis (CELERY_BROKER_URL: the same server and database as the messages)."""
    return _client_for(settings.CELERY_BROKER_URL)


@functools.lru_cache(maxsize=4)  # one per URL, for the process's life (a test may switch brokers)
def _client_for(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(
        redis_py_url(broker_url),
        socket_connect_timeout=TIMEOUT_SECONDS,
        socket_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def record(name: str, facts: dict, connection: redis.Redis | None = None) -> None:
    """Write this process's entry (`facts` plus `at`, now); raises what Redis raised."""
    entry = json.dumps({**facts, "name": name, "at": time.time()})
    pipe = (connection or client()).pipeline(transaction=False)
    pipe.hset(KEY, name, entry)
    pipe.expire(KEY, FORGET_SECONDS)
    pipe.execute()


def forget(name: str) -> None:
    """Delete this process's entry (a soft stop); nothing happens if Redis cannot be reached."""
    try:
        client().hdel(KEY, name)
    except redis.RedisError as exc:
        logger.warning("could not delete the liveness entry of %s (%s)", name, type(exc).__name__)


def read_all(connection: redis.Redis | None = None) -> dict[str, dict]:
    """Every process's entry, by name; raises redis.RedisError when Redis cannot be read. An entry that is not
    a JSON object (written by hand, or by another version) is left out."""
    entries = {}
    for name, raw in (connection or client()).hgetall(KEY).items():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("at"), int | float):
            entries[name.decode(errors="replace")] = entry
    return entries


def drop_forgotten(entries: dict[str, dict], now: float, connection: redis.Redis | None = None) -> None:
    """Delete the entries nobody refreshed for FORGET_SECONDS (a process that died, or was renamed)."""
    old = [name for name, entry in entries.items() if now - entry["at"] > FORGET_SECONDS]
    if old:
        (connection or client()).hdel(KEY, *old)


def queue_depths(lanes: list[str], connection: redis.Redis | None = None) -> dict[str, int]:
    """Messages waiting in each lane's queue (kombu's Redis transport keeps a queue as a list of its name)."""
    pipe = (connection or client()).pipeline(transaction=False)
    for lane in lanes:
        pipe.llen(lane)
    return dict(zip(lanes, pipe.execute(), strict=True))


def beat_name() -> str:
    """beat@<host>, as a worker started with `--hostname worker@%h` is worker@<host>: a container's health check
    names its own process with `beat@$HOSTNAME`."""
    return f"beat@{socket.gethostname()}"


# --- Beat -------------------------------------------------------------------------------------------------------


def record_beat_ticks(sender=None, **kwargs) -> None:
    """beat_init (sender: the beat Service, in the beat process only): record the time of every tick of its
    scheduler from now on.

    Beat's main loop calls scheduler.tick() at least every max interval (django-celery-beat's: 5 s), whether or
    not a schedule is due, and sleeps in between; a beat whose loop is stuck (a hung database query, a broker it
    cannot publish to) ticks no more. So the time of the last tick that came back is beat's liveness. The tick of
    whatever scheduler the command names is wrapped on the instance, so every way of starting beat (compose,
    `make run`, the tests) records it without naming another scheduler class. A tick never fails because of
    this: Redis errors are logged once per outage.
    """
    scheduler = getattr(sender, "scheduler", None)
    if scheduler is None or getattr(scheduler, "_executor_liveness", False):
        return
    recorder = _TickRecorder(beat_name())
    tick = scheduler.tick

    def recorded_tick(*args, **kwargs):
        interval = tick(*args, **kwargs)
        recorder.ticked()
        return interval

    scheduler.tick = recorded_tick
    scheduler._executor_liveness = True
    recorder.ticked()  # at start-up: the first tick may be seconds away


class _TickRecorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.started_at = time.time()
        self.next_record = 0.0
        self.failing = False

    def ticked(self) -> None:
        if time.monotonic() < self.next_record:
            return
        self.next_record = time.monotonic() + BEAT_RECORD_EVERY_SECONDS
        try:
            record(self.name, {"kind": "beat", "pid": os.getpid(), "started_at": self.started_at})
        except redis.RedisError as exc:
            if not self.failing:
                logger.warning("beat: could not record its tick in Redis (%s)", type(exc).__name__)
            self.failing = True
            return
        self.failing = False


# --- Judging an entry -------------------------------------------------------------------------------------------


def judge(entry: dict, now: float, stale: float) -> str | None:
    """Why the process of `entry` is unhealthy, in one line, or None when it is healthy. `stale`: seconds
    (EXECUTOR_HEALTH_STALE_SECONDS) after which silence counts as a failure.

    A beat entry is healthy while its last tick is recent. A worker entry, while its heartbeat is recent, its
    consumer's event loop turns (except in a solo worker running a task, whose loop runs the task) and it has not
    been starving: leaving messages waiting in its lanes beside a free slot (workers/worker_liveness.py).
    """
    name, age = entry.get("name", "?"), now - entry["at"]
    if age > stale:
        what = "tick" if entry.get("kind") == "beat" else "heartbeat"
        return f"{name}: last {what} {age:.0f} s ago (limit {stale:.0f} s)"
    if entry.get("kind") != "worker":
        return None
    loop_at = entry.get("loop_at")
    running_in_loop = entry.get("pool") == "solo" and entry.get("active")
    if isinstance(loop_at, int | float) and now - loop_at > stale and not running_in_loop:
        return f"{name}: its consumer's event loop has not turned for {now - loop_at:.0f} s"
    since = entry.get("starving_since")
    if isinstance(since, int | float) and now - since > stale:
        waiting = entry.get("waiting") or {}
        total = sum(n for n in waiting.values() if isinstance(n, int))
        return (
            f"{name}: took no message for {now - since:.0f} s while its lanes held {total} waiting and it had "
            f"a free slot"
        )
    return None


def verdict(kind: str, entries: dict[str, dict], now: float, stale: float, name: str | None = None) -> str | None:
    """Why the `kind` ("worker", "beat") is unhealthy, or None: the process `name` if given, otherwise at least one
    of them must be healthy (the entries of dead processes stay listed until forgotten, and do not count)."""
    if name is not None:
        entry = entries.get(name)
        if entry is None or entry.get("kind") != kind:
            return f"{name}: no {kind} of that name has recorded its liveness (not started, stopped, or renamed)"
        return judge(entry, now, stale)
    problems = [judge(entry, now, stale) for entry in entries.values() if entry.get("kind") == kind]
    if not problems:
        return f"no {kind} has recorded its liveness"
    if None in problems:
        return None
    return problems[0] if len(problems) == 1 else f"none of {len(problems)} {kind}s is healthy: {problems[0]}"
