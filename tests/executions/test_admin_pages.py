"""The execution pages as a browser gets them (Django's test client, PostgreSQL): the live part of an execution's
page and its JSON, the list's columns and self-refresh, the time zone box, the dashboard legend, the run form's
required marks, the internal schedules section and the event types a package may subscribe to."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from executions.list_times import duration_words, relative_time
from executions.models import Execution, ExecutionStatus, ExecutionStep, StepStatus, TriggerType
from executions.services import trigger_execution
from packages.models import EventType, ProjectRole
from packages.trigger_events import TRIGGERED_RUN
from tests.factories import make_member, make_package, make_staff

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]

PARAMETERS = {"fields": [{"type": "text", "name": "region", "label": "Region", "required": True},
                         {"type": "int", "name": "days", "label": "Days back"}]}  # fmt: skip


@pytest.fixture
def running():
    """An execution whose first step is running and has printed two lines; its second step waits."""
    package = make_package("live_pkg", {"a.py": "print(1)", "b.py": "print(2)"}, name="Live pkg")
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    now = timezone.now()
    Execution.objects.filter(pk=execution.pk).update(status=ExecutionStatus.IN_PROGRESS, started_at=now)
    ExecutionStep.objects.filter(execution=execution, position=1).update(status=StepStatus.RUNNING, started_at=now,
                                                                         stdout="first\nsecond\n")  # fmt: skip
    return execution


def test_the_execution_page_shows_steps_first_and_polls_instead_of_reloading(admin_client, running):
    page = admin_client.get(f"/admin/executions/execution/{running.pk}/change/").content.decode()

    assert 'http-equiv="refresh"' not in page  # a reload would wipe what is being typed
    assert page.index('id="steps-group"') < page.index(">Run</h2>") < page.index('id="id_name"')
    assert 'id="live-output"' in page and "second" in page
    assert f'data-url="/admin/executions/execution/{running.pk}/progress/"' in page and "async function poll" in page


def test_the_progress_json_follows_the_run(admin_client, running):
    url = f"/admin/executions/execution/{running.pk}/progress/"
    data = admin_client.get(url).json()
    assert (data["status"], data["finished"], [s["status"] for s in data["steps"]]) == (
        "in_progress", False, ["running", "pending"])  # fmt: skip
    assert "In progress" in data["html"]["progress"] and "second" in data["html"]["progress"]

    Execution.objects.filter(pk=running.pk).update(status=ExecutionStatus.COMPLETED)
    ExecutionStep.objects.filter(execution=running).update(status=StepStatus.COMPLETED, duration_ms=5)
    data = admin_client.get(url).json()
    assert data["finished"] is True and 'id="live-output"' not in data["html"]["progress"]
    assert "Completed" in data["html"]["progress"] and "This execution is the whole chain" in data["html"]["chain"]


def test_the_progress_json_is_only_for_who_may_see_the_run(django_user_model, running):
    outsider = Client()
    outsider.force_login(make_staff("otto"))  # a member of no project
    assert outsider.get(f"/admin/executions/execution/{running.pk}/progress/").status_code == 404


def test_the_list_refreshes_itself_only_while_a_run_on_it_is_going(admin_client, running):
    page = admin_client.get("/admin/executions/execution/").content.decode()
    assert 'id="executor-list-refresh"' in page
    assert f'<code title="{running.pk}">{running.short_id}</code>' in page and "just now</time>" in page

    Execution.objects.filter(pk=running.pk).update(status=ExecutionStatus.COMPLETED)
    assert 'id="executor-list-refresh"' not in admin_client.get("/admin/executions/execution/").content.decode()


def test_list_times_are_short_words_with_the_full_time_on_hover():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert ">3 min ago</time>" in relative_time(now - timedelta(minutes=3, seconds=20), now)
    assert ">2 d ago</time>" in relative_time(now - timedelta(days=2, hours=5), now)
    assert 'title="2026-11-30 11:56:40' in relative_time(now - timedelta(minutes=3, seconds=20), now)
    assert relative_time(None) == "—"
    assert [duration_words(ms) for ms in (250, 1234, 95_000, 7_200_000)] == ["250 ms", "1.2 s", "1 min 35 s",
                                                                             "2 h 0 min"]  # fmt: skip


def test_the_schedule_time_zone_is_typed_with_suggestions_and_checked(admin_client, running):
    url = f"/admin/executions/execution/{running.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert 'list="id_schedule_timezone_choices"' in page and '<option value="Europe/Berlin">' in page
    assert '<select name="schedule_timezone"' not in page

    form = {"name": "kept", "description": "", "saved": "on", "schedule": "5 * * * *"}
    refused = admin_client.post(url, {**form, "schedule_timezone": "Mars/Olympus"})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    assert admin_client.post(url, {**form, "schedule_timezone": "Europe/Berlin"}).status_code == 302
    running.refresh_from_db()
    assert str(running.schedule_timezone) == "Europe/Berlin"


def test_the_dashboard_legend_uses_the_words_of_every_other_page(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert 'executor-in_progress">In progress</span>' in page and ">in_progress<" not in page


def test_required_run_form_fields_are_marked(admin_client):
    package = make_package("form_pkg", {"parameters.json": json.dumps(PARAMETERS), "a.py": "1"}, name="Form pkg")
    page = admin_client.get(f"/admin/packages/package/{package.pk}/run/").content.decode()
    assert '<label for="id_region" class="required">' in page
    assert '<label for="id_days">' in page and "marks a required field" in page


def test_the_beat_tables_are_an_internal_section_for_superusers_only(admin_client, django_user_model):
    assert "Internal: schedules" in admin_client.get("/admin/").content.decode()
    package = make_package("members_pkg", {"a.py": "1"})
    owner = make_staff("olga")
    make_member(owner, package.project or _project(package), ProjectRole.OWNER)
    member = Client()
    member.force_login(owner)
    assert "Internal: schedules" not in member.get("/admin/").content.decode()
    assert member.get("/admin/django_celery_beat/periodictask/").status_code == 403


def test_internal_event_types_are_not_offered_as_subscriptions(admin_client):
    internal, orders = EventType.objects.create(name=TRIGGERED_RUN), EventType.objects.create(name="sales.order")
    page = admin_client.get("/admin/packages/package/add/").content.decode()
    assert f'<option value="{orders.pk}">sales.order</option>' in page and TRIGGERED_RUN not in page

    subscribed = make_package("old_subscriber", {"a.py": "1"})
    subscribed.trigger_event_types.add(internal)  # from before: kept, so a save does not drop it unasked
    assert TRIGGERED_RUN in admin_client.get(f"/admin/packages/package/{subscribed.pk}/change/").content.decode()


def _project(package):
    from packages.models import Project

    package.project = Project.objects.create(name="Members")
    package.save()
    return package.project
