from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import TriggerRefused, trigger_execution
from tests.factories import make_package

pytestmark = pytest.mark.django_db


def test_it_creates_a_pending_execution_with_one_step_per_script(seed_package, enqueued):
    execution = trigger_execution(seed_package, trigger_type=TriggerType.MANUAL, params={"region": "eu"})

    assert execution.status == ExecutionStatus.PENDING
    assert execution.params == {"region": "eu"}
    assert len(execution.correlation_id) == 32
    steps = list(execution.steps.values_list("position", "file_name", "status"))
    assert steps == [(1, "config.json", StepStatus.PENDING), (2, "test_scr.py", StepStatus.PENDING)]


def test_a_run_costs_the_same_queries_however_many_scripts_its_package_has(enqueued):
    def queries(package) -> int:
        with CaptureQueriesContext(connection) as captured:
            trigger_execution(package, trigger_type=TriggerType.MANUAL)
        return len(captured)

    one = make_package("bob_one", files={"a.py": ""})
    five = make_package("bob_five", files={f"{name}.py": "" for name in "abcde"})
    assert queries(one) == queries(five)  # no read per script (a deferred field fetched for each was one)


def test_it_enqueues_only_after_the_transaction_commits(seed_package, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        execution = trigger_execution(seed_package, trigger_type=TriggerType.MANUAL)
    assert enqueued == []
    assert len(callbacks) == 1

    callbacks[0]()
    assert enqueued == [("executor.run_execution", [str(execution.id)], "default")]


def test_it_refuses_a_manual_run_the_package_does_not_allow(enqueued):
    package = make_package(files={"a.py": "print(1)"}, allow_manual_triggering=False)
    with pytest.raises(TriggerRefused, match="does not allow manual triggering"):
        trigger_execution(package, trigger_type=TriggerType.MANUAL)
    assert Execution.objects.count() == 0


def test_it_refuses_inactive_and_empty_packages(enqueued):
    inactive = make_package("bob_inactive", files={"a.py": "print(1)"}, active=False)
    with pytest.raises(TriggerRefused, match="inactive"):
        trigger_execution(inactive, trigger_type=TriggerType.SCHEDULED)
    empty = make_package("charlie_empty")
    with pytest.raises(TriggerRefused, match="no scripts"):
        trigger_execution(empty, trigger_type=TriggerType.MANUAL)
    assert Execution.objects.count() == 0


def test_it_refuses_parameters_that_are_not_an_object(seed_package, enqueued):
    with pytest.raises(TriggerRefused, match="JSON object"):
        trigger_execution(seed_package, trigger_type=TriggerType.MANUAL, params=["a"])


def test_a_repeated_trigger_with_the_same_key_creates_one_execution(
    seed_package, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = trigger_execution(seed_package, trigger_type=TriggerType.SCHEDULED, idempotency_key="tick:1:2026")
    with django_capture_on_commit_callbacks(execute=True):
        second = trigger_execution(seed_package, trigger_type=TriggerType.SCHEDULED, idempotency_key="tick:1:2026")

    assert first.pk == second.pk
    assert Execution.objects.count() == 1
    assert len(enqueued) == 1


def test_an_unreachable_broker_leaves_the_execution_recorded_as_pending(
    seed_package, django_capture_on_commit_callbacks, caplog
):
    with mock.patch("executor_project.publishing.publish", side_effect=ConnectionError("redis down")):
        with django_capture_on_commit_callbacks(execute=True):
            execution = trigger_execution(seed_package, trigger_type=TriggerType.MANUAL)

    assert execution.queued is False
    execution.refresh_from_db()
    assert (execution.status, execution.enqueued_at) == (ExecutionStatus.PENDING, None)
    assert "could not publish to the broker (ConnectionError: redis down)" in caplog.text
