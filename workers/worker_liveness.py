"""A worker's liveness entry (executor_project/liveness.py): proof that it CONSUMES, not merely that it lives.

The heartbeat thread of the worker's main process (workers/heartbeat.py) writes the entry every beat. A thread
that beats proves only that the process lives: the thread runs on while the main thread, which takes the messages,
is stuck (a hung broker connection, a blocking call in the event loop, a consumer that never came back from a
reconnect). So the entry also carries two facts only the consumer side can produce, and the queue depth to judge
them against:

- `loop_at`: the last turn of the main thread's event loop (Celery's hub), where the consumer's BRPOP on the
  lanes is served; a timer in that loop stamps it every second. A prefork worker's loop turns however busy its
  pool is; a solo worker runs its task inside the loop, so a stale loop there is normal while it runs a task.
- `taken_at`: when the consumer last took a message (task_received, sent by the consumer in the main process).
- `waiting`: the messages waiting in each of its lanes (LLEN), read by the thread at each beat.

From these the thread derives `starving_since`: since when its lanes have held waiting messages while it had room
for one more (fewer requests in hand than its prefetch allows) and it took none. A consumer that works takes such
a message within a second (its BRPOP is pending whenever it has room), so a queue that stays full beside a free
slot for EXECUTOR_HEALTH_STALE_SECONDS means this worker is not consuming, even though everything else about it
looks alive. A single reading proves nothing (the message may have arrived a moment ago), hence the duration.

`manage.py check_health worker` judges the entry (executor_project/liveness.py:judge).
"""

import logging
import os
import time

import redis
from celery.signals import task_received, worker_shutdown
from celery.worker import state as worker_state

from executions.queueing import RUN_TASK
from executor_project import liveness

logger = logging.getLogger(__name__)
LOOP_STAMP_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 3600  # how often a worker drops the entries of processes silent for a day


class ConsumerSide:
    """What the main thread tells the heartbeat thread; plain float attributes (atomic to write and read)."""

    loop_at: float | None = None
    taken_at: float | None = None

    def loop_turned(self) -> None:
        self.loop_at = time.time()

    def message_taken(self, sender=None, **kwargs) -> None:
        self.taken_at = time.time()


consumer_side = ConsumerSide()
task_received.connect(consumer_side.message_taken, weak=False)


_reporter: "Reporter | None" = None


def watch(consumer) -> "Reporter":
    """worker_ready, in the main process (workers/heartbeat.py:start): stamp each turn of the consumer's event
    loop; returns the reporter the heartbeat thread calls."""
    global _reporter
    consumer_side.loop_turned()
    hub = getattr(consumer.controller, "hub", None)
    if hub is not None:
        hub.call_repeatedly(LOOP_STAMP_SECONDS, consumer_side.loop_turned)
    _reporter = Reporter(consumer)
    return _reporter


def forget_on_shutdown(sender=None, **kwargs) -> None:
    """worker_shutdown: a worker that stops softly is not a dead one; its entry goes (a killed one's stays, stale)."""
    if _reporter is not None:
        _reporter.stop()


worker_shutdown.connect(forget_on_shutdown, weak=False)


class Reporter:
    """Writes this worker's entry; one per heartbeat thread. `report_safely` never raises."""

    def __init__(self, consumer, side: ConsumerSide = consumer_side) -> None:
        self.consumer, self.side = consumer, side
        self.name = consumer.hostname
        self.pool = type(consumer.pool).__module__.rsplit(".", 1)[-1]  # prefork, solo, threads, ...
        self.started_at = time.time()
        self.last_report_at: float | None = None
        self.starving_since: float | None = None
        self.next_prune = 0.0
        self.failing = False
        self.stopped = False

    def lanes(self) -> list[str]:
        return sorted(self.consumer.app.amqp.queues.consume_from)

    def slots(self) -> int:
        return 1 if self.pool == "solo" else int(getattr(self.consumer.controller, "concurrency", 1) or 1)

    def report_safely(self) -> None:
        if self.stopped:
            return
        try:
            self.report()
        except redis.RedisError as exc:
            if not self.failing:
                logger.warning("heartbeat: could not record %s's liveness in Redis (%s)", self.name,
                               type(exc).__name__)  # fmt: skip
            self.failing = True
            return
        except Exception:
            logger.exception("heartbeat: could not record %s's liveness", self.name)
            return
        if self.failing:
            logger.warning("heartbeat: %s's liveness is recorded in Redis again", self.name)
        self.failing = False

    def report(self) -> None:
        now = time.time()
        lanes = self.lanes()
        waiting = liveness.queue_depths(lanes)
        in_hand = len(worker_state.reserved_requests)
        capacity = int(getattr(self.consumer.qos, "value", 0) or 0)  # 0: no prefetch limit
        self.judge_starving(now, sum(waiting.values()), has_room=capacity == 0 or in_hand < capacity)
        active = tuple(worker_state.active_requests)  # one C-level copy: the main thread adds and removes
        running = sum(1 for request in active if request.name == RUN_TASK)
        facts = {
            "kind": "worker",
            "pid": os.getpid(),
            "pool": self.pool,
            "lanes": lanes,
            "slots": self.slots(),
            "running": running,
            "active": len(active),  # any task (a solo worker runs it inside its event loop)
            "in_hand": in_hand,
            "waiting": waiting,
            "started_at": self.started_at,
            "loop_at": self.side.loop_at,
            "taken_at": self.side.taken_at,
            "starving_since": self.starving_since,
        }
        liveness.record(self.name, facts)
        self.last_report_at = now
        if now >= self.next_prune:
            self.next_prune = now + PRUNE_EVERY_SECONDS
            liveness.drop_forgotten(liveness.read_all(), now)

    def judge_starving(self, now: float, waiting: int, has_room: bool) -> None:
        """Messages waited beside a free slot and none was taken since the last report: starving since then,
        unless already; anything else ends it."""
        taken = self.side.taken_at
        took_one = taken is not None and self.last_report_at is not None and taken >= self.last_report_at
        if waiting and has_room and not took_one:
            if self.starving_since is None:
                self.starving_since = now  # first seen now: the queue may have been empty at the last report
        else:
            self.starving_since = None

    def stop(self) -> None:
        """The worker stops softly: its entry goes, and no later beat writes it again."""
        self.stopped = True
        liveness.forget(self.name)
