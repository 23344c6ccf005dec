"""`manage.py check_health web|worker|beat` (executions/management/commands/check_health.py): exit status and one
line, from liveness entries in the real test Redis (written as workers and beat write them) and a real web server.
tests/e2e/test_health.py runs it against real workers and beat."""

import io
import json
import time

import pytest
from django.core.management import call_command

from executor_project import liveness
from tests.executions.test_api_errors import closed_port

PASSWORD = "s3cret-redis-password"
WORKER = "worker@alice-host"
BEAT = "beat@alice-host"


@pytest.fixture(autouse=True)
def entries():
    """The liveness hash, empty before and after each test (in the test Redis, whatever the test points at)."""
    test_redis = liveness.client()
    test_redis.delete(liveness.KEY)
    yield
    test_redis.delete(liveness.KEY)


def put(name: str, age: float = 1, **facts) -> None:
    """An entry as the process writes it, last written `age` seconds ago."""
    kind = "beat" if name.startswith("beat@") else "worker"
    entry = {"kind": kind, "name": name, "at": time.time() - age, **facts}
    if kind == "worker":
        entry = {"pool": "prefork", "lanes": ["default"], "slots": 2, "running": 0, "active": 0,
                 "loop_at": time.time() - 1, "starving_since": None, **entry}  # fmt: skip
    liveness.client().hset(liveness.KEY, name, json.dumps(entry))


def check(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("check_health", *args, stdout=out, stderr=err)
    except SystemExit as exit:
        return exit.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_a_worker_with_a_recent_heartbeat_and_a_turning_loop_is_healthy():
    put(WORKER)

    assert check("worker", "--name", WORKER) == (0, f"{WORKER}: healthy\n", "")


def test_a_worker_silent_for_longer_than_the_limit_is_unhealthy(settings):
    settings.EXECUTOR_HEALTH_STALE_SECONDS = 30
    put(WORKER, age=45)

    assert check("worker", "--name", WORKER) == (1, "", f"{WORKER}: last heartbeat 45 s ago (limit 30 s)\n")


def test_a_worker_whose_event_loop_stopped_turning_is_unhealthy_though_its_heartbeat_is_fresh():
    put(WORKER, loop_at=time.time() - 40)

    code, _, err = check("worker", "--name", WORKER)

    assert (code, err) == (1, f"{WORKER}: its consumer's event loop has not turned for 40 s\n")


def test_a_solo_worker_running_a_task_in_its_loop_is_not_taken_for_stuck():
    put(WORKER, pool="solo", slots=1, running=1, active=1, loop_at=time.time() - 40)

    assert check("worker", "--name", WORKER)[0] == 0


def test_a_worker_that_leaves_messages_waiting_beside_a_free_slot_is_unhealthy():
    put(WORKER, waiting={"default": 3, "slow": 0}, starving_since=time.time() - 35)

    code, _, err = check("worker", "--name", WORKER)

    assert code == 1
    assert err == f"{WORKER}: took no message for 35 s while its lanes held 3 waiting and it had a free slot\n"


def test_starving_for_less_than_the_limit_is_not_yet_a_failure():
    put(WORKER, waiting={"default": 3}, starving_since=time.time() - 5)

    assert check("worker", "--name", WORKER)[0] == 0


def test_a_worker_nobody_has_heard_of_is_unhealthy():
    put(BEAT)  # a beat of that host does not stand in for a worker

    code, _, err = check("worker", "--name", "worker@nobody")

    assert code == 1
    assert err == "worker@nobody: no worker of that name has recorded its liveness (not started, stopped, or renamed)\n"


def test_without_a_name_one_healthy_worker_is_enough_and_dead_ones_do_not_count():
    put("worker@dead-host", age=600)
    assert check("worker")[:2] == (1, "")
    put(WORKER)
    assert check("worker") == (0, "worker: healthy\n", "")


def test_without_any_entry_the_check_says_so():
    assert check("beat") == (1, "", "no beat has recorded its liveness\n")


def test_beat_is_judged_by_its_last_tick(settings):
    settings.EXECUTOR_HEALTH_STALE_SECONDS = 30
    put(BEAT, age=2)
    assert check("beat", "--name", BEAT) == (0, f"{BEAT}: healthy\n", "")
    put(BEAT, age=90)
    assert check("beat", "--name", BEAT) == (1, "", f"{BEAT}: last tick 90 s ago (limit 30 s)\n")
    assert check("beat", "--name", BEAT, "--stale", "120")[0] == 0


def test_an_unreachable_redis_is_a_failure_in_one_line_without_the_password(settings):
    settings.CELERY_BROKER_URL = f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"

    code, out, err = check("worker", "--name", WORKER)

    assert (code, out) == (1, "")
    assert err == "cannot read the liveness entries from Redis (ConnectionError)\n"


def test_a_garbled_entry_is_ignored_not_a_crash():
    liveness.client().hset(liveness.KEY, WORKER, b"\xff not json")

    assert check("worker", "--name", WORKER)[0] == 1


# --- web: GET /readyz of a real server --------------------------------------------------------------------------


def test_a_ready_web_process_is_healthy_and_one_whose_redis_is_down_is_not(live_server, settings):
    url = f"{live_server.url}/readyz"
    assert check("web", "--url", url) == (0, f"web: ready ({url})\n", "")

    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port()}/0"  # the server's thread reads it too

    assert check("web", "--url", url) == (1, "", f"web: 503 from {url} (redis unreachable)\n")


def test_a_web_process_that_does_not_answer_is_unhealthy():
    url = f"http://127.0.0.1:{closed_port()}/readyz"

    code, _, err = check("web", "--url", url, "--timeout", "2")

    assert (code, err) == (1, f"web: no answer from {url} ([Errno 111] Connection refused)\n")
