"""The worker side of the FX adapter: what a step left in its outbox is carried out, and nothing it wrote can
break the run (the script writes those files; the adapter is only its usual author)."""

import json

import pytest
from django_celery_beat.models import PeriodicTask

from executions.models import TriggerEvent, TriggerType
from executions.services import trigger_execution
from packages.models import PackageState, Secret
from tests.factories import make_package
from workers import fx_bridge
from workers.workspace import create_workspace

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]


@pytest.fixture
def execution():
    package = make_package("bridge_pkg", {"main.py": "print(1)"})
    return trigger_execution(package, trigger_type=TriggerType.MANUAL)


@pytest.fixture
def workspace(tmp_path, execution):
    workspace = create_workspace(tmp_path, {})
    fx_bridge.prepare(workspace, execution.package.package_name, b"{}")
    return workspace


@pytest.fixture
def fx_dir(workspace):
    return workspace.fx_dir


def write_outbox(fx_dir, kind: str, *lines: str) -> None:
    (fx_dir / "outbox" / f"{kind}.jsonl").write_text("".join(line + "\n" for line in lines))


def test_state_changes_are_merged_into_what_another_run_saved_meanwhile(workspace, fx_dir, execution):
    before = fx_bridge.begin_step(workspace, execution, uid=None)
    PackageState.objects.create(package=execution.package, data={"other_run": 1})  # saved while the step ran
    (fx_dir / "consul" / "bridge_pkg.state").write_text(json.dumps({"mine": 2}))

    assert fx_bridge.collect(workspace, execution, before).notes == []
    assert PackageState.objects.get(package=execution.package).data == {"other_run": 1, "mine": 2}


def test_a_state_left_as_invalid_json_is_not_saved_and_the_step_is_told(workspace, fx_dir, execution):
    before = fx_bridge.begin_step(workspace, execution, uid=None)
    (fx_dir / "consul" / "bridge_pkg.state").write_text('{"quote": "it"s"}')

    notes = fx_bridge.collect(workspace, execution, before).notes

    assert notes == ["context.state not saved: the step left it as invalid JSON (a value with an ')."]
    assert not PackageState.objects.filter(package=execution.package).exists()


def test_outbox_requests_that_cannot_be_done_become_notes_and_nothing_breaks(workspace, fx_dir, execution):
    write_outbox(fx_dir, "secrets", "not json", json.dumps({"name": "T", "value": "v", "scope": "project"}),
                 json.dumps({"name": "T", "value": "v", "scope": "package"}))  # fmt: skip
    write_outbox(fx_dir, "schedules", json.dumps({"schedule": "61 * * * *", "parameters": {}}))
    write_outbox(fx_dir, "events", json.dumps({"event": {"specversion": "1.0", "id": "1", "source": "s",
                                                         "type": "t", "data": "[1]"}}), "[]")  # fmt: skip

    collected = fx_bridge.collect(workspace, execution, {})

    assert collected.notes[0] == "secret T not saved: the package belongs to no project."
    assert collected.notes[1].startswith("later run not scheduled: minute")
    assert collected.notes[2].startswith("event t not sent: data must be a JSON object")
    assert len(collected.notes) == 3
    assert collected.secret_values == ["v"]  # masked in the output even though it was not saved
    assert not Secret.objects.exists() and not PeriodicTask.objects.exists() and not TriggerEvent.objects.exists()
    assert list((fx_dir / "outbox").iterdir()) == []  # emptied for the next step


def test_at_most_a_thousand_events_per_step(workspace, fx_dir, execution):
    event = {"specversion": "1.0", "source": "s", "type": "flood", "data": "{}"}
    write_outbox(fx_dir, "events", *(json.dumps({"event": {**event, "id": str(n)}}) for n in range(1001)))

    notes = fx_bridge.collect(workspace, execution, {}).notes

    assert notes == ["1 of 1001 events ignored: at most 1000 per step."]
    assert TriggerEvent.objects.filter(type="flood").count() == 1000
