"""A bounded burst against gunicorn (issue 15, rows "burst" and "a long backlog"): every event accepted, no 5xx,
every execution run exactly once, and the backlog it leaves is never published twice while it waits. Request times
are measured and reported, not asserted (bench/events.py is the benchmark)."""

import statistics
import time

import pytest

from .checks import BURST, assert_completed_once, assert_no_web_problems, new_tag
from .ledger import Ledger, all_final

pytestmark = pytest.mark.e2e

RATE, SECONDS, SUBSCRIBERS = 20, 10, 2
DRAIN_BOUND = 150  # seconds for 400 one-step executions on 4 slots; generous for a loaded 2-core machine
RUN_LANES = ("priority", "default", "slow", "scheduled")  # not maintenance: beat's reaper ticks go there
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Redis transport keeps a queue's priorities in lists `<queue>\x06\x16<n>`


def test_a_burst_of_events_is_accepted_and_each_execution_runs_exactly_once(stack, ledger, counter, web, recovery):
    tag = new_tag("burst")
    started = time.monotonic()
    answers = web.burst(BURST, tag, rate=RATE, seconds=SECONDS)
    sent = time.monotonic()

    refused = [answer for answer in answers if answer.status != 202]
    assert not refused, "\n".join(map(str, refused[:20]))
    assert_no_web_problems(web)
    accepted = web.accepted_ids(tag)
    assert len(accepted) == RATE * SECONDS * SUBSCRIBERS

    excess, broker = 0, stack.redis.client()  # excess: messages queued beyond the executions waiting for one
    deadline = time.monotonic() + DRAIN_BOUND
    while True:
        runs = ledger.tagged(tag)
        if accepted <= {run.id for run in runs} and all_final(runs):
            break
        assert time.monotonic() < deadline, f"not all {len(accepted)} executions final after {DRAIN_BOUND} s"
        excess = max(excess, queued_messages(broker) - pending(ledger))
        time.sleep(0.5)
    times = sorted(answer.seconds * 1000 for answer in answers)
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99)]
    what = f"burst {RATE}/s x {SECONDS} s sent in {sent - started:.1f} s, request p50 {p50:.0f} ms p99 {p99:.0f} ms"
    recovery.record(f"{what}; drained after", time.monotonic() - sent, "no 5xx, 0 lost, 0 duplicated")
    assert len(runs) == RATE * SECONDS * SUBSCRIBERS
    assert_completed_once(runs, counter)
    assert excess <= 0, f"{excess} more messages queued than pending executions: a healthy backlog was republished"


def pending(ledger: Ledger) -> int:
    """Read before the queues: meanwhile workers only take messages away, so a healthy queue never holds more."""
    return ledger.count("status = 'pending'")


def queued_messages(client) -> int:
    keys = [key for lane in RUN_LANES for key in client.scan_iter(match=f"{lane}*")
            if key.decode() == lane or key.decode().startswith(lane + PRIORITY_SEPARATOR)]  # fmt: skip
    return sum(client.llen(key) for key in keys)
