"""Cross-project isolation: Olga, owner of Sales, walks everything the admin and the API offer her, and nothing of HR
ever shows up: no name, no id, no output, no link, no count.

HR holds one of everything, each carrying the marker "QX9HR" somewhere in what a page would print (its name, its
output, its URL, its event id); HR's executions share a chain with a Sales execution, and subscribe to the same
event type, so the places where the two projects meet are walked too. Every page Olga can open must be free of the
marker, of HR's execution ids and of links to HR's objects; every HR object's URL must answer 404, in the admin and
in the API (with a Sales key). The dashboard and the lists must not even count HR: each page is rendered again after
HR is deleted and must come out the same.
"""

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import models
from django.test import Client
from django.urls import NoReverseMatch, reverse

from executions.models import (
    ApiKey,
    Delivery,
    Execution,
    ExecutionStatus,
    ExecutionStep,
    NotificationRule,
    StepStatus,
    TriggerEvent,
    TriggerEventStatus,
    TriggerType,
)
from packages.audit import AuditAction, record
from packages.models import (
    AuditEntry,
    EnvironmentVariable,
    EventType,
    GitRepository,
    Package,
    Project,
    SecretScope,
)
from packages.trigger_events import TRIGGERED_RUN
from tests.factories import add_secret, make_member, make_package, make_staff

pytestmark = [pytest.mark.django_db]

MARKER = "qx9hr"  # compared case-insensitively
SHARED_CID = "c" * 32  # a chain that started in Sales and reached HR (data from before events stayed in a project)


@dataclass
class Side:
    project: Project
    package: Package
    done: Execution
    step: ExecutionStep
    pending: Execution
    saved: Execution
    event: TriggerEvent
    repository: GitRepository
    api_key: ApiKey
    audit: AuditEntry
    extra: list = field(default_factory=list)  # more objects whose URLs are checked

    def objects(self) -> list[models.Model]:
        return [self.project, self.package, self.done, self.pending, self.saved, self.event, self.repository,
                self.api_key, self.audit, *self.extra]  # fmt: skip


def build_side(name: str, *, marker: str, event_type: EventType, tmp_path, parent: Execution | None = None) -> Side:
    """A project with one of everything; `marker` goes into every name and output a page could print."""
    project = Project.objects.create(name=f"{name} {marker}".strip())
    package = make_package(f"{name.lower()}_main{marker}", {"main.py": f"print('{marker}')"},
                           name=f"{name} package {marker}".strip(), project=project)  # fmt: skip
    package.trigger_event_types.add(event_type)
    EnvironmentVariable.objects.create(package=package, name=f"VAR_{marker.upper()}", value=marker)
    add_secret(package, name=f"PACKAGE_SECRET_{marker}", value=f"package-value-{marker}")
    add_secret(project=project, name=f"PROJECT_SECRET_{marker}", value=f"project-value-{marker}",
               scope=SecretScope.PROJECT)  # fmt: skip
    event = TriggerEvent.objects.create(event_id=f"{name}-event-{marker}", source=f"{name}-source-{marker}",
                                        type=event_type.name, correlation_id=SHARED_CID, project=project,
                                        status=TriggerEventStatus.STARTED, data={"note": marker})  # fmt: skip
    done = Execution.objects.create(package=package, trigger_type=TriggerType.TRIGGERED, correlation_id=SHARED_CID,
                                    status=ExecutionStatus.FAILED, trigger_event=event, parent_execution=parent,
                                    chain_depth=1 if parent else 0, params={"who": marker})  # fmt: skip
    step = ExecutionStep.objects.create(execution=done, position=1, file_name="main.py", status=StepStatus.FAILED,
                                        exit_code=3, stdout=f"output {marker}", stderr=f"error {marker}")  # fmt: skip
    pending = Execution.objects.create(package=package, trigger_type=TriggerType.MANUAL, correlation_id="p" * 31 +
                                       ("h" if marker else "s"), status=ExecutionStatus.IN_PROGRESS)  # fmt: skip
    saved = Execution.objects.create(package=package, trigger_type=TriggerType.MANUAL, correlation_id="s" * 32,
                                     status=ExecutionStatus.COMPLETED, saved=True, name=f"Saved run {marker}",
                                     schedule="0 6 * * *")  # fmt: skip
    (tmp_path / f"repo-{name}{marker}").mkdir()
    repository = GitRepository.objects.create(project=project, url=f"file://{tmp_path}/repo-{name}{marker}")
    api_key, _ = ApiKey.issue(f"{name} key {marker}", project=project)
    audit = record(AuditAction.RUN, done, actor=f"{name} person {marker}")
    rule = NotificationRule.objects.create(name=f"{name} rule {marker}", project=project,
                                           email_to=f"{name.lower()}{marker}@example.com")  # fmt: skip
    delivery = Delivery.objects.create(rule=rule, execution=done, event="failure", status="failed",
                                       last_error=f"error {marker}", next_attempt_at=done.created_at)  # fmt: skip
    return Side(project, package, done, step, pending, saved, event, repository, api_key, audit,
                extra=[rule, delivery])  # fmt: skip


@pytest.fixture
def sides(tmp_path, settings):
    settings.EXECUTOR_GIT_ALLOW_LOCAL = True
    event_type = EventType.objects.create(name="staff.hired")
    sales = build_side("Sales", marker="", event_type=event_type, tmp_path=tmp_path)
    hr = build_side("HR", marker=MARKER, event_type=event_type, tmp_path=tmp_path, parent=sales.done)
    hank = make_staff("hank", password=None)
    make_member(hank, hr.project, "owner")
    return sales, hr


@pytest.fixture
def olga(sides, django_user_model) -> Client:
    sales, _ = sides
    person = make_staff("olga", password=None)
    make_member(person, sales.project, "owner")
    client = Client()
    client.force_login(person)
    return client


# --- what must never appear -------------------------------------------------------------------------------------


def object_url(obj: models.Model) -> str | None:
    opts = obj._meta
    try:
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return None


def hr_traces(hr: Side) -> list[str]:
    """What a page leaking HR would contain: the marker, HR's execution ids (full and as listed), HR's URLs."""
    ids = [str(e.pk) for e in (hr.done, hr.pending, hr.saved)] + [e.short_id for e in (hr.done, hr.pending, hr.saved)]
    urls = [url for url in map(object_url, hr.objects()) if url]
    urls += [reverse("admin:executions_execution_step_results", args=[hr.done.pk, hr.step.pk]),
             reverse("admin:packages_package_run", args=[hr.package.pk])]  # fmt: skip
    return [MARKER, *ids, *(f'href="{url}"' for url in urls)]


def assert_no_trace(url: str, body: str, hr: Side) -> None:
    lowered = body.lower()
    for trace in hr_traces(hr):
        assert trace.lower() not in lowered, f"{url} shows {trace!r} of HR"


# --- the pages Olga can reach ----------------------------------------------------------------------------------


def changelists() -> list[str]:
    return [reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_changelist") for m in admin.site._registry]


def searches(hr: Side) -> list[str]:
    """Every list searched for HR by its marker, an execution id (full, short, as a correlation id) and its key."""
    terms = [MARKER, str(hr.done.pk), hr.done.short_id, hr.pending.correlation_id, hr.api_key.hint, hr.event.event_id]
    return [f"{url}?q={term}" for url in changelists() for term in terms]


def filtered(sales: Side, hr: Side) -> list[str]:
    """Lists filtered by HR's project or package, as a hand-edited URL would ask."""
    execution_list = reverse("admin:executions_execution_changelist")
    return [f"{execution_list}?package__project__id__exact={hr.project.pk}",
            f"{execution_list}?package__id__exact={hr.package.pk}",
            f"{reverse('admin:packages_package_changelist')}?project__id__exact={hr.project.pk}",
            f"{reverse('admin:packages_auditentry_changelist')}?project__id__exact={hr.project.pk}"]  # fmt: skip


def sales_pages(sales: Side) -> list[str]:
    """Every page of Sales's objects: change pages (the chain tree is on the execution's), results, run pages."""
    pages = [url for url in map(object_url, sales.objects()) if url]
    pages += [
        reverse("admin:executions_execution_step_results", args=[sales.done.pk, sales.step.pk]),
        reverse("admin:packages_package_run", args=[sales.package.pk]),
        reverse("admin:executions_execution_rerun_edited", args=[sales.done.pk]),
        reverse("admin:executions_savedexecution_change", args=[sales.saved.pk]),
        reverse("admin:packages_package_add"),
        reverse("admin:packages_gitrepository_add"),
        reverse("admin:executions_apikey_add"),
    ]
    return pages


def autocompletes() -> list[str]:
    """Django's autocomplete endpoint for every relation to a model the admin has (it answers for any of them)."""
    urls = []
    for model in apps.get_models():
        for relation in model._meta.get_fields():
            if relation.is_relation and not relation.auto_created and relation.related_model in admin.site._registry:
                query = (
                    f"app_label={model._meta.app_label}&model_name={model._meta.model_name}&field_name={relation.name}"
                )
                urls += [f"/admin/autocomplete/?{query}", f"/admin/autocomplete/?{query}&term={MARKER}"]
    return urls


def without_the_question(url: str, body: str) -> str:
    """A list repeats the search term Olga typed (the search box, its links): that echo is hers, not HR's."""
    query = parse_qs(urlsplit(url).query)
    body = body.lower()
    for term in query.get("q", []) + query.get("term", []):
        for echo in (f'value="{term}"', f"q={term}", f"q%3d{term}", f"term={term}"):
            body = body.replace(echo.lower(), "")
    return body


def get(client: Client, url: str):
    response = client.get(url)
    assert response.status_code in (200, 302, 403, 404), f"{url}: {response.status_code}"
    return response


def test_no_page_olga_can_open_shows_anything_of_hr(sides, olga):
    sales, hr = sides
    urls = ["/admin/", *changelists(), *searches(hr), *filtered(sales, hr), *sales_pages(sales), *autocompletes()]
    opened = 0
    for url in urls:
        response = get(olga, url)
        assert_no_trace(url, without_the_question(url, response.content.decode()), hr)
        opened += response.status_code == 200
    assert opened > 60  # she really saw the pages: a login form everywhere would pass the loop above


def test_olga_sees_her_own_project_where_hr_is_hidden(sides, olga):
    """The other half of the proof: the same pages do show Sales's objects, so an empty page is not what passed."""
    sales, hr = sides
    index = olga.get("/admin/").content.decode()
    assert olga.get(reverse("admin:packages_package_changelist")).content.decode().count(sales.package.name) >= 1
    execution_page = olga.get(object_url(sales.done)).content.decode()
    assert sales.done.short_id in execution_page
    assert "Sales" in index
    results = olga.get(reverse("admin:executions_execution_step_results", args=[sales.done.pk, sales.step.pk]))
    assert "output" in results.content.decode() and "error" in results.content.decode()


def test_the_chain_tree_of_a_sales_execution_leaves_out_its_hr_child(sides, olga):
    sales, hr = sides
    assert Execution.objects.filter(parent_execution=sales.done, package=hr.package).exists()  # the chain is real

    page = olga.get(object_url(sales.done)).content.decode()

    assert_no_trace(object_url(sales.done), page, hr)
    assert hr.package.package_name not in page


def test_every_url_of_an_hr_object_answers_404(sides, olga, enqueued):
    _, hr = sides
    urls = [url for url in map(object_url, hr.objects()) if url]
    urls += [
        reverse("admin:executions_execution_step_results", args=[hr.done.pk, hr.step.pk]),
        reverse("admin:executions_execution_rerun_edited", args=[hr.done.pk]),
        reverse("admin:executions_savedexecution_change", args=[hr.saved.pk]),
        reverse("admin:packages_package_run", args=[hr.package.pk]),
        reverse("admin:packages_script_download", args=[hr.package.scripts.get().pk]),
        reverse("admin:packages_package_history", args=[hr.package.pk]),
        reverse("admin:packages_package_delete", args=[hr.package.pk]),
    ]
    for url in urls:
        response = olga.get(url)
        assert response.status_code == 404, f"{url}: {response.status_code}"
        assert_no_trace(url, response.content.decode(), hr)
    posts = [reverse("admin:packages_package_run", args=[hr.package.pk]),
             reverse("admin:executions_execution_rerun", args=[hr.done.pk]),
             reverse("admin:executions_execution_cancel", args=[hr.pending.pk])]  # fmt: skip
    for url in posts:
        assert olga.post(url).status_code == 404, url
    assert Execution.objects.filter(package=hr.package).count() == 3
    assert Execution.objects.get(pk=hr.pending.pk).cancel_requested_at is None


def normalised(body: str) -> str:
    """The page without what differs on every load: the CSRF token, and the package page's sample event (a new id
    and time each time)."""
    body = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", body)
    body = re.sub(r"&quot;id&quot;: &quot;[0-9a-f]{32}&quot;", "", body)
    return re.sub(r"&quot;time&quot;: &quot;[^&]+&quot;", "", body)


def test_the_dashboard_and_the_lists_do_not_even_count_hr(sides, olga):
    """Each page Olga sees is the same with HR's data as without it: no count, total or figure includes HR."""
    sales, hr = sides
    urls = ["/admin/", *changelists(), *sales_pages(sales)]
    before = {url: normalised(olga.get(url).content.decode()) for url in urls}

    Execution.objects.filter(package=hr.package).delete()
    TriggerEvent.objects.filter(project=hr.project).delete()
    AuditEntry.objects.filter(project=hr.project).delete()
    hr.package.delete()
    GitRepository.objects.filter(project=hr.project).delete()
    hr.project.delete()  # its keys, secrets and members with it

    for url in urls:
        assert normalised(olga.get(url).content.decode()) == before[url], f"{url} changed when HR was deleted"


# --- the API, with a key of Sales ------------------------------------------------------------------------------


@pytest.fixture
def sales_key(sides) -> str:
    sales, _ = sides
    return ApiKey.issue("sales integration", project=sales.project)[1]


def test_every_api_endpoint_answers_404_for_hr_objects_to_a_sales_key(sides, sales_key, client, enqueued):
    _, hr = sides
    headers = {"X-API-KEY": sales_key}
    answers = {
        "execution": client.get(f"/fx/executions/{hr.done.pk}", headers=headers),
        "chain": client.get(f"/fx/cid/{hr.pending.correlation_id}", headers=headers),
        "repository": client.get(f"/fx/git/repositories/{hr.repository.pk}", headers=headers),
        "sync": client.post(f"/fx/git/repositories/{hr.repository.pk}/sync", headers=headers),
        "triggered_run": send(client, headers, TRIGGERED_RUN, {"package_name": hr.package.package_name}),
        "triggered_run by id": send(client, headers, TRIGGERED_RUN, {"package_id": hr.package.pk}),
    }
    for name, response in answers.items():
        assert response.status_code == 404, (name, response.content)
        assert MARKER not in response.content.decode().replace(hr.package.package_name, ""), name
    assert not enqueued.of("executor.sync_repository")
    assert Execution.objects.filter(package=hr.package).count() == 3


def test_a_shared_chain_read_with_a_sales_key_holds_only_sales_executions(sides, sales_key, client):
    sales, hr = sides

    response = client.get(f"/fx/cid/{SHARED_CID}", headers={"X-API-KEY": sales_key})

    assert response.status_code == 200
    assert [e["execution_id"] for e in response.json()["executions"]] == [str(sales.done.pk)]
    assert MARKER not in response.content.decode().lower()


def test_an_event_sent_with_a_sales_key_fans_out_only_to_sales_subscribers(sides, sales_key, client, enqueued):
    sales, hr = sides
    response = send(client, {"X-API-KEY": sales_key}, "staff.hired", {"name": "Ann"})

    assert response.status_code == 202, response.content
    started = Execution.objects.filter(pk__in=response.json()["executions"])
    assert [e.package for e in started] == [sales.package]
    assert Execution.objects.filter(package=hr.package).count() == 3
    event = TriggerEvent.objects.get(event_id=response.json()["eventId"])
    assert event.project == sales.project


def send(client: Client, headers: dict, event_type: str, data: dict):
    event = {"specversion": "1.0", "type": event_type, "source": "isolation-test", "id": f"{event_type}-{len(data)}"
             f"-{json.dumps(data, sort_keys=True)}"[:200], "data": data}  # fmt: skip
    return client.post("/fx/events", json.dumps(event), content_type="application/cloudevents+json", headers=headers)
