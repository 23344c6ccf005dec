"""/metrics (executor_project/metrics_view.py) and what the apps record in executor_project/metrics.py, against
the test PostgreSQL and Redis; the metrics directory is the one every process of the test run shares.

Counters only grow and the directory outlives a test, so each test compares a scrape before and after."""

import os
import socket
import time

import pytest

from executions import transitions
from executions.events import IncomingEvent, dispatch
from executions.models import ExecutionStatus, TriggerType
from executions.services import trigger_execution
from executor_project import metrics
from packages.models import Project
from tests.factories import make_package
from tests.metrics_scrape import Scrape

pytestmark = pytest.mark.django_db


@pytest.fixture
def scrape(client):
    def scrape() -> Scrape:
        response = client.get("/metrics")
        assert response.status_code == 200, response.content
        return Scrape.parse(response.content.decode())

    return scrape


@pytest.fixture
def fresh_samples(settings):
    """Samplers run at every scrape, not once per EXECUTOR_METRICS_SAMPLE_SECONDS."""
    settings.EXECUTOR_METRICS_SAMPLE_SECONDS = 0


# --- The endpoint -------------------------------------------------------------------------------------------------


def test_it_answers_in_prometheus_text_format_without_a_token_when_none_is_set(client, settings, fresh_samples):
    settings.EXECUTOR_METRICS_TOKEN = ""

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE executor_queue_depth gauge" in response.content.decode()


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong-token", "Basic czNjcmV0LXRva2Vu", "s3cret-token", "Bearer s3cret-token-and-more"],
)
def test_with_a_token_set_anything_but_that_bearer_token_is_401(client, settings, authorization):
    settings.EXECUTOR_METRICS_TOKEN = "s3cret-token"
    headers = {"Authorization": authorization} if authorization else {}

    response = client.get("/metrics", headers=headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"executor_" not in response.content


@pytest.mark.parametrize("authorization", ["Bearer s3cret-token", "bearer s3cret-token"])
def test_with_a_token_set_the_bearer_token_opens_it(client, settings, fresh_samples, authorization):
    settings.EXECUTOR_METRICS_TOKEN = "s3cret-token"

    response = client.get("/metrics", headers={"Authorization": authorization})

    assert response.status_code == 200
    assert b"executor_queue_depth" in response.content


def test_a_non_ascii_authorization_header_is_401_not_500(client, settings):
    settings.EXECUTOR_METRICS_TOKEN = "s3cret-token"

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cr\u00e9t")

    assert response.status_code == 401


def test_only_get_and_head_are_answered(client):
    assert client.post("/metrics").status_code == 405
    assert client.head("/metrics").status_code == 200


def test_a_metrics_directory_that_cannot_be_read_is_503_with_retry_after(client, monkeypatch):
    def unreadable():
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(metrics, "exposition", unreadable)

    response = client.get("/metrics")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"


# --- Sampled gauges -----------------------------------------------------------------------------------------------


def test_queue_depths_are_redis_llen_per_lane(scrape, fresh_samples, enqueued):
    from executions.queueing import LANES
    from executor_project import publishing

    with publishing.broker_client() as redis:
        redis.delete("slow")
        redis.rpush("slow", "a", "b", "c")
    try:
        after = scrape()
    finally:
        with publishing.broker_client() as redis:
            redis.delete("slow")

    assert after.value("executor_queue_depth", lane="slow") == 3
    assert all(after.has("executor_queue_depth", lane=lane) for lane in LANES)


def test_pending_and_in_progress_executions_are_counted(scrape, fresh_samples, no_broker):
    package = make_package("olivia_counts", {"a.py": ""})
    before = scrape()
    runs = [trigger_execution(package, trigger_type=TriggerType.MANUAL) for _ in range(3)]
    transitions.claim(runs[0].id, "worker@test", "token")

    after = scrape()

    def change(status: str) -> float:
        return after.value("executor_executions_current", status=status) - before.value(
            "executor_executions_current", status=status
        )

    assert (change("pending"), change("in_progress")) == (2, 1)
    assert len(runs) == 3


def test_samplers_run_at_most_once_per_period_in_a_process(settings, monkeypatch):
    settings.EXECUTOR_METRICS_SAMPLE_SECONDS = 10
    # Its made-up clock must not stay behind as every sampler's last run: on a machine up for less than 1010 s
    # time.monotonic() is below it, and the later tests' scrapes would skip sampling.
    monkeypatch.setattr(metrics, "_sampled_at", {})
    calls = []
    metrics.register_sampler("test-counting", lambda: calls.append(1))
    try:
        metrics.sample(now=1000.0)
        metrics.sample(now=1009.0)
        metrics.sample(now=1010.5)
    finally:
        metrics._samplers.pop("test-counting")

    assert len(calls) == 2


def test_a_failing_sampler_is_counted_and_the_scrape_still_answers(scrape, fresh_samples):
    def broken():
        raise ConnectionError("redis is away")

    metrics.register_sampler("test-broken", broken)
    try:
        before = scrape()
        after = scrape()
    finally:
        metrics._samplers.pop("test-broken")

    errors = "executor_metrics_sample_errors_total"
    assert after.value(errors, sampler="test-broken") == before.value(errors, sampler="test-broken") + 1


# --- Recording never fails the code it observes ------------------------------------------------------------------


def test_record_swallows_any_error_of_a_metric_and_says_so_once_a_minute(caplog, monkeypatch):
    monkeypatch.setattr(metrics, "_complained_at", float("-inf"))

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    metrics.record(full_disk, 1)
    metrics.record(full_disk, 1)

    assert caplog.text.count("metrics: could not record") == 1


def test_a_transition_still_happens_when_its_metrics_fail(no_broker, monkeypatch, django_capture_on_commit_callbacks):
    package = make_package("peggy_broken_metrics", {"a.py": ""})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)

    def broken(*args, **kwargs):
        raise RuntimeError("metrics are broken")

    monkeypatch.setattr(metrics.TRANSITIONS, "labels", broken)
    with django_capture_on_commit_callbacks(execute=True):
        assert transitions.claim(execution.id, "worker@test", "token") == 1

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.IN_PROGRESS


# --- What the apps record -----------------------------------------------------------------------------------------


def test_a_run_counts_as_started_with_its_latency_then_as_finished(scrape, no_broker,
                                                                    django_capture_on_commit_callbacks):  # fmt: skip
    project = Project.objects.create(name="Finance")
    package = make_package("quinn_nightly", {"a.py": ""}, project=project)
    labels = {"package": "quinn_nightly", "project": "Finance", "trigger_type": "manual"}
    before = scrape()

    with django_capture_on_commit_callbacks(execute=True):
        execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
        transitions.claim(execution.id, "worker@test", "token")
        transitions.hand_back(execution.id, "token", "shutting down")
        transitions.claim(execution.id, "worker@other", "token2")  # a hand-over is not a second start
        transitions.finish(execution.id, "token2", ExecutionStatus.COMPLETED, "")
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("executor_executions_started_total", **labels) == 1
    assert grew("executor_execution_start_latency_seconds_count", trigger_type="manual") == 1
    assert grew("executor_executions_finished_total", **labels, status="completed") == 1
    assert grew("executor_executions_created_total", **labels) == 1
    assert grew("executor_execution_transitions_total", transition="create") == 1
    assert grew("executor_execution_transitions_total", transition="claim") == 2
    assert grew("executor_execution_transitions_total", transition="hand_back") == 1


def test_a_rolled_back_transition_is_neither_counted_nor_logged(scrape, no_broker, caplog,
                                                                django_capture_on_commit_callbacks):  # fmt: skip
    from django.db import transaction

    execution = trigger_execution(make_package("rita_rollback", {"a.py": ""}), trigger_type=TriggerType.MANUAL)
    before = scrape()

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            transitions.claim(execution.id, "worker@test", "token")
            raise RuntimeError("rolled back")

    assert scrape().value("executor_execution_transitions_total", transition="claim") == before.value(
        "executor_execution_transitions_total", transition="claim"
    )
    assert str(execution.id) not in caplog.text


def test_events_are_counted_by_outcome_and_sender(scrape, enqueued):
    outcome = "executor_events_received_total"
    before = scrape()
    event = IncomingEvent(type="nobody.listens", source="tests", data={}, event_id="e-1")

    dispatch(event)
    dispatch(event)  # the same (source, id) again
    after = scrape()

    assert after.value(outcome, outcome="no_subscribers", sender="platform") == (
        before.value(outcome, outcome="no_subscribers", sender="platform") + 1
    )
    assert after.value(outcome, outcome="duplicate", sender="platform") == (
        before.value(outcome, outcome="duplicate", sender="platform") + 1
    )


def test_an_event_the_api_refuses_is_counted_as_rejected(scrape, client, enqueued):
    from executions.models import ApiKey

    key = ApiKey.issue("tests")[1]
    before = scrape()

    response = client.post("/fx/events", "{not json", content_type="application/json", headers={"X-API-KEY": key})

    assert response.status_code == 400
    rejected = ("executor_events_received_total", {"outcome": "rejected", "sender": "api"})
    assert scrape().value(rejected[0], **rejected[1]) == before.value(rejected[0], **rejected[1]) + 1


def test_beats_tick_sets_the_last_tick_time(scrape):
    started = time.time()

    metrics.tick_from_beat("schedule")

    assert scrape().value("executor_beat_last_tick_timestamp_seconds", message="schedule") >= started


# --- The multi-process directory ----------------------------------------------------------------------------------


def test_live_gauges_of_dead_processes_are_removed_and_everything_else_kept(tmp_path):
    host = socket.gethostname().replace("_", "-")
    dead_pid = _a_dead_pid()
    names = [f"gauge_livesum_{host}-{dead_pid}.db", f"counter_{host}-{dead_pid}.db",
             f"gauge_livesum_{host}-{os.getpid()}.db", f"gauge_livesum_otherhost-{dead_pid}.db"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"")

    assert metrics.clean_dead_processes(str(tmp_path)) == 1

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names[1:])


def _a_dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- Dependencies away: the scrape still answers ------------------------------------------------------------------


def test_with_redis_unreachable_a_scrape_answers_and_counts_the_failed_sample(scrape, fresh_samples, monkeypatch):
    import contextlib

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.e2e.processes import free_port

    @contextlib.contextmanager
    def unreachable_broker():
        # No retries: redis-py's default backoff would only make the test slower.
        yield redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))

    errors = ("executor_metrics_sample_errors_total", {"sampler": "queues"})
    before = scrape()
    monkeypatch.setattr("executor_project.publishing.broker_client", unreachable_broker)

    after = scrape()  # the fixture asserts the 200

    assert after.value(errors[0], **errors[1]) == before.value(errors[0], **errors[1]) + 1


@pytest.mark.django_db(transaction=True)
def test_with_postgresql_unreachable_a_scrape_answers_and_counts_the_failed_sample(scrape, fresh_samples):
    from django.db import connection

    from tests.e2e.processes import free_port

    errors = ("executor_metrics_sample_errors_total", {"sampler": "executions"})
    before = scrape()
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = free_port()  # nothing listens there: connections are refused
    try:
        after = scrape()
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port

    assert after.value(errors[0], **errors[1]) == before.value(errors[0], **errors[1]) + 1


def test_a_session_or_an_api_key_does_not_replace_the_token(admin_client, settings):
    from executions.models import ApiKey

    settings.EXECUTOR_METRICS_TOKEN = "s3cret-token"
    key = ApiKey.issue("tests")[1]

    assert admin_client.get("/metrics").status_code == 401
    assert admin_client.get("/metrics", headers={"X-API-KEY": key}).status_code == 401
    assert admin_client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 401


# --- Recovery and Git ---------------------------------------------------------------------------------------------


def test_a_lost_worker_and_a_lost_message_count_as_reaper_actions(scrape, enqueued):
    from datetime import timedelta

    from django.utils import timezone

    from executions.models import Execution
    from workers import republish
    from workers.lease import claim
    from workers.reaper import resolve_lost

    actions = "executor_reaper_actions_total"
    lost = trigger_execution(make_package("wendy_lost", {"a.py": ""}), trigger_type=TriggerType.MANUAL)
    claim(str(lost.id), "worker@dead-host")
    lost.refresh_from_db()
    unpublished = trigger_execution(make_package("xavier_unpublished", {"a.py": ""}), trigger_type=TriggerType.MANUAL)
    a_minute_ago = timezone.now() - timedelta(minutes=1)
    Execution.objects.filter(pk=unpublished.pk).update(enqueued_at=None, created_at=a_minute_ago)
    before = scrape()

    assert resolve_lost(lost, "its worker stopped heartbeating", timezone.now()) == "failed"
    assert republish.republish_lost(timezone.now()) == 1
    after = scrape()

    assert after.value(actions, action="failed") == before.value(actions, action="failed") + 1
    assert after.value(actions, action="republished") == before.value(actions, action="republished") + 1


def test_a_git_sync_is_counted_by_its_result(scrape, settings):
    from packages.git_sync import sync_repository
    from packages.models import GitRepository, GitSyncStatus

    settings.EXECUTOR_GIT_ALLOW_LOCAL = False  # a file:// URL is then refused: the sync fails
    repository = GitRepository.objects.create(project=Project.objects.create(name="Sales"), url="file:///srv/repo")
    before = scrape()

    sync_repository(repository)

    assert repository.status == GitSyncStatus.FAILED
    syncs = ("executor_git_syncs_total", {"status": "failed"})
    assert scrape().value(syncs[0], **syncs[1]) == before.value(syncs[0], **syncs[1]) + 1
