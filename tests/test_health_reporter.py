"""A worker's liveness entry (workers/worker_liveness.py), written to the real test Redis by the Reporter the
heartbeat thread calls. The consumer is a stand-in holding what Celery's consumer holds (its node name, pool,
concurrency, prefetch and lanes) and Celery's requests in hand are plain lists: these tests are about the judgement
of "consumes"; tests/e2e/test_health.py proves it on real workers."""

import json
import logging
import time
from types import SimpleNamespace

import pytest

from executor_project import liveness
from tests.executions.test_api_errors import closed_port
from workers import worker_liveness

LANE = "health-test-lane"
NAME = "worker@bob-host"


def stand_in_consumer(slots: int = 2, pool: str = "prefork"):
    pool_class = type("TaskPool", (), {"__module__": f"celery.concurrency.{pool}"})
    app = SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={LANE: object()})))
    return SimpleNamespace(hostname=NAME, pool=pool_class(), controller=SimpleNamespace(concurrency=slots),
                           qos=SimpleNamespace(value=slots), app=app)  # fmt: skip


@pytest.fixture
def in_hand(monkeypatch):
    """Celery's requests of this pretend worker: reserved (taken, not finished) and active (running)."""
    requests = SimpleNamespace(reserved_requests=[], active_requests=[])
    monkeypatch.setattr(worker_liveness, "worker_state", requests)
    return requests


@pytest.fixture
def test_redis():
    client = liveness.client()
    client.delete(liveness.KEY, LANE)
    yield client
    client.delete(liveness.KEY, LANE)


@pytest.fixture
def reporter(in_hand, test_redis):
    return worker_liveness.Reporter(stand_in_consumer(), side=worker_liveness.ConsumerSide())


def verdict(now_offset: float = 0, stale: float = 30) -> str | None:
    return liveness.verdict("worker", liveness.read_all(), time.time() + now_offset, stale, NAME)


def test_the_entry_names_lanes_slots_and_running_steps(reporter, in_hand, test_redis):
    in_hand.active_requests = [SimpleNamespace(name="executor.run_execution"), SimpleNamespace(name="executor.reap")]
    in_hand.reserved_requests = list(in_hand.active_requests)
    test_redis.lpush(LANE, "message")
    reporter.side.loop_turned()

    reporter.report()

    entry = liveness.read_all()[NAME]
    assert (entry["kind"], entry["pool"], entry["lanes"], entry["slots"]) == ("worker", "prefork", [LANE], 2)
    assert (entry["running"], entry["active"], entry["in_hand"], entry["waiting"]) == (1, 2, 2, {LANE: 1})
    assert entry["starving_since"] is None  # both slots taken: the message waits for room, not for the worker
    assert time.time() - entry["at"] < 2 and verdict() is None


def test_messages_waiting_beside_a_free_slot_and_none_taken_is_starving(reporter, test_redis):
    test_redis.lpush(LANE, "message")
    reporter.side.loop_turned()

    reporter.report()
    reporter.report()

    assert liveness.read_all()[NAME]["starving_since"] is not None
    assert verdict() is None  # a moment proves nothing
    reporter.starving_since -= 31  # as if it had gone on for 31 s, beat after beat
    reporter.report()
    assert verdict() == f"{NAME}: took no message for 31 s while its lanes held 1 waiting and it had a free slot"


def test_a_message_taken_since_the_last_report_ends_the_starving(reporter, test_redis):
    test_redis.lpush(LANE, "message")
    reporter.report()
    assert reporter.starving_since is not None

    reporter.side.message_taken()
    reporter.report()

    assert reporter.starving_since is None
    assert liveness.read_all()[NAME]["taken_at"] == reporter.side.taken_at


def test_an_empty_queue_is_never_starving(reporter):
    reporter.report()
    reporter.report()

    assert liveness.read_all()[NAME]["starving_since"] is None


def test_a_soft_stop_deletes_the_entry_and_later_beats_write_nothing(reporter):
    reporter.report_safely()
    assert NAME in liveness.read_all()

    reporter.stop()
    reporter.report_safely()

    assert NAME not in liveness.read_all()


def test_an_unreachable_redis_is_logged_once_and_never_raised(reporter, settings, caplog):
    settings.CELERY_BROKER_URL = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"

    with caplog.at_level(logging.WARNING):
        reporter.report_safely()
        reporter.report_safely()

    assert caplog.text.count("could not record worker@bob-host's liveness in Redis (ConnectionError)") == 1
    assert "s3cret" not in caplog.text


def test_a_solo_worker_has_one_slot(in_hand, test_redis):
    reporter = worker_liveness.Reporter(stand_in_consumer(slots=4, pool="solo"))

    reporter.report()

    assert liveness.read_all()[NAME]["slots"] == 1


def test_entries_silent_for_a_day_are_dropped_by_a_worker(reporter, test_redis):
    for name, age in (("worker@gone-host", liveness.FORGET_SECONDS + 60), ("beat@quiet-host", 600)):
        test_redis.hset(liveness.KEY, name, json.dumps({"kind": "worker", "name": name, "at": time.time() - age}))

    reporter.report()

    assert sorted(liveness.read_all()) == ["beat@quiet-host", NAME]  # a stale one stays: it shows a dead process
