import threading
import time

import pytest
from django.db import connection
from django.urls import reverse

from executions.cancel import NothingToCancel, request_cancel
from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from tests.factories import make_package
from workers import runner
from workers.lease import claim

pytestmark = pytest.mark.usefixtures("no_broker")


@pytest.mark.django_db
def test_a_pending_execution_is_cancelled_at_once_and_never_claimed(admin_user):
    execution = trigger_execution(make_package(files={"a.py": "", "b.py": ""}), trigger_type=TriggerType.MANUAL)

    assert (
        request_cancel(execution, admin_user) == f"Execution {execution.short_id} cancelled by admin before it started."
    )

    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (ExecutionStatus.CANCELLED, "cancelled by admin")
    assert set(execution.steps.values_list("status", flat=True)) == {StepStatus.SKIPPED}
    assert claim(str(execution.id), "late-worker") is None


@pytest.mark.django_db
def test_a_finished_execution_has_nothing_to_cancel(admin_user):
    execution = trigger_execution(make_package(files={"a.py": ""}), trigger_type=TriggerType.MANUAL)
    Execution.objects.filter(pk=execution.pk).update(status=ExecutionStatus.COMPLETED)
    with pytest.raises(NothingToCancel, match="already ended"):
        request_cancel(execution, admin_user)


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_execution_stops_its_step_and_skips_the_rest(admin_user):
    package = make_package(files={"1_sleep.py": "import time; print('sleeping', flush=True); time.sleep(60)",
                                  "2_never.py": "print('never')"})  # fmt: skip
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    worker = threading.Thread(target=run_and_close, args=(str(execution.id),))
    started = time.monotonic()
    worker.start()
    while not execution.steps.filter(status=StepStatus.RUNNING).exists():
        time.sleep(0.05)

    assert "being stopped" in request_cancel(execution, admin_user)
    worker.join(timeout=30)

    assert not worker.is_alive() and time.monotonic() - started < 30  # the 60 s sleep did not run out
    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (ExecutionStatus.CANCELLED, "cancelled by admin")
    assert list(execution.steps.order_by("position").values_list("status", "status_reason", "stdout")) == [
        (StepStatus.CANCELLED, "cancelled by admin", "sleeping\n"),
        (StepStatus.SKIPPED, "skipped: execution cancelled", ""),
    ]


@pytest.mark.django_db
def test_a_cancel_that_comes_after_the_last_step_still_cancels_the_execution(admin_user, monkeypatch):
    """The worker finishes a run assuming nobody cancelled it (no read first); a Cancel that came meanwhile wins."""
    execution = trigger_execution(make_package(files={"a.py": "print('done')"}), trigger_type=TriggerType.MANUAL)
    cancel_after(monkeypatch, "_run_steps", execution, admin_user)

    runner.run_execution(str(execution.id), worker_name="test-worker")

    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (ExecutionStatus.CANCELLED, "cancelled by admin")
    assert list(execution.steps.values_list("status", "stdout")) == [(StepStatus.COMPLETED, "done\n")]


@pytest.mark.django_db
def test_a_cancel_between_the_claim_and_the_first_step_runs_no_step(admin_user, monkeypatch):
    """The watch starts from the execution as the worker read it: a Cancel already there skips every step."""
    execution = trigger_execution(make_package(files={"a.py": "print('ran')"}), trigger_type=TriggerType.MANUAL)
    cancel_after(monkeypatch, "claim", execution, admin_user)

    runner.run_execution(str(execution.id), worker_name="test-worker")

    execution.refresh_from_db()
    assert (execution.status, execution.status_reason) == (ExecutionStatus.CANCELLED, "cancelled by admin")
    assert list(execution.steps.values_list("status", "status_reason", "stdout")) == [
        (StepStatus.SKIPPED, "skipped: execution cancelled", "")
    ]


def cancel_after(monkeypatch, name: str, execution, user) -> None:
    """The runner's `name` does its work, then someone presses Cancel on the (running) execution."""
    original = getattr(runner, name)

    def then_cancel(*args):
        result = original(*args)
        assert "being stopped" in request_cancel(execution, user)
        return result

    monkeypatch.setattr(runner, name, then_cancel)


def run_and_close(execution_id: str) -> None:
    try:
        runner.run_execution(execution_id, worker_name="test-worker")
    finally:
        connection.close()


@pytest.mark.django_db
def test_the_execution_page_has_a_cancel_button_while_it_runs(admin_client):
    execution = trigger_execution(make_package(files={"a.py": ""}), trigger_type=TriggerType.MANUAL)
    cancel_url = reverse("admin:executions_execution_cancel", args=[execution.pk])
    page = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk])).content.decode()
    assert cancel_url in page

    response = admin_client.post(cancel_url, follow=True)

    assert "cancelled by admin before it started" in response.content.decode()
    assert cancel_url not in response.content.decode()
    assert Execution.objects.get().status == ExecutionStatus.CANCELLED
