"""Redis wiped, down, and full (issue 15, rows "Redis wiped / a trigger while Redis is down / Redis at maxmemory"
and "beat cannot publish"): what was lost is published again within a reaper cycle or so, callers are told the
truth, and a schedule's fire time that beat could not publish is caught up."""

import contextlib
import time
from datetime import UTC

import pytest

from .checks import (
    SLEEP,
    assert_completed_once,
    assert_no_web_problems,
    new_tag,
    next_minute,
    noted,
    says_pending,
    sleep_until,
    start,
    step_started_at,
    wait_all_done,
)
from .ledger import all_final
from .seed import MINUTELY

pytestmark = pytest.mark.e2e

SLOTS = 4
REPUBLISH_TARGET = 10  # seconds from Redis being usable again to the lost messages running
CATCH_UP_BOUND = 60  # seconds from the missed fire time to its execution (a grace of ~30 s, then a reaper cycle)
BALLAST = "faults:ballast"


def test_pending_executions_lost_with_a_wiped_redis_run_within_10_s(stack, ledger, counter, web, recovery):
    tag = new_tag("redis-wiped")
    start(web, tag, seconds=5, count=SLOTS)
    ledger.wait_running(tag, SLOTS)
    queued = set(start(web, tag, seconds=1, count=4))  # messages only in Redis: every slot is busy
    assert all(run.status == "pending" for run in ledger.tagged(tag) if run.id in queued)

    with web.outage():
        stack.redis.wipe_and_restart()
    back = time.time()

    runs = wait_all_done(ledger, web, tag, timeout=REPUBLISH_TARGET * 1.5 + 10)
    last_started = max(step_started_at(run) for run in runs if run.id in queued)
    recovery.record("Redis wiped -> lost messages running", last_started - back, f"~{REPUBLISH_TARGET} s")
    assert last_started - back <= REPUBLISH_TARGET * 1.5, "\n".join(map(str, runs))
    assert_completed_once(runs, counter)
    assert_no_web_problems(web)


def test_an_event_posted_while_redis_is_down_is_pending_and_runs_when_it_is_back(stack, ledger, counter, web, recovery):
    tag = new_tag("redis-down")
    stack.redis.shut_down()
    try:
        with web.outage():
            answer = web.post_event(SLEEP, {"fault": tag, "seconds": 1})
            time.sleep(2)
    finally:
        stack.redis.start()
    back = time.time()

    assert answer.status == 202 and says_pending(answer), answer
    [run] = wait_all_done(ledger, web, tag, timeout=REPUBLISH_TARGET * 1.5 + 5)
    recovery.record("event posted while Redis was down -> running after it was back", step_started_at(run) - back,
                    f"~{REPUBLISH_TARGET} s")  # fmt: skip
    assert step_started_at(run) - back <= REPUBLISH_TARGET * 1.5, run
    assert_completed_once([run], counter)
    assert_no_web_problems(web)


def test_at_maxmemory_callers_get_the_truth_and_a_missed_fire_time_is_caught_up(stack, ledger, counter, web, recovery):
    """Two rows in one test, since a fire time must pass while Redis refuses writes (up to a minute's wait): the API
    at maxmemory, and beat unable to publish a tick. Each part's failure is noted, so one does not hide the other."""
    tag, failures = new_tag("redis-full"), []
    package_id = stack.seeded["packages"][MINUTELY]
    stack.python("-m", "tests.faults.seed", "schedule", MINUTELY)
    fire_time = next_minute(after_seconds=8)  # after the schedule was set, with time to fill Redis before it
    try:
        with web.outage(), redis_full(stack.redis.client()):
            answer = web.post_event(SLEEP, {"fault": tag, "seconds": 1})
            sleep_until(fire_time)
            time.sleep(6)  # beat tried to publish the tick, and could not
        freed = time.time()

        with noted(failures):
            assert answer.status == 202 and says_pending(answer), answer
        with noted(failures):
            [run] = wait_all_done(ledger, web, tag, timeout=REPUBLISH_TARGET * 1.5 + 5)
            recovery.record("event posted at maxmemory -> running after memory was freed",
                            step_started_at(run) - freed, f"~{REPUBLISH_TARGET} s")  # fmt: skip
            assert step_started_at(run) - freed <= REPUBLISH_TARGET * 1.5, run
            assert_completed_once([run], counter)
        with noted(failures):
            key = f"schedule:{package_id}:{fire_time.astimezone(UTC).isoformat()}"
            remaining = CATCH_UP_BOUND - (time.time() - fire_time.timestamp())
            [caught_up] = ledger.wait(lambda: ledger.with_key(key), lambda runs: runs and runs[0].final, remaining,
                                      f"an execution for the missed fire time ({key}) finished")  # fmt: skip
            late = caught_up.created_at.timestamp() - fire_time.timestamp()
            assert caught_up.created_at.timestamp() > freed, f"beat published the tick at maxmemory: {caught_up}"
            recovery.record("missed fire time -> its execution created", late, "a grace, then the next reaper cycle")
            assert_completed_once([caught_up], counter)
    finally:
        stack.python("-m", "tests.faults.seed", "unschedule", MINUTELY)
    with noted(failures):  # nothing else that schedule started went missing either
        ledger.wait(lambda: ledger.of_package(package_id), all_final, 30, "every run of the schedule finished")
    with noted(failures):
        assert_no_web_problems(web)
    assert not failures, "\n\n".join(failures)


@contextlib.contextmanager
def redis_full(client):
    """Redis at maxmemory (noeviction): 16 MiB of values, then maxmemory below what is used, so every write that
    needs memory is refused; on leaving, the values are deleted (memory freed) and the limit lifted. The values go
    in small writes: one large write's query buffer counts in `used_memory` until Redis frees it a moment later."""
    ballast = [f"{BALLAST}:{n}" for n in range(64)]
    for key in ballast:
        client.set(key, b"x" * (256 * 1024))
    client.config_set("maxmemory", client.info("memory")["used_memory"] - 8 * 1024 * 1024)
    try:
        yield
    finally:
        client.delete(*ballast)
        client.config_set("maxmemory", 0)
