"""Publishing executions to a real Redis, the markers that say what is queued, and what the reaper publishes again.

The shared test Redis (REDIS_URL, flushed per test) stands for a healthy broker; a full or wiped broker is a
private redis-server of the test's own (tests/redis_server.py). No worker runs here: tests/e2e/test_broker_loss.py
has the whole path with one.
"""

import time
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from executions.models import ApiKey, Execution, ExecutionStatus, TriggerType
from executions.queueing import MARKER_PREFIX, NOT_QUEUED_REASON, enqueue, enqueue_many
from executions.services import trigger_execution
from executor_project import publishing
from executor_project.celery import app
from packages.models import EventType
from tests.factories import make_package
from tests.redis_server import broker_of_this_process, fill, make_room, private_redis
from workers import runner
from workers.reaper import reap

pytestmark = pytest.mark.django_db

PASSWORD = "s3cret-broker-password"


@pytest.fixture
def broker():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def full_broker(tmp_path):
    """A private Redis with a password, at maxmemory with noeviction, that this process publishes to."""
    with private_redis(tmp_path, password=PASSWORD) as url, broker_of_this_process(url):
        fill(url)
        yield url


def pending(count: int, package=None) -> list[Execution]:
    """Pending executions, created (not published) a minute ago: old enough for the reaper to judge."""
    package = package or make_package(files={"main.py": ""})
    executions = Execution.objects.bulk_create(
        Execution(package=package, trigger_type=TriggerType.MANUAL, correlation_id=f"c{number}")
        for number in range(count)
    )
    created = timezone.now() - timedelta(minutes=1)  # auto_now_add ignores a value given to create
    Execution.objects.filter(pk__in=[e.pk for e in executions]).update(created_at=created)
    return executions


def age(executions: list[Execution], seconds: float) -> None:
    """As if these were published `seconds` ago."""
    Execution.objects.filter(pk__in=[e.pk for e in executions]).update(
        enqueued_at=timezone.now() - timedelta(seconds=seconds)
    )


def queued_messages(client) -> int:
    return sum(client.llen(lane) for lane in ("priority", "default", "slow", "scheduled"))


def test_enqueue_many_publishes_every_execution_and_marks_it_queued(broker):
    executions = pending(3)

    assert enqueue_many(executions) == 3

    assert broker.llen("default") == 3
    for execution in executions:
        assert 0 < broker.ttl(MARKER_PREFIX + str(execution.id)) <= 7 * 24 * 3600
        assert execution.queued is True
    assert Execution.objects.filter(enqueued_at__isnull=False).count() == 3


def test_an_events_runs_stamped_at_their_insert_are_published_without_a_query(broker, django_assert_num_queries):
    executions = pending(2)
    age(executions, seconds=0)  # what executions/events.py inserts: enqueued_at set with the row

    with django_assert_num_queries(0):  # the messages and their markers: one Redis transaction, no UPDATE
        assert enqueue_many(executions, stamped=True) == 2

    assert broker.llen("default") == 2
    assert broker.exists(*(MARKER_PREFIX + str(execution.id) for execution in executions)) == 2
    assert [execution.queued for execution in executions] == [True, True]


def test_an_events_run_stamped_but_never_published_is_published_by_the_next_reap(broker):
    [execution] = pending(1)
    age([execution], seconds=10)  # inserted with enqueued_at by an event; its process died before the publish

    assert reap().republished == 1  # no marker, so no message: the MULTI/EXEC writes both or neither

    assert broker.llen("default") == 1 and broker.exists(MARKER_PREFIX + str(execution.id))


def test_the_broker_client_is_built_once_per_connection(broker):
    with publishing.broker_client() as first:
        pass
    with publishing.broker_client() as second:  # the same pooled producer, so the same channel
        pass

    assert first is second


def test_a_healthy_backlog_is_never_published_again(broker, settings):
    settings.EXECUTOR_REPUBLISH_AFTER_SECONDS = 30
    backlog = pending(3000)
    for start in range(0, len(backlog), 1000):
        assert enqueue_many(backlog[start : start + 1000]) == 1000
    age(backlog, seconds=3600)  # queued an hour ago, still waiting for a free slot

    assert reap().republished == 0
    assert reap().republished == 0

    assert broker.llen("default") == 3000


def test_a_wiped_broker_has_every_pending_execution_published_again_by_one_reap(broker, settings):
    settings.EXECUTOR_REPUBLISH_AFTER_SECONDS = 300  # seen at once, not after this
    executions = pending(50)
    enqueue_many(executions)
    age(executions, seconds=10)
    broker.flushdb()  # what a Redis restarted without its data looks like: no queues, no markers

    assert reap().republished == 50

    assert broker.llen("default") == 50
    assert reap().republished == 0  # marked again: published once, not every cycle


def test_a_claimed_execution_loses_its_marker_and_is_left_alone(broker, settings):
    package = make_package(files={"config.json": "{}"})  # no step to run: the claim is the point
    execution = pending(1, package)[0]
    enqueue(execution)
    age([execution], seconds=60)

    runner.run_execution(str(execution.id), worker_name="test-worker")

    assert not broker.exists(MARKER_PREFIX + str(execution.id))
    assert Execution.objects.get(pk=execution.pk).status != ExecutionStatus.PENDING
    assert reap().republished == 0


def test_an_execution_never_published_is_published_after_a_few_seconds_not_before(broker):
    old = pending(1)[0]  # its web process died between the commit and the publish
    fresh = trigger_execution(make_package("fresh", files={"main.py": ""}), trigger_type=TriggerType.MANUAL)
    assert fresh.enqueued_at is None  # on_commit never ran in this test's transaction: not published yet

    assert reap().republished == 1

    assert Execution.objects.get(pk=old.pk).enqueued_at is not None
    assert Execution.objects.get(pk=fresh.pk).enqueued_at is None
    assert broker.llen("default") == 1


def test_a_message_a_dead_worker_reserved_and_never_started_is_published_again(broker, settings):
    settings.EXECUTOR_REPUBLISH_AFTER_SECONDS = 300
    execution = pending(1)[0]
    enqueue(execution)
    age([execution], seconds=301)
    with app.connection_for_write() as connection:
        channel = connection.channel()
        message = channel.basic_get("default", no_ack=False)  # kombu's own reservation, as a worker's prefetch
        assert str(execution.id) in message.headers["argsrepr"]
        assert (broker.llen("default"), broker.hlen("unacked")) == (0, 1)

        assert reap().republished == 0  # reserved just now: a live worker starts it any moment

        broker.zadd("unacked_index", {message.delivery_tag: time.time() - 301})  # its worker died 301 s ago
        assert reap().republished == 1

        assert (broker.llen("default"), broker.hlen("unacked"), broker.zcard("unacked_index")) == (1, 0, 0)
        assert reap().republished == 0  # once: the stale reservation is gone, the new message is marked


@pytest.mark.django_db(transaction=True)  # committed as in production: published at once
def test_a_full_broker_is_reported_and_the_run_published_once_there_is_room(full_broker, client, caplog):
    package = make_package("alice_orders", files={"main.py": ""})
    package.trigger_event_types.add(EventType.objects.create(name="sales.order_created"))
    key = ApiKey.issue("tests")[1]

    started = time.monotonic()
    response = client.post(
        "/fx/events",
        {"event_type": "sales.order_created", "event_source": "shop", "payload": {}},
        content_type="application/json",
        headers={"X-API-KEY": key},
    )
    answered_in = time.monotonic() - started

    assert response.status_code == 202, response.content
    assert answered_in < 5  # the feature: a refused publish answers at once instead of hanging
    [run] = response.json()["runs"]
    execution = Execution.objects.get(pk=run["execution_id"])
    assert run == {"execution_id": str(execution.id), "status": "pending", "queued": False, "reason": NOT_QUEUED_REASON}
    assert response.json()["statusReason"].endswith(
        "; 1 of 1 recorded but not queued yet (queued as soon as the broker is back)"
    )
    assert (execution.status, execution.enqueued_at) == (ExecutionStatus.PENDING, None)  # stamped, then cleared
    assert not redis.Redis.from_url(full_broker).exists(MARKER_PREFIX + str(execution.id))  # all or nothing
    assert "could not publish to the broker" in caplog.text and PASSWORD not in caplog.text
    assert reap().republished == 0  # still full

    make_room(full_broker)
    Execution.objects.filter(pk=execution.pk).update(created_at=timezone.now() - timedelta(seconds=10))

    assert reap().republished == 1
    full = redis.Redis.from_url(full_broker)
    assert full.llen("default") == 1 and full.exists(MARKER_PREFIX + str(execution.id))
    assert Execution.objects.get(pk=execution.pk).enqueued_at is not None


@pytest.mark.django_db(transaction=True)  # committed as in production: published at once
def test_the_admin_says_recorded_not_started_when_the_broker_is_full(full_broker, admin_client):
    package = make_package("alice_orders", files={"main.py": ""})

    response = admin_client.post(reverse("admin:packages_package_run", args=[package.pk]), follow=True)

    [message] = list(response.context["messages"])
    execution = Execution.objects.get()
    assert message.level_tag == "warning"
    assert str(message) == (
        f"Execution {execution.short_id} of {package.name} recorded, queued as soon as the broker is back."
    )

    response = admin_client.post(reverse("admin:executions_execution_rerun", args=[execution.pk]), follow=True)

    [message] = list(response.context["messages"])
    rerun = Execution.objects.get(rerun_of=execution)
    assert (message.level_tag, str(message)) == (
        "warning",
        f"Execution {rerun.short_id} recorded, queued as soon as the broker is back: a re-run of {execution.short_id}.",
    )


@pytest.mark.django_db(transaction=True)  # committed as in production: published at once
def test_run_package_says_recorded_without_a_traceback_when_the_broker_is_full(full_broker, capsys):
    make_package("alice_orders", files={"main.py": ""})

    call_command("run_package", "alice_orders")

    out, err = capsys.readouterr()
    execution = Execution.objects.get()
    assert out.strip() == str(execution.id)
    assert err.strip() == f"Execution {execution.id} recorded, queued as soon as the broker is back."
    assert execution.status == ExecutionStatus.PENDING


def test_an_unreachable_broker_answers_at_once(tmp_path):
    with private_redis(tmp_path) as url:
        pass  # stopped: nothing listens on its port any more
    with broker_of_this_process(url):
        executions = pending(2)
        started = time.monotonic()
        assert enqueue_many(executions) == 0
        assert time.monotonic() - started < 5
    assert [e.queued for e in executions] == [False, False]
