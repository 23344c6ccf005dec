"""One shape of an execution: what GET /fx/executions/<id> answers is what `run_package --wait` prints, plus the
steps' output. The broker is a recorder (the `enqueued` fixture); the worker's part is written into the rows."""

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from executions.api import ExecutionOut, StepOut
from executions.models import ApiKey, Execution, ExecutionStatus, StepStatus
from executions.summary import execution_as_dict, step_as_dict
from tests.factories import make_package

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]


def finish(execution: Execution, timeout: float, poll_seconds: float = 0.2) -> Execution:
    """Stands in for wait_until_finished: the execution's steps ran and printed something, and it completed."""
    started = timezone.now() - timedelta(seconds=2)
    for step in execution.steps.all():
        step.status, step.exit_code, step.started_at = StepStatus.COMPLETED, 0, started
        step.finished_at, step.stdout, step.stderr = timezone.now(), f"{step.file_name} ran\n", "a warning\n"
        step.save()
    Execution.objects.filter(pk=execution.pk).update(
        status=ExecutionStatus.COMPLETED, started_at=started, finished_at=timezone.now())  # fmt: skip
    return Execution.objects.get(pk=execution.pk)


def test_run_package_prints_what_the_api_answers_with_each_steps_output(client, monkeypatch, capsys):
    make_package("alice_reports", {"config.json": "{}", "main.py": "print(1)"})
    monkeypatch.setattr("executions.management.commands.run_package.wait_until_finished", finish)

    call_command("run_package", "alice_reports", "--param", "limit=10", "--wait")

    execution_id, printed = capsys.readouterr().out.split("\n", 1)
    answered = client.get(f"/fx/executions/{execution_id}", headers={"X-API-KEY": ApiKey.issue("cli")[1]}).json()
    printed = json.loads(printed)
    output = [(step.pop("stdout"), step.pop("stderr")) for step in printed["steps"]]
    assert printed == answered
    assert answered["data"] == {"limit": 10} and answered["status"] == "completed"
    assert output == [("config.json ran\n", "a warning\n"), ("main.py ran\n", "a warning\n")]


def test_the_plain_shape_has_exactly_the_fields_of_the_published_schemas():
    package = make_package("alice_reports", {"main.py": "print(1)"})
    execution = Execution.objects.create(package=package, trigger_type="manual", correlation_id="c1")
    execution.steps.create(position=1, file_name="main.py")

    data = execution_as_dict(execution)

    assert list(data) == list(ExecutionOut.model_fields)
    assert list(data["steps"][0]) == list(StepOut.model_fields)
    assert list(step_as_dict(execution.steps.get(), with_output=True)) == [*StepOut.model_fields, "stdout", "stderr"]
