"""A package runs through Redis and a real `celery worker` process, as it does in production."""

import time
import uuid

import pytest

from executions.cancel import request_cancel
from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from executions.tasks import saved_run_tick
from executions.waiting import wait_until_finished
from tests.e2e.runs import counting_script, run_count
from tests.factories import make_package, seed_files
from workers.tasks import run_execution

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_the_seed_package_runs_on_a_real_worker(celery_worker):
    package = make_package("seed_package", seed_files())

    execution = wait_until_finished(trigger_execution(package, trigger_type=TriggerType.MANUAL), timeout=60)

    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.worker_name.startswith("e2e-")
    step = execution.steps.get(file_name="test_scr.py")
    assert step.status == StepStatus.COMPLETED
    assert "somekey -> some value 2" in step.stdout.splitlines()
    assert execution.steps.get(file_name="config.json").status == StepStatus.UNPROCESSED


def test_a_failing_script_fails_the_run_and_skips_later_steps(celery_worker):
    package = make_package("frank_fails", {"a.py": "print('ok')", "b.py": "import sys; sys.exit(2)", "c.py": ""})

    execution = wait_until_finished(trigger_execution(package, trigger_type=TriggerType.MANUAL), timeout=60)

    assert execution.status == ExecutionStatus.FAILED
    assert list(execution.steps.order_by("position").values_list("status", flat=True)) == [
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
    ]


def test_a_redelivered_message_does_not_run_a_step_twice(celery_worker):
    key = f"e2e-runs-{uuid.uuid4().hex}"
    package = make_package("grace_once", {"once.py": counting_script(key, then="import time; time.sleep(1)\n")},
                           network_access=True)  # fmt: skip
    drops_before = celery_worker.log().count("is not pending")

    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    # The same message twice more: once while the first copy runs, once after it finished.
    run_execution.apply_async(args=[str(execution.id)], queue="default")
    wait_until_finished(execution, timeout=60)
    run_execution.apply_async(args=[str(execution.id)], queue="default")
    celery_worker.wait_for_log("is not pending", count=drops_before + 2)

    assert run_count(key) == 1
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED


def test_cancel_stops_a_step_running_on_a_real_worker(celery_worker, admin_user):
    package = make_package("ivy_cancel", {"wait.py": "import time; print('waiting', flush=True); time.sleep(120)"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    deadline = time.monotonic() + 30
    while not execution.steps.filter(status=StepStatus.RUNNING).exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)

    request_cancel(execution, admin_user)
    execution = wait_until_finished(execution, timeout=30)  # far below the script's 120 s

    assert (execution.status, execution.status_reason) == (ExecutionStatus.CANCELLED, "cancelled by admin")
    step = execution.steps.get()
    assert (step.status, step.stdout) == (StepStatus.CANCELLED, "waiting\n")


def test_a_run_form_upload_is_readable_by_the_script_at_its_value(celery_worker):
    package = make_package("upload_reader", {"main.py": "import json, sys\nargs = json.loads(sys.argv[1])\n"
                                             "print(open(args['report']).read())"})  # fmt: skip
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params={"report": "_uploads/report/q.csv"},
                                  files={"_uploads/report/q.csv": b"a,b\n1,2\n"})  # fmt: skip

    execution = wait_until_finished(execution, timeout=60)

    step = execution.steps.get()
    assert execution.status == ExecutionStatus.COMPLETED, step.stderr
    assert step.stdout == "a,b\n1,2\n\n"


def test_a_saved_runs_schedule_tick_reruns_it_on_a_worker(celery_worker):
    package = make_package("saved_tick", {"main.py": "import sys; print(sys.argv[1])"})
    saved = wait_until_finished(trigger_execution(package, trigger_type=TriggerType.MANUAL, params={"n": 7}), 60)
    Execution.objects.filter(pk=saved.pk).update(saved=True, schedule="* * * * *")

    saved_run_tick.apply_async(args=[str(saved.pk)], queue="scheduled")  # what beat sends for the saved run

    deadline = time.monotonic() + 60
    while not Execution.objects.filter(rerun_of=saved).exists():
        assert time.monotonic() < deadline, celery_worker.log()[-3000:]
        time.sleep(0.2)
    rerun = wait_until_finished(Execution.objects.get(rerun_of=saved), timeout=60)
    assert rerun.trigger_type == TriggerType.SCHEDULED and rerun.status == ExecutionStatus.COMPLETED
    assert '"n": 7' in rerun.steps.get().stdout
