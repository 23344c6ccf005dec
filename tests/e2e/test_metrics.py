"""A Prometheus scrape of a live web server (pytest-django's live_server, over real HTTP) while a real worker runs
executions: the counters and histograms the worker's pool processes write reach /metrics through the shared
multi-process directory (executor_project/metrics.py)."""

import time
import urllib.error
import urllib.request

import pytest

from executions.models import ExecutionStatus, TriggerType
from executions.queueing import LANES
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from packages.models import Project
from tests.factories import make_package
from tests.metrics_scrape import Scrape

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOKEN = "e2e-metrics-token"


def scrape(live_server, token: str | None = TOKEN) -> Scrape:
    request = urllib.request.Request(f"{live_server.url}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return Scrape.parse(response.read().decode())


def test_a_scrape_sees_runs_on_a_real_worker_move_the_metrics(live_server, celery_worker, settings):
    settings.EXECUTOR_METRICS_TOKEN = TOKEN
    settings.EXECUTOR_METRICS_SAMPLE_SECONDS = 0
    package = make_package("sybil_metrics", {"ok.py": "print('fine')"}, project=Project.objects.create(name="Ops"))
    failing = make_package("trent_metrics", {"bad.py": "raise SystemExit(3)"})
    labels = {"package": "sybil_metrics", "project": "Ops", "trigger_type": "manual"}
    before = scrape(live_server)

    runs = [trigger_execution(p, trigger_type=TriggerType.MANUAL) for p in (package, package, failing)]
    statuses = [wait_until_finished(run, timeout=60).status for run in runs]
    assert statuses == [ExecutionStatus.COMPLETED, ExecutionStatus.COMPLETED, ExecutionStatus.FAILED]

    def grew(after: Scrape, name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # The worker records a run's end right after its final UPDATE, which wait_until_finished may see first.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(live_server)
        if grew(after, "executor_executions_finished_total", **labels, status="completed") >= 2:
            break
        assert time.monotonic() < deadline, "the finished runs never reached /metrics"
        time.sleep(0.2)
    assert grew(after, "executor_executions_created_total", **labels) == 2
    assert grew(after, "executor_executions_started_total", **labels) == 2
    failed = {"package": "trent_metrics", "project": "", "trigger_type": "manual", "status": "failed"}
    assert grew(after, "executor_executions_finished_total", **failed) == 1
    assert grew(after, "executor_step_duration_seconds_count", handler="python", status="completed") >= 2
    assert grew(after, "executor_step_duration_seconds_count", handler="python", status="failed") >= 1
    assert grew(after, "executor_execution_start_latency_seconds_count", trigger_type="manual") >= 3
    assert all(after.has("executor_queue_depth", lane=lane) for lane in LANES)
    assert after.has("executor_executions_current", status="pending")
    assert after.has("executor_executions_current", status="in_progress")


def test_a_scrape_without_the_token_is_refused_over_http(live_server, settings):
    settings.EXECUTOR_METRICS_TOKEN = TOKEN

    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(live_server, token="not-the-token")

    assert refused.value.code == 401
