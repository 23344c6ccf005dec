"""Saved runs, re-runs and run forms, through the admin (Django's test client, PostgreSQL; broker recorded)."""

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from executions.models import Execution, ExecutionFile, TriggerType
from executions.saved_runs import periodic_task_name
from executions.services import trigger_execution
from executions.ticks import SAVED_RUN, fire
from packages.models import Package
from tests.factories import make_package

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]

PARAMETERS = {"fields": [
    {"type": "text", "name": "region", "label": "Region", "required": True, "default": "eu"},
    {"type": "textarea", "name": "note", "label": "Note"},
    {"type": "int", "name": "days", "label": "Days", "min": 1, "max": 30, "default": 7},
    {"type": "float", "name": "ratio", "label": "Ratio", "min": 0, "max": 1, "step": 0.1},
    {"type": "select", "name": "level", "label": "Level", "choices": [{"title": "Low", "value": 1},
                                                                      {"title": "High", "value": 2}]},
    {"type": "radio", "name": "mode", "label": "Mode", "choices": [{"title": "Fast", "value": "fast"},
                                                                   {"title": "Safe", "value": "safe"}]},
    {"type": "multiselect", "name": "tags", "label": "Tags", "choices": [{"title": "A", "value": "a"},
                                                                         {"title": "B", "value": "b"}]},
    {"type": "file", "name": "report", "label": "Report"},
]}  # fmt: skip


@pytest.fixture
def form_package():
    return make_package("form_pkg", {"parameters.json": json.dumps(PARAMETERS), "main.py": "print(1)"})


def change_url(execution) -> str:
    return reverse("admin:executions_execution_change", args=[execution.pk])


def edit_form(**fields) -> dict:
    return {"name": "", "description": "", "schedule": "", "schedule_timezone": "UTC", "steps-TOTAL_FORMS": "0",
            "steps-INITIAL_FORMS": "0", **fields}  # fmt: skip


def test_an_execution_is_named_described_and_saved_then_listed_with_its_last_run(admin_client):
    package = make_package("saver", {"main.py": "print(1)"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params={"region": "eu"})

    response = admin_client.post(change_url(execution), edit_form(name="Monthly EU", description="for finance",
                                                                  saved="on"))  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    admin_client.post(reverse("admin:executions_execution_rerun", args=[execution.pk]))

    saved = admin_client.get(reverse("admin:executions_savedexecution_changelist")).content.decode()
    assert "Monthly EU" in saved and "Saver" in saved and "{&quot;region&quot;: &quot;eu&quot;}" in saved
    rerun = Execution.objects.get(rerun_of=execution)
    assert reverse("admin:executions_execution_change", args=[rerun.pk]) in saved  # its last run
    execution.refresh_from_db()
    assert (execution.name, execution.description, execution.saved) == ("Monthly EU", "for finance", True)


def test_only_a_saved_run_takes_a_schedule(admin_client):
    execution = trigger_execution(make_package("saver", {"main.py": "1"}), trigger_type=TriggerType.MANUAL)

    response = admin_client.post(change_url(execution), edit_form(schedule="20 * * * *"))

    assert "Only a saved run runs on a schedule" in response.content.decode()
    response = admin_client.post(change_url(execution), edit_form(saved="on", schedule="61 * * * *"))
    assert "minute" in response.content.decode() and not PeriodicTask.objects.exists()


def test_a_saved_runs_schedule_becomes_a_beat_task_that_reruns_it_once_per_fire_time(admin_client):
    execution = trigger_execution(make_package("saver", {"main.py": "1"}), trigger_type=TriggerType.MANUAL,
                                  params={"a": 1})  # fmt: skip
    admin_client.post(change_url(execution), edit_form(saved="on", schedule="* * * * *"))

    task = PeriodicTask.objects.get(name=periodic_task_name(execution.pk))
    assert task.enabled and task.task == "executor.saved_run_tick" and task.crontab.minute == "*"
    first, second = fire(SAVED_RUN, execution_id=str(execution.pk)), fire(SAVED_RUN, execution_id=str(execution.pk))
    assert first == second and first.params == {"a": 1} and first.trigger_type == TriggerType.SCHEDULED
    assert first.rerun_of_id == execution.pk

    admin_client.post(change_url(execution), edit_form(schedule=""))  # no longer saved, no schedule
    assert not PeriodicTask.objects.get(name=periodic_task_name(execution.pk)).enabled


def scheduled_saved_run(schedule: str = "0 * * * *") -> Execution:
    package = Package.objects.filter(package_name="saver").first() or make_package("saver", {"main.py": "1"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    execution.saved, execution.schedule = True, schedule
    execution.save()  # a plain save: the task follows it
    return execution


def task_of(execution) -> PeriodicTask:
    return PeriodicTask.objects.get(name=periodic_task_name(execution.pk))


def test_a_schedule_on_an_execution_that_is_not_saved_is_refused_by_the_model():
    execution = trigger_execution(make_package("saver", {"main.py": "1"}), trigger_type=TriggerType.MANUAL)
    execution.schedule = "0 * * * *"

    with pytest.raises(ValidationError) as refused:
        execution.full_clean()

    assert refused.value.message_dict == {"schedule": ["Only a saved run runs on a schedule: tick Saved, or empty "
                                                       "the schedule."]}  # fmt: skip


def test_unsaving_a_scheduled_run_disables_its_task_whoever_saves_it():
    execution = scheduled_saved_run()
    assert task_of(execution).enabled

    execution.saved = False  # the schedule left in place, as a shell or a bulk edit might
    execution.save()

    assert not task_of(execution).enabled


def test_deleting_a_saved_run_deletes_its_task(admin_client):
    kept, deleted_in_the_admin, deleted_from_the_list = (scheduled_saved_run() for _ in range(3))
    unsaved_later = scheduled_saved_run()
    unsaved_later.saved = False
    unsaved_later.save()  # its task is kept, disabled

    response = admin_client.post(reverse("admin:executions_execution_delete", args=[deleted_in_the_admin.pk]),
                                 {"post": "yes"})  # fmt: skip
    assert response.status_code == 302
    response = admin_client.post(reverse("admin:executions_savedexecution_changelist"), {
        "action": "delete_selected", "_selected_action": [deleted_from_the_list.pk], "post": "yes"})  # fmt: skip
    assert response.status_code == 302
    unsaved_later.delete()

    assert not Execution.objects.filter(pk__in=[deleted_in_the_admin.pk, deleted_from_the_list.pk]).exists()
    assert list(PeriodicTask.objects.values_list("name", flat=True)) == [periodic_task_name(kept.pk)]


def test_a_save_rolled_back_leaves_no_task():
    execution = trigger_execution(make_package("saver", {"main.py": "1"}), trigger_type=TriggerType.MANUAL)

    with pytest.raises(RuntimeError), transaction.atomic():
        execution.saved, execution.schedule = True, "0 * * * *"
        execution.save()
        raise RuntimeError("abandoned")

    assert not PeriodicTask.objects.exists()


def test_rerun_repeats_the_parameters_and_files(admin_client):
    package = make_package("saver", {"main.py": "1"})
    source = trigger_execution(package, trigger_type=TriggerType.MANUAL, params={"f": "_uploads/f/a.csv"},
                               files={"_uploads/f/a.csv": b"x,y"})  # fmt: skip

    response = admin_client.post(reverse("admin:executions_execution_rerun", args=[source.pk]))

    again = Execution.objects.get(rerun_of=source)
    assert response.url == change_url(again)
    assert again.params == source.params and again.trigger_type == TriggerType.MANUAL
    assert bytes(again.files.get().content) == b"x,y"


def test_rerun_with_edited_parameters_as_json(admin_client):
    source = trigger_execution(make_package("saver", {"main.py": "1"}), trigger_type=TriggerType.MANUAL,
                               params={"region": "eu"})  # fmt: skip
    url = reverse("admin:executions_execution_rerun_edited", args=[source.pk])

    assert "&quot;region&quot;: &quot;eu&quot;" in admin_client.get(url).content.decode()  # pre-filled
    refused = admin_client.post(url, {"parameters": "[1, 2]"})
    assert "Enter a JSON object" in refused.content.decode() and Execution.objects.count() == 1
    admin_client.post(url, {"parameters": '{"region": "us"}'})
    assert Execution.objects.get(rerun_of=source).params == {"region": "us"}


def test_a_package_with_parameters_json_runs_through_its_form(admin_client, form_package):
    url = reverse("admin:packages_package_run", args=[form_package.pk])
    page = admin_client.get(url).content.decode()
    assert all(f'name="{field["name"]}"' in page for field in PARAMETERS["fields"])
    assert 'value="eu"' in page and 'max="30"' in page and 'step="0.1"' in page

    refused = admin_client.post(url, {"region": "", "days": "31", "ratio": "2"})
    errors = refused.content.decode()
    assert "This field is required" in errors and "less than or equal to 30" in errors
    assert Execution.objects.count() == 0

    upload = SimpleUploadedFile("q1 data.csv", b"a,b\n1,2\n")
    response = admin_client.post(url, {"region": "us", "days": "3", "ratio": "0.5", "level": "2", "mode": "safe",
                                       "tags": ["a", "b"], "note": "hi", "report": upload})  # fmt: skip

    execution = Execution.objects.get()
    assert response.url == change_url(execution)
    assert execution.params == {"region": "us", "note": "hi", "days": 3, "ratio": 0.5, "level": 2, "mode": "safe",
                                "tags": ["a", "b"], "report": "_uploads/report/q1_data.csv"}  # fmt: skip
    assert ExecutionFile.objects.get(execution=execution).path == "_uploads/report/q1_data.csv"


def test_rerun_with_edited_parameters_uses_the_form_prefilled_and_keeps_the_file(admin_client, form_package):
    source = trigger_execution(form_package, trigger_type=TriggerType.MANUAL,
                               params={"region": "us", "days": 3, "level": 2, "report": "_uploads/report/a.csv"},
                               files={"_uploads/report/a.csv": b"old"})  # fmt: skip
    url = reverse("admin:executions_execution_rerun_edited", args=[source.pk])

    page = admin_client.get(url).content.decode()
    assert 'value="us"' in page and 'value="3"' in page and '<option value="2" selected>' in page
    admin_client.post(url, {"region": "ca", "days": "4", "level": "2"})

    again = Execution.objects.get(rerun_of=source)
    assert again.params == {"region": "ca", "note": "", "days": 4, "ratio": None, "level": 2, "mode": None,
                            "tags": [], "report": "_uploads/report/a.csv"}  # fmt: skip
    assert bytes(again.files.get().content) == b"old"


def test_a_broken_parameters_json_is_reported_on_run(admin_client):
    package = make_package("broken_form", {"parameters.json": '{"fields": [{"type": "colour", "name": "c"}]}'})

    response = admin_client.get(reverse("admin:packages_package_run", args=[package.pk]), follow=True)

    assert "Cannot show the run form: parameters.json field 1: type must be one of" in response.content.decode()
