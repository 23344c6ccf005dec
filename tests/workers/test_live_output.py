import threading
import time

import pytest
from django.db import connection

from executions.models import ExecutionStep, StepStatus, TriggerType
from executions.services import trigger_execution
from packages.models import Secret, SecretScope
from tests.factories import make_package
from workers import runner
from workers.masking import MASK

pytestmark = pytest.mark.django_db(transaction=True)


def test_output_is_stored_while_the_step_runs_with_secrets_masked(monkeypatch):
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)
    script = (
        "import json, sys, time\n"
        "token = json.loads(sys.argv[1])['secrets']['token']\n"
        "print('first', token, flush=True)\n"
        "time.sleep(3)\n"
        "print('second')\n"
    )
    package = make_package(files={"slow.py": script})
    secret = Secret(scope=SecretScope.PACKAGE, package=package, name="token")
    secret.set_value("tok-live-123")
    secret.save()
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    seen_while_running = []

    def watch():
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                step = ExecutionStep.objects.get(execution=execution)
                if step.status == StepStatus.RUNNING and step.stdout:
                    seen_while_running.append(step.stdout)
                if step.status == StepStatus.COMPLETED:
                    return
                time.sleep(0.1)
        finally:
            connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    runner.run_execution(str(execution.id), worker_name="test-worker")
    watcher.join()

    assert f"first {MASK}\n" in seen_while_running
    assert not any("tok-live-123" in text for text in seen_while_running)
    assert ExecutionStep.objects.get(execution=execution).stdout == f"first {MASK}\nsecond\n"
