"""Executions, saved runs, events, chains, the dashboard and API keys follow the role table, through the admin.

The people: Vera viewer, Rita runner, Mark maintainer and Olga owner of Sales; Hank owner of HR only; Root, a
superuser. All staff users without a single model permission: their roles are what counts.
"""

import json
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from executions import dashboard
from executions.cancel import request_cancel
from executions.chains import chain_of
from executions.models import (
    ALL_API_SCOPES,
    ApiKey,
    Execution,
    ExecutionStatus,
    ExecutionStep,
    StepStatus,
    TriggerEvent,
    TriggerEventStatus,
    TriggerType,
)
from executions.saved_runs import periodic_task_name
from executions.services import trigger_execution
from executions.ticks import SAVED_RUN, fire
from packages.audit import AuditAction
from packages.models import AuditEntry, Package, Project
from tests.factories import make_member, make_package, make_staff

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]

SALES_OUTPUT = "SALES-OUTPUT-5c1e"
SECRET_VALUE = "s3cr3t-parameter-value"


@dataclass
class World:
    sales: Project
    hr: Project
    orders: Package  # Sales
    payroll: Package  # HR
    done: Execution  # Sales, completed, with output
    step: ExecutionStep
    pending: Execution  # Sales, to cancel
    hr_run: Execution


@pytest.fixture
def world(django_user_model) -> World:
    sales, hr = Project.objects.create(name="Sales"), Project.objects.create(name="HR")
    for username, project, role in [
        ("vera", sales, "viewer"),
        ("rita", sales, "runner"),
        ("mark", sales, "maintainer"),
        ("olga", sales, "owner"),
        ("hank", hr, "owner"),
    ]:
        make_member(make_staff(username), project, role)  # fmt: skip
    django_user_model.objects.create_superuser("root", password="password")
    orders = make_package("sales_orders", {"main.py": "print(1)"}, name="Sales orders", project=sales)
    payroll = make_package("hr_payroll", {"main.py": "print(2)"}, name="HR payroll", project=hr)
    done = trigger_execution(orders, trigger_type=TriggerType.MANUAL, params={"region": "eu"})
    Execution.objects.filter(pk=done.pk).update(status=ExecutionStatus.COMPLETED)
    step = done.steps.get()
    ExecutionStep.objects.filter(pk=step.pk).update(status=StepStatus.COMPLETED, stdout=SALES_OUTPUT)
    pending = trigger_execution(orders, trigger_type=TriggerType.MANUAL)
    hr_run = trigger_execution(payroll, trigger_type=TriggerType.MANUAL)
    return World(sales, hr, orders, payroll, done, step, pending, hr_run)


def client_of(username: str, django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.get(username=username))
    return client


def change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def url(name: str, *args) -> str:
    return reverse(f"admin:executions_execution_{name}", args=args)


def edit_form(**fields) -> dict:
    return {"name": "", "description": "", "schedule": "", "schedule_timezone": "UTC", "steps-TOTAL_FORMS": "0",
            "steps-INITIAL_FORMS": "0", **fields}  # fmt: skip


# --- runners run, viewers look ------------------------------------------------------------------------------------


def test_a_runner_reruns_cancels_and_saves_a_run(world, django_user_model):
    rita = client_of("rita", django_user_model)
    page = rita.get(change_url(world.pending)).content.decode()
    assert url("cancel", world.pending.pk) in page and url("rerun", world.pending.pk) in page

    assert rita.post(url("rerun", world.done.pk)).status_code == 302
    assert rita.post(url("cancel", world.pending.pk)).status_code == 302
    response = rita.post(change_url(world.done), edit_form(name="Monthly Sales", saved="on"))

    assert response.status_code == 302, response.content.decode()[:2000]
    assert Execution.objects.get(rerun_of=world.done).created_by.username == "rita"
    assert Execution.objects.get(pk=world.pending.pk).status == ExecutionStatus.CANCELLED
    assert Execution.objects.filter(pk=world.done.pk, name="Monthly Sales", saved=True).exists()


def test_a_runner_cannot_put_a_schedule_on_a_saved_run(world, django_user_model):
    rita = client_of("rita", django_user_model)
    assert 'name="schedule"' not in rita.get(change_url(world.done)).content.decode()  # shown read-only

    # Posted anyway (a hidden field is no protection): the run is saved, the schedule is not taken.
    rita.post(change_url(world.done), edit_form(name="Every minute", saved="on", schedule="* * * * *"))

    saved = Execution.objects.get(pk=world.done.pk)
    assert (saved.saved, saved.name, saved.schedule) == (True, "Every minute", "")
    assert not PeriodicTask.objects.filter(name=periodic_task_name(saved.pk), enabled=True, crontab__minute="*")
    assert AuditEntry.objects.filter(action=AuditAction.EDIT).count() == 0


def test_a_runner_cannot_stop_a_maintainers_schedule_by_unsaving_the_run(world, django_user_model):
    mark, rita = client_of("mark", django_user_model), client_of("rita", django_user_model)
    mark.post(change_url(world.done), edit_form(name="Hourly", saved="on", schedule="0 * * * *"))
    assert PeriodicTask.objects.get(name=periodic_task_name(world.done.pk)).enabled

    response = rita.post(change_url(world.done), edit_form(name="Hourly"))  # Saved unticked

    assert "only a maintainer or owner" in response.content.decode()
    assert Execution.objects.get(pk=world.done.pk).saved
    assert PeriodicTask.objects.get(name=periodic_task_name(world.done.pk)).enabled


def test_a_maintainer_schedules_a_saved_run_and_the_audit_log_names_the_fields(world, django_user_model):
    mark = client_of("mark", django_user_model)

    mark.post(change_url(world.done), edit_form(name="Hourly", saved="on", schedule="0 * * * *"))

    assert PeriodicTask.objects.get(name=periodic_task_name(world.done.pk)).crontab.minute == "0"
    entries = {e.action: e for e in AuditEntry.objects.all()}
    assert entries[AuditAction.EDIT].details == {"fields": ["schedule"]}
    assert entries[AuditAction.SAVE_RUN].details == {"fields": ["name", "saved"]}
    assert {e.project_id for e in entries.values()} == {world.sales.pk}
    assert {e.user.username for e in entries.values()} == {"mark"}


def test_a_viewer_sees_a_run_and_its_results_but_every_run_action_answers_403(world, django_user_model):
    vera = client_of("vera", django_user_model)
    page = vera.get(change_url(world.pending)).content.decode()
    assert str(world.pending.pk) in page
    assert url("cancel", world.pending.pk) not in page and url("rerun", world.pending.pk) not in page
    results = vera.get(url("step_results", world.done.pk, world.step.pk))
    assert results.status_code == 200 and SALES_OUTPUT in results.content.decode()
    before = sorted(Execution.objects.values_list("pk", "status", "name", "saved"))

    answers = [
        vera.post(url("rerun", world.done.pk)).status_code,
        vera.get(url("rerun_edited", world.done.pk)).status_code,
        vera.post(url("rerun_edited", world.done.pk), {"parameters": "{}"}).status_code,
        vera.post(url("cancel", world.pending.pk)).status_code,
        vera.post(change_url(world.done), edit_form(name="Mine", saved="on")).status_code,
    ]

    assert answers == [403] * 5
    assert sorted(Execution.objects.values_list("pk", "status", "name", "saved")) == before
    assert not AuditEntry.objects.exists()


def test_the_saved_runs_list_offers_run_only_to_those_who_may_run(world, django_user_model):
    Execution.objects.filter(pk=world.done.pk).update(saved=True, name="Weekly Sales")
    run_again = url("rerun_edited", world.done.pk)
    saved_list = reverse("admin:executions_savedexecution_changelist")

    seen_by_vera = client_of("vera", django_user_model).get(saved_list).content.decode()
    seen_by_rita = client_of("rita", django_user_model).get(saved_list).content.decode()

    assert "Weekly Sales" in seen_by_vera and run_again not in seen_by_vera
    assert run_again in seen_by_rita
    assert "Weekly Sales" not in client_of("hank", django_user_model).get(saved_list).content.decode()


def test_a_runner_cannot_delete_executions(world, django_user_model):
    rita = client_of("rita", django_user_model)
    response = rita.post(reverse("admin:executions_execution_delete", args=[world.done.pk]), {"post": "yes"})
    assert response.status_code == 403 and Execution.objects.filter(pk=world.done.pk).exists()


# --- another project's runs are not there -------------------------------------------------------------------------


def test_another_projects_execution_and_everything_on_it_answers_404(world, django_user_model):
    hank = client_of("hank", django_user_model)
    done, pending, step = world.done, world.pending, world.step
    before = sorted(Execution.objects.values_list("pk", "status", "name", "saved"))

    answers = {
        "change page": hank.get(change_url(done)),
        "saved run page": hank.get(reverse("admin:executions_savedexecution_change", args=[done.pk])),
        "history": hank.get(reverse("admin:executions_execution_history", args=[done.pk])),
        "Show Results": hank.get(url("step_results", done.pk, step.pk)),
        "re-run": hank.post(url("rerun", done.pk)),
        "re-run with edited parameters": hank.get(url("rerun_edited", done.pk)),
        "cancel": hank.post(url("cancel", pending.pk)),
        "save": hank.post(change_url(done), edit_form(name="Stolen", saved="on")),
    }

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 404)
    assert not any(SALES_OUTPUT in r.content.decode() or "Sales orders" in r.content.decode()
                   for r in answers.values())  # fmt: skip
    assert sorted(Execution.objects.values_list("pk", "status", "name", "saved")) == before


def test_lists_filters_and_search_show_only_the_users_projects(world, django_user_model):
    hank = client_of("hank", django_user_model)
    changelist = reverse("admin:executions_execution_changelist")

    page = hank.get(changelist).content.decode()
    searched = hank.get(changelist, {"q": world.done.short_id}).content.decode()
    by_name = hank.get(changelist, {"q": "sales_orders"}).content.decode()
    filtered = hank.get(changelist, {"package__id__exact": world.orders.pk}).content.decode()

    assert world.hr_run.short_id in page and "HR payroll" in page
    assert "0 results" in searched and "0 results" in by_name
    for shown in (page, searched, by_name, filtered):
        rows = _results(shown)  # not the search box and filter links, which echo the search term
        assert world.done.short_id not in rows and world.pending.short_id not in rows
        assert "Sales orders" not in shown and "Sales" not in _filter_choices(shown)
    assert "(None)" not in _filter_choices(page)  # the platform's packages are superusers'


def _results(page: str) -> str:
    return page.split('id="changelist-form"', 1)[1].split('id="changelist-filter"', 1)[0]


def _filter_choices(page: str) -> str:
    return page.split('id="changelist-filter"', 1)[1] if 'id="changelist-filter"' in page else ""


def test_a_chain_across_projects_shows_the_other_projects_runs_without_name_id_or_status(world, django_user_model):
    cid = "c" * 32
    root = Execution.objects.create(package=world.orders, trigger_type=TriggerType.MANUAL, correlation_id=cid)
    hr_child = Execution.objects.create(package=world.payroll, trigger_type=TriggerType.TRIGGERED,
                                        correlation_id=cid, parent_execution=root, chain_depth=1)  # fmt: skip
    sales_leaf = Execution.objects.create(package=world.orders, trigger_type=TriggerType.TRIGGERED,
                                          correlation_id=cid, parent_execution=root, chain_depth=1)  # fmt: skip
    hank = client_of("hank", django_user_model)

    page = hank.get(change_url(hr_child)).content.decode()

    assert "an execution in another project" in page  # the Sales root, as the parent and in the tree
    for secret in (root.short_id, sales_leaf.short_id, str(root.pk), "sales_orders", "Sales orders"):
        assert secret not in page
    chain = chain_of(hr_child, hank_user(django_user_model))
    assert [(n.execution.pk, n.visible) for n in chain.nodes] == [(root.pk, False), (hr_child.pk, True)]
    assert chain_of(hr_child, AnonymousUser()).nodes == []
    assert len(chain_of(hr_child, django_user_model.objects.get(username="root")).nodes) == 3


def hank_user(django_user_model):
    return django_user_model.objects.get(username="hank")


def test_an_event_shows_only_the_executions_the_user_may_see(world, django_user_model):
    platform_key, _ = ApiKey.issue("platform")
    both = event("e-both", "order.created", api_key=platform_key, status=TriggerEventStatus.STARTED)
    Execution.objects.filter(pk__in=[world.done.pk, world.hr_run.pk]).update(trigger_event=both)
    sales_only = event("e-sales", "order.sales", project=world.sales)
    nothing = event("e-none", "order.none", api_key=platform_key)
    hank, root = client_of("hank", django_user_model), client_of("root", django_user_model)

    page = hank.get(change_url(both)).content.decode()
    listing = hank.get(reverse("admin:executions_triggerevent_changelist")).content.decode()

    assert "hr_payroll" in page and "sales_orders" not in page and str(world.done.pk) not in page
    assert "a platform API key" in page and "platform (" not in page  # the key's name is the platform's
    assert "order.created" in listing and "order.sales" not in listing and "order.none" not in listing
    assert hank.get(change_url(sales_only)).status_code == 404
    assert hank.get(change_url(nothing)).status_code == 404
    assert root.get(change_url(nothing)).status_code == 200  # a platform key's event: superusers'


def event(event_id: str, type_: str, **fields) -> TriggerEvent:
    fields.setdefault("status", TriggerEventStatus.NO_SUBSCRIBERS)
    return TriggerEvent.objects.create(event_id=event_id, source="crm", type=type_, correlation_id=event_id, **fields)


# --- the dashboard ------------------------------------------------------------------------------------------------


def test_the_dashboard_counts_only_the_users_projects(world, django_user_model):
    Execution.objects.filter(pk=world.hr_run.pk).update(status=ExecutionStatus.FAILED,
                                                        status_reason="failed: HR-only reason")  # fmt: skip
    rita, root = django_user_model.objects.get(username="rita"), django_user_model.objects.get(username="root")

    page = client_of("rita", django_user_model).get("/admin/").content.decode()

    assert sum(day.total for day in dashboard.executions_per_day(rita)) == 2  # done and pending, not HR's
    assert sum(day.total for day in dashboard.executions_per_day(root)) == 3
    assert list(dashboard.latest_failures(rita)) == [] and list(dashboard.latest_failures(root)) == [world.hr_run]
    assert "HR-only reason" not in page and "HR payroll" not in page and "No failures." in page


# --- API keys -----------------------------------------------------------------------------------------------------


def test_an_owner_issues_a_project_key_with_the_scopes_they_tick(world, django_user_model):
    olga = client_of("olga", django_user_model)
    form = olga.get(reverse("admin:executions_apikey_add")).content.decode()
    assert all(f'value="{scope}"' in form for scope in ALL_API_SCOPES) and ">HR</option>" not in form

    response = olga.post(reverse("admin:executions_apikey_add"),
                         {"name": "sales crm", "project": world.sales.pk, "scopes": ["executions:read"]})  # fmt: skip

    api_key = ApiKey.objects.get(name="sales crm")
    key = response.context["key"]
    assert (api_key.project, api_key.scopes, api_key.created_by.username) == (world.sales, ["executions:read"], "olga")
    assert ApiKey.authenticate(key) == api_key and key in response.content.decode()
    entry = AuditEntry.objects.get(action=AuditAction.ISSUE_KEY)
    assert (entry.user.username, entry.project, entry.details) == (
        "olga",
        world.sales,
        {"scopes": ["executions:read"], "platform": False},
    )
    assert key not in json.dumps(entry.details) and key not in entry.object_repr


def test_an_owner_cannot_issue_platform_keys_or_keys_of_other_projects(world, django_user_model):
    olga = client_of("olga", django_user_model)
    add = reverse("admin:executions_apikey_add")

    no_project = olga.post(add, {"name": "platform", "scopes": ALL_API_SCOPES})
    other_project = olga.post(add, {"name": "hr", "project": world.hr.pk, "scopes": ALL_API_SCOPES})

    assert no_project.status_code == other_project.status_code == 200  # the form again, with its errors
    assert no_project.context["adminform"].form.errors["project"]
    assert other_project.context["adminform"].form.errors["project"]
    assert not ApiKey.objects.exists() and not AuditEntry.objects.exists()


def test_a_maintainer_may_not_issue_see_or_revoke_keys(world, django_user_model):
    sales_key, key = ApiKey.issue("sales crm", project=world.sales)
    mark = client_of("mark", django_user_model)

    answers = [
        mark.get(reverse("admin:executions_apikey_add")).status_code,
        mark.post(reverse("admin:executions_apikey_add"), {"name": "x", "project": world.sales.pk}).status_code,
        mark.get(reverse("admin:executions_apikey_changelist")).status_code,
        mark.get(change_url(sales_key)).status_code,
        mark.post(
            reverse("admin:executions_apikey_changelist"), {"action": "revoke", "_selected_action": [sales_key.pk]}
        ).status_code,  # fmt: skip
    ]

    assert answers == [403] * 5
    assert list(ApiKey.objects.all()) == [sales_key] and ApiKey.authenticate(key) == sales_key


def test_platform_keys_are_superusers_only(world, django_user_model):
    platform_key, _ = ApiKey.issue("platform")
    olga, root = client_of("olga", django_user_model), client_of("root", django_user_model)

    assert olga.get(change_url(platform_key)).status_code == 404
    assert platform_key.hint not in olga.get(reverse("admin:executions_apikey_changelist")).content.decode()
    response = root.post(reverse("admin:executions_apikey_add"), {"name": "ops", "scopes": ["git:sync"]})
    assert response.status_code == 200
    assert ApiKey.objects.filter(name="ops", project=None, scopes=["git:sync"]).exists()


def test_revoke_revokes_the_owners_keys_skips_the_others_and_audits(world, django_user_model):
    sales_key, sales = ApiKey.issue("sales crm", project=world.sales)
    platform_key, platform = ApiKey.issue("platform")
    hr_key, hr = ApiKey.issue("hr", project=world.hr)
    olga = client_of("olga", django_user_model)

    response = olga.post(reverse("admin:executions_apikey_changelist"),
                         {"action": "revoke", "_selected_action": [sales_key.pk, platform_key.pk, hr_key.pk]},
                         follow=True)  # fmt: skip

    assert ApiKey.authenticate(sales) is None
    assert ApiKey.authenticate(platform) == platform_key and ApiKey.authenticate(hr) == hr_key
    page = response.content.decode()
    assert "Revoked 1 API key" in page and "Skipped 2 API keys you may not revoke" in page
    entry = AuditEntry.objects.get(action=AuditAction.REVOKE_KEY)
    assert (entry.user.username, entry.project, entry.object_id) == ("olga", world.sales, str(sales_key.pk))


# --- the audit log of runs ----------------------------------------------------------------------------------------


def test_runs_reruns_and_cancels_are_audited_with_parameter_keys_only(world, django_user_model):
    rita = django_user_model.objects.get(username="rita")
    secret_run = trigger_execution(world.orders, trigger_type=TriggerType.MANUAL, user=rita,
                                   params={"token": SECRET_VALUE, "region": "eu"})  # fmt: skip
    client_of("rita", django_user_model).post(url("rerun", secret_run.pk))
    request_cancel(secret_run, rita)

    entries = list(AuditEntry.objects.order_by("at", "pk"))
    rerun = Execution.objects.get(rerun_of=secret_run)
    assert [(e.action, e.object_id, e.user.username) for e in entries] == [
        (AuditAction.RUN, str(secret_run.pk), "rita"),
        (AuditAction.RERUN, str(rerun.pk), "rita"),
        (AuditAction.CANCEL, str(secret_run.pk), "rita"),
    ]
    assert entries[1].details == {"trigger_type": "manual", "parameters": ["region", "token"],
                                  "rerun_of": str(secret_run.pk)}  # fmt: skip
    assert all(e.project == world.sales for e in entries)
    assert SECRET_VALUE not in json.dumps([e.details for e in entries])


def test_schedule_ticks_are_not_someones_action_and_are_not_audited(world):
    Execution.objects.filter(pk=world.done.pk).update(saved=True, schedule="* * * * *")

    assert fire(SAVED_RUN, execution_id=str(world.done.pk)) is not None
    assert not AuditEntry.objects.exists()


def test_a_cancel_that_finds_nothing_to_cancel_writes_nothing(world, django_user_model):
    rita = client_of("rita", django_user_model)
    rita.post(url("cancel", world.done.pk))  # already completed
    assert not AuditEntry.objects.exists()
