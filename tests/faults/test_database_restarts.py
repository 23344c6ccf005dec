"""PostgreSQL restarted under running steps and queued messages (issue 15, row "PostgreSQL restart"): running steps
survive the blink, messages are not consumed while the database is down, and the web answers 503 (JSON from the
API), never an HTML 500."""

import time

import pytest

from .checks import assert_completed_once, assert_no_web_problems, new_tag, noted, start, wait_all_done

pytestmark = pytest.mark.e2e

SLOTS = 4  # two workers, two slots each
DRAIN_BOUND = 40  # seconds after the database is back until every run has finished


@pytest.mark.parametrize(
    "mode, down_seconds",
    [("fast", 0), ("immediate", 15)],
    ids=["fast-restart", "immediate-stop-for-15s"],
)
def test_running_steps_and_queued_messages_survive_a_database_restart(
    stack, ledger, counter, web, recovery, mode, down_seconds
):
    tag = new_tag(f"db-{mode}")
    # Every slot busy with a step that ends while the database is down (or just after a fast restart), and
    # messages queued behind them, which must not be taken and acked away meanwhile.
    [first, *_] = start(web, tag, seconds=4, count=SLOTS)
    ledger.wait_running(tag, SLOTS)
    start(web, tag, seconds=1, count=6)

    with web.asking_meanwhile(tag, first):
        if down_seconds:
            stack.pg.stop("immediate")
            time.sleep(down_seconds)
            stack.pg.start()
        else:
            stack.pg.restart("fast")
        time.sleep(1)  # a last round of requests against the database that just came back
    back = time.monotonic()

    failures = []
    with noted(failures):
        runs = wait_all_done(ledger, web, tag, timeout=DRAIN_BOUND)
        recovery.record(f"database {mode} restart (down {down_seconds} s): all runs finished after it was back",
                        time.monotonic() - back, "all complete")  # fmt: skip
        assert_completed_once(runs, counter)
    with noted(failures):
        assert_no_web_problems(web)
    assert not failures, "\n\n".join(failures)
