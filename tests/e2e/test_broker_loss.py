"""A broker that loses its data or refuses writes: one reap publishes again exactly what was lost, and a real worker
runs each execution exactly once. The broker is a private redis-server on a free port (no persistence, as a Redis
without AOF), restarted or filled by the test; the worker and this process both publish to it."""

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.utils import timezone

from executions.models import ApiKey, Execution, ExecutionStatus, TriggerType
from executions.queueing import MARKER_PREFIX
from executions.services import trigger_execution
from packages.models import EventType
from tests.e2e.processes import worker_process
from tests.e2e.runs import counting_script, run_count
from tests.factories import make_package
from tests.redis_server import broker_of_this_process, fill, make_room, private_redis
from workers.reaper import reap

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def counting_package(name: str, key: str):
    """Each run of its step adds one to `key` in the test Redis, outside the broker being broken."""
    return make_package(name, {"count.py": counting_script(key)}, network_access=True)


def time_ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def wait_all_finished(executions: list[Execution], worker, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    ids = [execution.pk for execution in executions]
    while Execution.objects.filter(pk__in=ids, status__in=[ExecutionStatus.PENDING, ExecutionStatus.IN_PROGRESS]):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)


def test_a_redis_restarted_without_its_data_loses_no_run(tmp_path: Path):
    key = f"wiped-{uuid.uuid4().hex}"
    with private_redis(tmp_path) as url, broker_of_this_process(url):
        package = counting_package("ivy_wiped", key)
        executions = [trigger_execution(package, trigger_type=TriggerType.MANUAL) for _ in range(6)]
        broker = redis.Redis.from_url(url)
        assert broker.llen("default") == 6 and all(execution.queued for execution in executions)

        broker.flushall()  # the restart without AOF: queues and markers gone, the executions still pending
        Execution.objects.filter(pk__in=[e.pk for e in executions]).update(
            created_at=time_ago(10), enqueued_at=time_ago(10)
        )
        assert reap().republished == 6  # one reap cycle
        assert reap().republished == 0

        with worker_process(tmp_path / "worker.log", env={"REDIS_URL": url}) as worker:
            wait_all_finished(executions, worker)
        assert broker.keys(f"{MARKER_PREFIX}*") == []  # each claim cleared its execution's marker

    assert (
        sorted(Execution.objects.filter(pk__in=[e.pk for e in executions]).values_list("status", flat=True))
        == [ExecutionStatus.COMPLETED] * 6
    )
    assert run_count(key) == 6  # each exactly once: six messages reached the worker, no duplicate ran


def test_an_event_sent_while_redis_is_full_runs_once_there_is_room(tmp_path: Path, client):
    key = f"full-{uuid.uuid4().hex}"
    with private_redis(tmp_path) as url, broker_of_this_process(url):
        package = counting_package("ivy_full", key)
        package.trigger_event_types.add(EventType.objects.create(name="sales.order_created"))
        with worker_process(tmp_path / "worker.log", env={"REDIS_URL": url}) as worker:
            fill(url)
            response = client.post(
                "/fx/events",
                {"event_type": "sales.order_created", "event_source": "shop", "payload": {}},
                content_type="application/json",
                headers={"X-API-KEY": ApiKey.issue("tests")[1]},
            )
            assert response.status_code == 202, response.content
            [run] = response.json()["runs"]
            assert (run["status"], run["queued"]) == ("pending", False)
            execution = Execution.objects.get(pk=run["execution_id"])

            make_room(url)
            Execution.objects.filter(pk=execution.pk).update(created_at=time_ago(10))
            assert reap().republished == 1

            wait_all_finished([execution], worker)

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED
    assert run_count(key) == 1
