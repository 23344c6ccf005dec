"""A bounded burst against gunicorn (issue 15, rows "burst"): every event accepted, no 5xx, every execution run
exactly once. Request times are measured and reported, not asserted (bench/events.py is the benchmark)."""

import statistics
import time

import pytest

from .checks import BURST, assert_completed_once, assert_no_web_problems, new_tag, wait_all_done

pytestmark = pytest.mark.e2e

RATE, SECONDS, SUBSCRIBERS = 20, 10, 2
DRAIN_BOUND = 150  # seconds for 400 one-step executions on 4 slots; generous for a loaded 2-core machine


def test_a_burst_of_events_is_accepted_and_each_execution_runs_exactly_once(stack, ledger, counter, web, recovery):
    tag = new_tag("burst")
    started = time.monotonic()
    answers = web.burst(BURST, tag, rate=RATE, seconds=SECONDS)
    sent = time.monotonic()

    refused = [answer for answer in answers if answer.status != 202]
    assert not refused, "\n".join(map(str, refused[:20]))
    assert_no_web_problems(web)
    assert len(web.accepted_ids(tag)) == RATE * SECONDS * SUBSCRIBERS
    runs = wait_all_done(ledger, web, tag, timeout=DRAIN_BOUND)
    times = sorted(answer.seconds * 1000 for answer in answers)
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99)]
    what = f"burst {RATE}/s x {SECONDS} s sent in {sent - started:.1f} s, request p50 {p50:.0f} ms p99 {p99:.0f} ms"
    recovery.record(f"{what}; drained after", time.monotonic() - sent, "no 5xx, 0 lost, 0 duplicated")
    assert len(runs) == RATE * SECONDS * SUBSCRIBERS
    assert_completed_once(runs, counter)
