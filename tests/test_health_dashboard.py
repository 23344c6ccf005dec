"""The dashboard's health part (executions/dashboard.py): lanes whose oldest pending run waits too long (for every
viewer, counted in their own projects only), and the workers and beat (superusers only), from PostgreSQL and the
real test Redis."""

import json
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from executions import dashboard
from executions.models import Execution, ExecutionStatus, TriggerType
from executions.queueing import lane_for
from executions.services import trigger_execution
from executor_project import liveness
from packages.models import Project
from tests.executions.test_api_errors import closed_port
from tests.factories import make_member, make_package, make_staff

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]


@pytest.fixture(autouse=True)
def entries():
    test_redis = liveness.client()
    test_redis.delete(liveness.KEY)
    yield test_redis
    test_redis.delete(liveness.KEY)


def pending(package, minutes_ago: float, trigger_type=TriggerType.MANUAL) -> Execution:
    execution = trigger_execution(package, trigger_type=trigger_type)
    Execution.objects.filter(pk=execution.pk).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return execution


def put(name: str, age: float, **facts) -> None:
    entry = {"name": name, "at": time.time() - age, **facts}
    liveness.client().hset(liveness.KEY, name, json.dumps(entry))


def index_as(user) -> str:
    client = Client()
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_lane_of_the_query_is_the_lane_a_run_is_published_to():
    packages = [make_package(f"p{priority}", {"a.py": ""}, priority=priority) for priority in range(1, 11)]
    for package in packages:
        for trigger_type in (TriggerType.MANUAL, TriggerType.SCHEDULED, TriggerType.TRIGGERED):
            trigger_execution(package, trigger_type=trigger_type)

    rows = Execution.objects.annotate(lane=dashboard.LANE).select_related("package")

    assert len(rows) == 30
    assert all(row.lane == lane_for(row) for row in rows)


def test_a_lane_whose_oldest_pending_run_waited_too_long_is_warned_about(admin_user, settings):
    settings.EXECUTOR_LANE_WAIT_WARNING_SECONDS = 300
    package = make_package("alice_nightly", {"a.py": ""})
    pending(package, minutes_ago=12)
    pending(package, minutes_ago=1)
    pending(make_package("bob_urgent", {"a.py": ""}, priority=1), minutes_ago=2)

    page = index_as(admin_user)

    assert "Lane default: its oldest pending execution has waited 12 min (more than 5 min; 2 pending)." in page
    assert "Lane priority:" not in page  # 2 min: within the limit, listed without a warning
    assert "oldest waiting 2 min" in page and "oldest waiting 12 min" in page


def test_a_member_sees_the_waits_of_their_own_projects_only_and_no_processes(admin_user):
    mine, theirs = Project.objects.create(name="Alice's"), Project.objects.create(name="Bob's")
    pending(make_package("alice_pkg", {"a.py": ""}, project=mine), minutes_ago=20)
    pending(make_package("bob_pkg", {"a.py": ""}, project=theirs, priority=9), minutes_ago=40)
    alice = make_staff("alice")
    make_member(alice, mine, "viewer")
    put("worker@secret-host", age=1, kind="worker", lanes=["default"], slots=2, running=1)

    page = index_as(alice)

    assert "Lane default: its oldest pending execution has waited 20 min" in page
    assert "Lane slow" not in page and "slow</td>" not in page  # Bob's project's lane: not even its count
    assert "Workers and beat" not in page and "secret-host" not in page  # the platform's
    assert "Workers and beat" in index_as(admin_user)


def test_superusers_see_every_worker_and_beat_with_their_health(admin_user, settings):
    settings.EXECUTOR_HEALTH_STALE_SECONDS = 30
    put("worker@alice-host", age=2, kind="worker", pool="prefork", lanes=["default", "slow"], slots=2, running=1,
        loop_at=time.time() - 1)  # fmt: skip
    put("worker@dead-host", age=400, kind="worker", lanes=["priority"], slots=4, running=0)
    put("beat@alice-host", age=3, kind="beat")

    processes = dashboard.processes()
    page = index_as(admin_user)

    assert [(p.name, p.slots, p.running, p.problem is None) for p in processes] == [
        ("worker@alice-host", 2, 1, True),
        ("worker@dead-host", 4, 0, False),
        ("beat@alice-host", None, None, True),
    ]
    assert "<td>default, slow</td>" in page and "last tick 3 s ago" in page
    assert "worker@dead-host: last heartbeat 400 s ago (limit 30 s)" in page  # the warning on top
    assert page.count('executor-badge executor-failed">unhealthy') == 1


def test_the_dashboard_still_renders_when_redis_cannot_be_read(admin_user, settings):
    settings.CELERY_BROKER_URL = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"

    page = index_as(admin_user)

    assert "Redis cannot be read: the health of workers and beat is unknown." in page
    assert "s3cret" not in page


def test_the_lane_waits_take_one_query(admin_user, django_assert_num_queries):
    pending(make_package("alice_pkg", {"a.py": ""}), minutes_ago=3)

    with django_assert_num_queries(1):
        waits = dashboard.lane_waits(admin_user)

    assert [(wait.lane, wait.pending, wait.too_long) for wait in waits] == [("default", 1, False)]


def test_a_pending_execution_of_a_status_other_than_pending_is_not_waiting(admin_user):
    execution = pending(make_package("alice_pkg", {"a.py": ""}), minutes_ago=30)
    Execution.objects.filter(pk=execution.pk).update(status=ExecutionStatus.IN_PROGRESS)

    assert dashboard.lane_waits(admin_user) == []
