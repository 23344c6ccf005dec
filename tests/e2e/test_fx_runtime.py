"""FX scripts run unchanged on a real worker, sandbox on, network off: every FX API a script calls (README: Coming
from FX), answered by the adapter (workers/fx_bridge.py + workers/runtime/site/executor_fx)."""

import json
import time
from datetime import UTC, datetime

import pytest
from django_celery_beat.models import PeriodicTask

from executions.models import Execution, ExecutionStatus, TriggerType
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from packages.models import EventType, PackageState, Project, Secret, SecretScope
from tests.e2e.processes import beat_process
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def run(package, timeout: float = 60, **params) -> Execution:
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
    return wait_until_finished(execution, timeout=timeout)


def output_of(execution: Execution) -> dict:
    """The JSON the package's last step printed as its last stdout line."""
    step = execution.steps.order_by("position").last()
    assert step.status == "completed", f"{step.status_reason}\n{step.stdout}\n{step.stderr}"
    return json.loads(step.stdout.splitlines()[-1])


def add_secret(scope: str, name: str, value: str, **owner) -> None:
    secret = Secret(scope=scope, name=name, **owner)
    secret.set_value(value)
    secret.save()


def test_config_params_and_package(celery_worker):
    script = """
import json
from ferris_cli.v2 import ApplicationConfigurator
from fx_ef import context
merged = ApplicationConfigurator.get()
print(json.dumps({"named": ApplicationConfigurator.get("fx_config"), "config": context.config.get("greeting"),
                  "merged": [merged.get("DEFAULT_TOPIC"), "HOME" in merged], "region": context.params["region"],
                  "package": [context.package.name, context.package.id], "cid": context.params["_fxcid"]}))
"""
    package = make_package("fx_config", {"config.json": '{"greeting": "hello"}', "main.py": script})

    execution = run(package, region="eu")

    out = output_of(execution)
    assert out["named"] == {"greeting": "hello"} and out["config"] == "hello"
    assert out["merged"] == ["ferris.events", True]  # platform config plus the environment
    assert out["region"] == "eu" and out["cid"] == execution.correlation_id
    assert out["package"] == ["fx_config", str(package.pk)]


def test_secrets_get_follows_package_project_platform_order(celery_worker):
    project = Project.objects.create(name="fx project")
    package = make_package("fx_secrets_get", {"main.py": """
import json
from ferris_ef import context
get = context.secrets.get
print(json.dumps({"a": get("A") == "package-a", "b": get("B") == "project-b", "c": get("C") == "platform-c",
                  "missing": get("MISSING")}))
"""}, project=project)  # fmt: skip
    add_secret(SecretScope.PLATFORM, "A", "platform-a")
    add_secret(SecretScope.PLATFORM, "B", "platform-b")
    add_secret(SecretScope.PLATFORM, "C", "platform-c")
    add_secret(SecretScope.PROJECT, "A", "project-a", project=project)
    add_secret(SecretScope.PROJECT, "B", "project-b", project=project)
    add_secret(SecretScope.PACKAGE, "A", "package-a", package=package)

    assert output_of(run(package)) == {"a": True, "b": True, "c": True, "missing": None}


def test_secrets_set_stores_encrypted_project_and_platform_secrets(celery_worker):
    project = Project.objects.create(name="fx project")
    package = make_package("fx_secrets_set", {"main.py": """
import json
from fx_ef import context
print(context.secrets.set("NEW_TOKEN", "tok-4321-value", "project"))
print(context.secrets.set("SHARED_TOKEN", "shared-9876-value", "platform"))
print("refused:", context.secrets.set("X", "y", "galaxy")[0])
print("echo", context.secrets.get("NEW_TOKEN"))
print(json.dumps({"same_run": context.secrets.get("NEW_TOKEN") == "tok-4321-value"}))
""", "next.py": """
import json
from fx_ef import context
print(json.dumps({"next_step": context.secrets.get("SHARED_TOKEN") == "shared-9876-value"}))
"""}, project=project)  # fmt: skip

    execution = run(package)

    assert output_of(execution) == {"next_step": True}  # in the next step's argv[1] secrets
    stdout = execution.steps.get(position=1).stdout
    assert json.loads(stdout.splitlines()[-1]) == {"same_run": True}
    assert "refused: 400" in stdout
    assert "tok-4321-value" not in stdout and "echo ******\n" in stdout  # masked like every secret
    project_secret = Secret.objects.get(scope=SecretScope.PROJECT, project=project, name="NEW_TOKEN")
    assert project_secret.reveal() == "tok-4321-value" and "tok-4321" not in project_secret.encrypted_value
    assert Secret.objects.get(scope=SecretScope.PLATFORM, name="SHARED_TOKEN").reveal() == "shared-9876-value"


def test_state_survives_across_runs(celery_worker):
    package = make_package("fx_state", {"main.py": """
import json
from fx_ef import context
count = context.state.get().get("count", 0) + 1
context.state.put("count", count)
print(json.dumps({"count": count}))
"""})  # fmt: skip

    assert [output_of(run(package))["count"] for _ in range(2)] == [1, 2]
    assert PackageState.objects.get(package=package).data == {"count": 2}


def test_two_overlapping_runs_lose_no_state_update(celery_worker):
    package = make_package("fx_state_overlap", {"main.py": """
import json, time
from fx_ef import context
seen = context.state.get()
time.sleep(2)
context.state.put(context.params["key"], True)
print(json.dumps({"seen": sorted(seen)}))
"""})  # fmt: skip
    PackageState.objects.create(package=package, data={"kept": 1})

    first = trigger_execution(package, trigger_type=TriggerType.MANUAL, params={"key": "first"})
    second = trigger_execution(package, trigger_type=TriggerType.MANUAL, params={"key": "second"})
    runs = [wait_until_finished(execution, timeout=60) for execution in (first, second)]

    steps = [execution.steps.get() for execution in runs]
    assert max(s.started_at for s in steps) < min(s.finished_at for s in steps)  # they did overlap
    assert [output_of(execution)["seen"] for execution in runs] == [["kept"], ["kept"]]
    assert PackageState.objects.get(package=package).data == {"kept": 1, "first": True, "second": True}


def test_a_chain_driven_by_context_events_send(celery_worker):
    sender = make_package("fx_sender", {"main.py": """
from ferris_ef import context
from ferris_cli.v2 import FerrisEvents
context.events.send("fx.chain.next", data={"hello": "world"}, reference_id="ref-1")
FerrisEvents().send(event_type="fx.chain.direct", event_source="fx_sender", data={"direct": True})
print("sent")
"""})  # fmt: skip
    receiver = make_package("fx_receiver", {"main.py": "import sys; print(sys.argv[1])"})
    receiver.trigger_event_types.add(EventType.objects.create(name="fx.chain.next"))
    direct = make_package("fx_direct", {"main.py": "import sys; print(sys.argv[1])"})
    direct.trigger_event_types.add(EventType.objects.create(name="fx.chain.direct"))

    first = run(sender)
    received = [wait_until_finished(Execution.objects.get(package=p), timeout=60) for p in (receiver, direct)]

    argv = output_of(received[0])
    assert argv["hello"] == "world" and argv["origin_event_type"] == "fx.chain.next"
    assert argv["_fxcid"] == first.correlation_id and argv["_fxparentexec"] == str(first.id)
    assert (received[0].parent_execution_id, received[0].chain_depth) == (first.id, 1)
    assert received[0].trigger_event.subject == "ref-1" and received[0].trigger_event.source == "fx_sender"
    assert output_of(received[1])["direct"] is True and received[1].correlation_id == first.correlation_id
    assert "SENDING EVENT" in first.steps.get().stderr  # fx_ef logs what it sends, through context.logging


def test_events_leave_as_they_are_sent_not_when_the_step_ends(celery_worker):
    """As on FX: the subscriber of the first of three events sent 1 s apart starts while its sender still runs."""
    sender = make_package("fx_live_sender", {"main.py": """
import time
from ferris_ef import context
for n in range(3):
    print(time.time(), flush=True)  # when event n is sent
    context.events.send("fx.live.tick", data={"n": n})
    time.sleep(1)
"""})  # fmt: skip
    listener = make_package("fx_live_listener", {"main.py": "print('got it')"})
    listener.trigger_event_types.add(EventType.objects.create(name="fx.live.tick"))

    step = run(sender).steps.get()
    received = [wait_until_finished(execution, timeout=60) for execution in
                Execution.objects.filter(package=listener).order_by("created_at")]  # fmt: skip

    assert step.status == "completed", step.stderr
    assert [execution.params["n"] for execution in received] == [0, 1, 2]  # each event started one run, in order
    assert len({execution.trigger_event_id for execution in received}) == 3
    # It did not wait for the end of the sending step, nor even for the third event to be sent.
    third_sent = datetime.fromtimestamp(float(step.stdout.split()[2]), UTC)
    assert received[0].started_at < third_sent < step.finished_at
    assert all(execution.status == ExecutionStatus.COMPLETED for execution in received)


def test_logging_lines_are_in_the_step_output(celery_worker):
    package = make_package("fx_logging", {"main.py": """
from fx_ef import context
context.logging.info("hello from context.logging")
context.logging.warning("careful")
"""})  # fmt: skip

    execution = run(package)

    step = execution.steps.get()
    assert execution.status == ExecutionStatus.COMPLETED, step.stderr
    assert "hello from context.logging" in step.stderr and "careful" in step.stderr


def test_a_retry_creates_a_later_execution_with_its_parameters(celery_worker, tmp_path):
    package = make_package("fx_retry", {"main.py": """
import json
from fx_ef import context
if context.params.get("attempt", 1) == 1:
    print(json.dumps({"job": context.scheduler.retry(minutes=1, parameters={"attempt": 2})}))
else:
    print(json.dumps({"attempt": context.params["attempt"]}))
"""})  # fmt: skip
    with beat_process(tmp_path / "beat.log"):
        first = run(package)
        task = PeriodicTask.objects.get(task="executor.later_run")
        waited = (task.clocked.clocked_time - first.finished_at).total_seconds()
        later = wait_until_finished(_wait_for_execution(package, exclude=first, timeout=130), timeout=60)

    assert output_of(first)["job"]  # the scheduled job's id, as FX returns it
    assert 0 < waited <= 60  # the minute the retry names: FX turns "in 1 minute" into a cron without seconds
    assert later.trigger_type == TriggerType.SCHEDULED and later.params == {"attempt": 2}
    assert output_of(later) == {"attempt": 2}
    assert later.parent_execution_id == first.id and later.correlation_id == first.correlation_id


def _wait_for_execution(package, exclude: Execution, timeout: float) -> Execution:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = Execution.objects.filter(package=package).exclude(pk=exclude.pk).first()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no later execution of {package.package_name} within {timeout} s")
