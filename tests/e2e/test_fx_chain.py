"""An FX-style event chain synced from Git, as a public FX repository lays it out: one package started from its run
form sends an event that three packages subscribe to (fan-out); each of those sends one that a fourth package
subscribes to, whose three runs each send one that a fifth package subscribes to (form -> 1 -> 3 -> 3 -> 3). Every
script sends its event and then goes on working, so on FX its downstream runs overlap it; they must here too."""

import time

import pytest
from django.urls import reverse

from executions.models import TERMINAL_EXECUTION_STATUSES, Execution, ExecutionStatus, TriggerType
from executions.waiting import wait_until_finished
from packages.git_sync import sync_repository
from packages.models import GitRepository, Package, Project
from tests.e2e import processes
from tests.git_repos import FxRepository, fx_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WORK_AFTER_SENDING = 3  # seconds each step goes on after it sent its event
SENDS = """\
import json, sys, time
from ferris_ef import context
context.events.send({event!r}, data={{"from": context.package.name, "region": context.params.get("region")}})
time.sleep({work})
"""
CHAIN = {  # package -> (the event it subscribes to, the event it sends)
    "orders_start": (None, "demo.orders.received"),
    "orders_price": ("demo.orders.received", "demo.orders.enriched"),
    "orders_stock": ("demo.orders.received", "demo.orders.enriched"),
    "orders_ship": ("demo.orders.received", "demo.orders.enriched"),
    "orders_invoice": ("demo.orders.enriched", "demo.orders.invoiced"),
    "orders_report": ("demo.orders.invoiced", None),
}


def chain_files() -> dict[str, str]:
    files = {}
    for name, (subscribes, sends) in CHAIN.items():
        app = SENDS.format(event=sends, work=WORK_AFTER_SENDING) if sends else "print('reported')"
        files.update(fx_package(name, app=app, schedule="", trigger_events=[subscribes] if subscribes else []))
    return files


@pytest.fixture
def wide_worker(tmp_path):
    """Enough slots for every run of the chain to start as soon as its event is sent (the shared e2e worker has 2)."""
    with processes.worker_process(tmp_path / "wide.log", name="wide", concurrency=10) as worker:
        yield worker


def test_a_chain_synced_from_git_runs_with_each_level_overlapping_the_one_before(
    settings, tmp_path, wide_worker, celery_worker, admin_client
):
    settings.EXECUTOR_GIT_ALLOW_LOCAL = True
    remote = FxRepository(tmp_path / "fx-orders")
    remote.commit(chain_files())
    repository = GitRepository.objects.create(project=Project.objects.create(name="Orders"), url=remote.url)
    assert sync_repository(repository).ok
    start = Package.objects.get(package_name="orders_start")

    admin_client.post(reverse("admin:packages_package_run", args=[start.pk]), {"region": "us"})
    first = wait_until_finished(Execution.objects.get(package=start, trigger_type=TriggerType.MANUAL), 60)
    runs = _wait_for_runs(first.correlation_id, count=10, log=wide_worker.log)

    assert all(run.status == ExecutionStatus.COMPLETED for run in runs), [(r, r.status_reason) for r in runs]
    by_depth = sorted(run.chain_depth for run in runs)
    assert by_depth == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert {run.package.package_name for run in runs if run.chain_depth == 1} == {
        "orders_price", "orders_stock", "orders_ship"}  # fmt: skip
    finished = {run.id: run.steps.get(file_name="app.py").finished_at for run in runs}
    for run in runs:
        if run.parent_execution_id is not None:  # it started while the step that sent its event was still working
            assert run.started_at < finished[run.parent_execution_id], (run, run.parent_execution_id)


def _wait_for_runs(cid: str, count: int, log, timeout: float = 90) -> list[Execution]:
    deadline = time.monotonic() + timeout
    while True:
        runs = list(Execution.objects.filter(correlation_id=cid).select_related("package"))
        if len(runs) == count and all(run.status in TERMINAL_EXECUTION_STATUSES for run in runs):
            return runs
        assert time.monotonic() < deadline, f"{len(runs)} runs of {count}:\n{log()[-3000:]}"
        time.sleep(0.2)
