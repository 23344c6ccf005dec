"""A database blink inside a worker, in one process: every query of the worker's connection fails as when
PostgreSQL restarts (Django's execute_wrapper), while a test thread decides when the database is back.
tests/e2e/test_database_blink.py does it for real, through a proxy that drops a real worker's connections."""

import threading
import time
import uuid

import pytest
from celery.exceptions import Reject
from django.db import OperationalError, connection

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from executions.tasks import scheduled_tick
from tests.factories import make_package
from workers import lease as lease_module
from workers import runner, tasks
from workers.lease import ExecutionWatch, LeaseLost, claim

# The connection is closed after each failure: only transactions of their own let the code do that.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_broker")]


class Blink:
    """Installed with connection.execute_wrapper(): while `down`, every query fails as in a PostgreSQL restart."""

    def __init__(self, down: bool = False) -> None:
        self.down, self.failed = down, 0

    def __call__(self, execute, sql, params, many, context):
        if self.down:
            self.failed += 1
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    def up_after(self, seconds: float) -> None:
        threading.Timer(seconds, lambda: setattr(self, "down", False)).start()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr("executor_project.database.BACKOFF_SECONDS", (0.05, 0.1, 0.2))
    monkeypatch.setattr("executor_project.database.MAX_BACKOFF_SECONDS", 0.2)


def claimed(files=None, **package_fields):
    package = make_package(files=files or {"a.py": ""}, **package_fields)
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    return execution, claim(str(execution.id), "test-worker")


def test_the_ledger_writes_wait_for_the_database_and_then_land():
    execution, lease = claimed()
    step = execution.steps.get()
    blink = Blink(down=True)
    blink.up_after(0.5)
    with connection.execute_wrapper(blink):
        lease.update_step(step.id, status=StepStatus.COMPLETED, exit_code=0)
        lease.update_execution(status=ExecutionStatus.COMPLETED)
    assert blink.failed >= 2
    assert execution.steps.get().status == StepStatus.COMPLETED
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED


def test_a_lost_lease_is_still_lost_at_once():
    execution, lease = claimed()
    Execution.objects.filter(pk=execution.pk).update(lease_owner="someone-else")
    with pytest.raises(LeaseLost):
        lease.update_step(execution.steps.get().id, status=StepStatus.COMPLETED)
    with pytest.raises(LeaseLost):
        lease.update_execution(status=ExecutionStatus.COMPLETED)


def test_the_watch_lets_the_step_go_on_while_the_database_is_away_and_stops_it_after_the_bound(settings, monkeypatch):
    monkeypatch.setattr(lease_module, "CANCEL_POLL_SECONDS", 0.05)
    settings.EXECUTOR_DATABASE_OUTAGE_SECONDS = 1
    _, lease = claimed()
    watch = ExecutionWatch(lease)
    blink = Blink(down=True)
    with connection.execute_wrapper(blink):
        started = time.monotonic()
        while not watch.stop.is_set():
            watch.tick()  # never raises: the step goes on
            assert time.monotonic() - started < 5
            time.sleep(0.02)
    assert watch.database_down and time.monotonic() - started >= 1
    assert (watch.stop_reason, watch.database_reason) == ("database", "failed: the database was unreachable for 1 s")


def test_the_watch_notices_the_database_is_back(settings, monkeypatch):
    monkeypatch.setattr(lease_module, "CANCEL_POLL_SECONDS", 0.0)
    _, lease = claimed()
    watch = ExecutionWatch(lease)
    with connection.execute_wrapper(Blink(down=True)):
        watch.tick()
    assert watch.database_down
    watch.tick()
    assert not watch.database_down and not watch.stop.is_set()


def step_running(execution) -> bool:
    return Execution.objects.filter(pk=execution.pk, steps__status=StepStatus.RUNNING).exists()


def blink_while_running(execution, blink: Blink, seconds: float) -> threading.Thread:
    """From another connection: once the step runs, take the runner's database away for `seconds`."""

    def go():
        try:
            while not step_running(execution):
                time.sleep(0.05)
            blink.down = True
            time.sleep(seconds)
            blink.down = False
        finally:
            connection.close()

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_a_step_survives_a_blink_and_its_output_is_whole(settings):
    package = make_package(files={"slow.py": "import time\nprint('before', flush=True)\ntime.sleep(3)\nprint('after')"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    blink = Blink()
    thread = blink_while_running(execution, blink, 1.5)
    with connection.execute_wrapper(blink):
        runner.run_execution(str(execution.id), worker_name="test-worker")
    thread.join()

    assert blink.failed > 0  # the watch and the live output met the outage
    execution.refresh_from_db()
    step = execution.steps.get()
    assert (execution.status, step.status) == (ExecutionStatus.COMPLETED, StepStatus.COMPLETED)
    assert step.stdout == "before\nafter\n"


def test_a_longer_outage_fails_the_run_saying_the_database_was_unreachable(settings):
    settings.EXECUTOR_DATABASE_OUTAGE_SECONDS = 1
    package = make_package(files={"slow.py": "import time; time.sleep(30)", "next.py": "print('never')"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    blink = Blink()
    thread = blink_while_running(execution, blink, 3)
    started = time.monotonic()
    with connection.execute_wrapper(blink):
        runner.run_execution(str(execution.id), worker_name="test-worker")
    thread.join()

    assert time.monotonic() - started < 20  # the 30 s step was stopped
    execution.refresh_from_db()
    reason = "failed: the database was unreachable for 1 s"
    assert (execution.status, execution.status_reason) == (ExecutionStatus.FAILED, reason)
    assert list(execution.steps.order_by("position").values_list("status", "status_reason")) == [
        (StepStatus.FAILED, reason),
        (StepStatus.SKIPPED, "skipped: the database was unreachable"),
    ]


def test_a_claim_waits_for_the_database(settings):
    settings.EXECUTOR_DATABASE_WAIT_SECONDS = 10
    execution = trigger_execution(make_package(files={"a.py": "print(1)"}), trigger_type=TriggerType.MANUAL)
    blink = Blink(down=True)
    blink.up_after(0.5)
    with connection.execute_wrapper(blink):
        tasks.run_execution.run(str(execution.id))
    assert blink.failed > 0
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED


def test_a_claim_that_cannot_reach_the_database_hands_its_message_back(settings):
    settings.EXECUTOR_DATABASE_WAIT_SECONDS = 1
    execution = trigger_execution(make_package(files={"a.py": ""}), trigger_type=TriggerType.MANUAL)
    started = time.monotonic()
    with connection.execute_wrapper(Blink(down=True)), pytest.raises(Reject) as rejected:
        tasks.run_execution.run(str(execution.id))
    assert rejected.value.requeue is True
    assert 0.5 <= time.monotonic() - started < 5  # it held the message for the wait, not a hot loop
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.PENDING


def test_a_claim_whose_reply_was_lost_is_recognised_as_this_worker_s(settings):
    execution = trigger_execution(make_package(files={"a.py": ""}), trigger_type=TriggerType.MANUAL)
    token = lease_module.new_token()
    assert claim(str(execution.id), "test-worker", token) is not None
    again = claim(str(execution.id), "test-worker", token)  # the retry after the lost reply
    assert again is not None and again.token == token
    assert claim(str(execution.id), "test-worker") is None  # anyone else's claim still fails


def test_a_schedule_tick_that_cannot_reach_the_database_hands_its_message_back(settings):
    settings.EXECUTOR_DATABASE_WAIT_SECONDS = 1
    with connection.execute_wrapper(Blink(down=True)), pytest.raises(Reject) as rejected:
        scheduled_tick.run(12345)
    assert rejected.value.requeue is True


def test_the_reaper_task_skips_a_period_quietly_when_the_database_is_away(caplog):
    with connection.execute_wrapper(Blink(down=True)):
        tasks.reap.run()
    assert "reaper: the database is unreachable" in caplog.text


def test_a_malformed_id_is_still_dropped():
    tasks.run_execution.run("not-a-uuid")
    tasks.run_execution.run(str(uuid.uuid4()))  # a well-formed id of nothing: not pending, nothing to do


class BlinkAtState(Blink):
    """Takes the database away as the runner reads the package's state: after the step was marked running, before
    its script starts (workers/fx_bridge.py, begin_step)."""

    def __call__(self, execute, sql, params, many, context):
        if not self.failed and "packages_packagestate" in sql:
            self.down = True
            self.up_after(0.5)
        return super().__call__(execute, sql, params, many, context)


def test_a_blink_as_the_step_starts_is_waited_out():
    package = make_package(files={"a.py": "print('ran')"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    blink = BlinkAtState()
    with connection.execute_wrapper(blink):
        runner.run_execution(str(execution.id), worker_name="test-worker")

    assert blink.failed > 0
    execution.refresh_from_db()
    assert (execution.status, execution.steps.get().stdout) == (ExecutionStatus.COMPLETED, "ran\n")
