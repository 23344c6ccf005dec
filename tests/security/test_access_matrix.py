"""The role table of the README, proven through the real admin and the real API (never by asking access.can()).

Every person below (the four roles of project Sales, an owner of another project, a superuser) tries every action
of the table on Sales's objects, the way a person does it: the admin's pages, buttons, actions and forms (the form
the page renders, read as a superuser and posted by the person, so a hidden field is no protection). An allowed
action must work and leave its effect in the database; a forbidden one must answer 403/404 (or the admin's
refusal) and change nothing at all, compared row by row before and after. API keys get the same treatment: each
kind of key against each endpoint.

The people (healthchecks style): Vera viewer, Rita runner, Mark maintainer, Olga owner of Sales; Hank, owner of HR
only; Root, a superuser. All are staff users without a single model permission: roles are what counts.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from executions.models import (
    ApiKey,
    Execution,
    ExecutionStatus,
    ExecutionStep,
    StepStatus,
    TriggerEvent,
    TriggerType,
)
from packages.git_credentials import regenerate_deploy_key
from packages.models import (
    AuditEntry,
    EnvironmentVariable,
    EventType,
    GitAuth,
    GitRepository,
    Package,
    Project,
    ProjectMembership,
    Script,
    Secret,
)
from packages.trigger_events import TRIGGERED_RUN
from tests.factories import make_member, make_package, make_staff
from tests.security.admin_forms import AdminForm, admin_form

pytestmark = [pytest.mark.django_db]

ROLES = ["viewer", "runner", "maintainer", "owner"]
PEOPLE = {"vera": "viewer", "rita": "runner", "mark": "maintainer", "olga": "owner", "hank": None, "root": None}
OUTPUT_MARKER = "SALES-OUTPUT-7f3a"
PARAMETERS = {"fields": [{"type": "text", "name": "region", "label": "Region", "required": True}]}
SYNC = "executor.sync_repository"  # the task Sync now publishes (packages/git_webhook.py)


@dataclass
class World:
    sales: Project
    hr: Project
    orders: Package  # a plain package: Run
    form_package: Package  # with parameters.json: Run…
    done: Execution  # completed, with output
    step: ExecutionStep
    pending: Execution  # to cancel
    saved: Execution  # a saved run, to schedule
    event_type: EventType
    repository: GitRepository  # no authentication, a local path
    keyed_repository: GitRepository  # deploy key
    sales_key: ApiKey
    newcomer: object  # a user an owner adds as a member
    published: list  # every message published (tests/conftest.py, enqueued); .of(task) picks one task's


@pytest.fixture
def world(tmp_path, settings, django_user_model, enqueued):
    settings.EXECUTOR_GIT_ALLOW_LOCAL = True
    sales, hr = Project.objects.create(name="Sales"), Project.objects.create(name="HR")
    for username, role in PEOPLE.items():
        # No passwords: the clients log in with force_login, and hashing one costs a quarter of a second.
        if username == "root":
            django_user_model.objects.create_superuser("root", password=None)
            continue
        person = make_staff(username, password=None)
        make_member(person, sales if role else hr, role or "owner")
    orders = make_package("orders", {"main.py": "print('orders')"}, name="Sales orders", project=sales)
    form_package = make_package("regional", {"parameters.json": json.dumps(PARAMETERS), "main.py": "print(1)"},
                                project=sales)  # fmt: skip
    done = Execution.objects.create(package=orders, trigger_type=TriggerType.MANUAL, correlation_id="d" * 32,
                                    status=ExecutionStatus.COMPLETED, params={"region": "eu"})  # fmt: skip
    step = ExecutionStep.objects.create(execution=done, position=1, file_name="main.py", status=StepStatus.COMPLETED,
                                        exit_code=0, stdout=f"{OUTPUT_MARKER}\n")  # fmt: skip
    pending = Execution.objects.create(package=orders, trigger_type=TriggerType.MANUAL, correlation_id="p" * 32)
    ExecutionStep.objects.create(execution=pending, position=1, file_name="main.py")
    saved = Execution.objects.create(package=orders, trigger_type=TriggerType.MANUAL, correlation_id="s" * 32,
                                     status=ExecutionStatus.COMPLETED, saved=True, name="Weekly Sales")  # fmt: skip
    (tmp_path / "repo").mkdir()
    repository = GitRepository.objects.create(project=sales, url=f"file://{tmp_path / 'repo'}")
    keyed_repository = GitRepository.objects.create(project=sales, url="git@github.com:acme/sales.git",
                                                    auth=GitAuth.DEPLOY_KEY)  # fmt: skip
    regenerate_deploy_key(keyed_repository)
    keyed_repository.save()
    sales_key, _ = ApiKey.issue("sales crm", project=sales)
    newcomer = make_staff("newton", password=None)
    return World(sales, hr, orders, form_package, done, step, pending, saved,
                 EventType.objects.create(name="sales.order_created"), repository, keyed_repository, sales_key,
                 newcomer, enqueued)  # fmt: skip


def client_of(username: str, django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.get(username=username))
    return client


def as_root(django_user_model) -> Client:
    return client_of("root", django_user_model)


# Everything an action could change, row by row; timestamps that move on their own are left out.
WATCHED = [Project, ProjectMembership, Package, Script, EnvironmentVariable, Secret, GitRepository, Execution,
           ExecutionStep, TriggerEvent, ApiKey, AuditEntry, PeriodicTask]  # fmt: skip
MOVING = {"updated_at", "last_used_at", "heartbeat_at", "date_changed", "last_run_at"}


def snapshot(world: World) -> dict:
    state: dict = {"queued syncs": len(world.published.of(SYNC))}
    for model in WATCHED:
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in MOVING]
        rows = model.objects.order_by("pk").values_list(*fields)
        state[model.__name__] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]
    state["subscriptions"] = sorted(Package.trigger_event_types.through.objects.values_list("package", "eventtype"))
    return state


# --- the actions, each as a person does it: (perform it, did it take effect?) ----------------------------------


def change_url(obj: models.Model) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def changelist_url(model: type[models.Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def view_package(client, world, admin):
    return client.get(change_url(world.orders))


def view_execution(client, world, admin):
    return client.get(change_url(world.done))


def view_step_results(client, world, admin):
    return client.get(reverse("admin:executions_execution_step_results", args=[world.done.pk, world.step.pk]))


def run(client, world, admin):
    return client.post(reverse("admin:packages_package_run", args=[world.orders.pk]))


def ran(world) -> bool:
    return Execution.objects.filter(package=world.orders, created_by__isnull=False, rerun_of=None).exists()


def run_with_form(client, world, admin):
    return client.post(reverse("admin:packages_package_run", args=[world.form_package.pk]), {"region": "north"})


def rerun(client, world, admin):
    return client.post(reverse("admin:executions_execution_rerun", args=[world.done.pk]))


def cancel(client, world, admin):
    return client.post(reverse("admin:executions_execution_cancel", args=[world.pending.pk]))


def execution_form(world, admin, execution, **changes):
    form = admin_form(admin, change_url(execution), "execution_form")
    return form.post_data(**changes)


def save_run(client, world, admin):
    data = execution_form(world, admin, world.done, name="Monthly Sales", saved="on")
    return client.post(change_url(world.done), data)


def schedule_saved_run(client, world, admin):
    data = execution_form(world, admin, world.saved, schedule="* * * * *")
    return client.post(change_url(world.saved), data)


def package_form(admin, world):
    return admin_form(admin, change_url(world.orders), "package_form")


def edit_package(client, world, admin):
    return client.post(change_url(world.orders), package_form(admin, world).post_data(description="edited"))


def add_script(client, world, admin):
    form = package_form(admin, world)
    form.add_row(form.prefix_with("upload"), position="9", upload=SimpleUploadedFile("added.py", b"print(2)"))
    return client.post(change_url(world.orders), form.data)


def add_env_var(client, world, admin):
    form = package_form(admin, world)
    form.add_row("environment_variables", name="REGION", value="eu")
    return client.post(change_url(world.orders), form.data)


def write_package_secret(client, world, admin):
    form = package_form(admin, world)
    form.add_row("secrets", name="PACKAGE_TOKEN", value="tok-package-1")
    return client.post(change_url(world.orders), form.data)


def change_subscriptions(client, world, admin):
    data = package_form(admin, world).post_data(trigger_event_types=[str(world.event_type.pk)])
    return client.post(change_url(world.orders), data)


def add_repository(client, world, admin):
    form = admin_form(admin, reverse("admin:packages_gitrepository_add"), "gitrepository_form")
    data = form.post_data(project=str(world.sales.pk), url=f"{world.repository.url}-new", branch="main",
                          auth=GitAuth.NONE)  # fmt: skip
    return client.post(reverse("admin:packages_gitrepository_add"), data)


def edit_repository(client, world, admin):
    data = admin_form(admin, change_url(world.repository), "gitrepository_form").post_data(branch="release")
    return client.post(change_url(world.repository), data)


def repository_action(action: str, repository_attr: str):
    def perform(client, world, admin):
        selected = getattr(world, repository_attr).pk
        return client.post(changelist_url(GitRepository), {"action": action, "_selected_action": [selected]})

    return perform


def project_form(admin, world):
    return admin_form(admin, change_url(world.sales), "project_form")


def add_member(client, world, admin):
    form = project_form(admin, world)
    form.add_row(form.prefix_with("role"), user=world.newcomer.username, role="viewer")  # typed, as a person does
    return client.post(change_url(world.sales), form.data)


def write_project_secret(client, world, admin):
    form = project_form(admin, world)
    form.add_row("secrets", name="PROJECT_TOKEN", value="tok-project-1")
    return client.post(change_url(world.sales), form.data)


def issue_key(client, world, admin):
    form = admin_form(admin, reverse("admin:executions_apikey_add"), "apikey_form")
    data = form.post_data(name="issued in the matrix", project=str(world.sales.pk), scopes=["executions:read"])
    return client.post(reverse("admin:executions_apikey_add"), data)


def revoke_key(client, world, admin):
    return client.post(changelist_url(ApiKey), {"action": "revoke", "_selected_action": [world.sales_key.pk]})


def shows(text: Callable[[World], str]):
    """A page's effect: it shows `text` (a view changes nothing)."""
    return ("page", text)


@dataclass(frozen=True)
class Act:
    perform: Callable
    least_role: str
    effect: Callable[[World], bool] | tuple
    # A field the admin shows read-only to those who may not change it: posting it anyway is ignored, as Django's
    # admin ignores every read-only field, provided the page they get really has no input for it.
    read_only: tuple[Callable[[World], models.Model], str] | None = None


ACTIONS: dict[str, Act] = {
    "view package": Act(view_package, "viewer", shows(lambda w: w.orders.name)),
    "view execution": Act(view_execution, "viewer", shows(lambda w: str(w.done.pk))),
    "view step results": Act(view_step_results, "viewer", shows(lambda w: OUTPUT_MARKER)),
    "run": Act(run, "runner", ran),
    "run with the run form": Act(run_with_form, "runner",
                                 lambda w: Execution.objects.filter(package=w.form_package,
                                                                    params__region="north").exists()),
    "re-run": Act(rerun, "runner", lambda w: Execution.objects.filter(rerun_of=w.done).exists()),
    "cancel": Act(cancel, "runner",
                  lambda w: Execution.objects.get(pk=w.pending.pk).status == ExecutionStatus.CANCELLED),
    "save and name a run": Act(save_run, "runner",
                               lambda w: Execution.objects.filter(pk=w.done.pk, name="Monthly Sales",
                                                                  saved=True).exists()),
    "schedule a saved run": Act(schedule_saved_run, "maintainer",
                                lambda w: Execution.objects.get(pk=w.saved.pk).schedule == "* * * * *",
                                read_only=(lambda w: w.saved, "schedule")),
    "edit a package": Act(edit_package, "maintainer",
                          lambda w: Package.objects.get(pk=w.orders.pk).description == "edited"),
    "add a script": Act(add_script, "maintainer",
                        lambda w: Script.objects.filter(package=w.orders, file_name="added.py").exists()),
    "add an env var": Act(add_env_var, "maintainer",
                          lambda w: EnvironmentVariable.objects.filter(package=w.orders, name="REGION").exists()),
    "write a package secret": Act(write_package_secret, "maintainer",
                                  lambda w: Secret.objects.filter(package=w.orders, name="PACKAGE_TOKEN").exists()),
    "change subscriptions": Act(change_subscriptions, "maintainer",
                                lambda w: w.orders.trigger_event_types.filter(pk=w.event_type.pk).exists()),
    "add a Git repository": Act(add_repository, "maintainer",
                                lambda w: GitRepository.objects.filter(url__endswith="-new").exists()),
    "edit a Git repository": Act(edit_repository, "maintainer",
                                 lambda w: GitRepository.objects.get(pk=w.repository.pk).branch == "release"),
    "Sync now": Act(repository_action("sync_now", "repository"), "maintainer",
                    lambda w: (SYNC, [w.repository.pk], "maintenance") in w.published),
    "regenerate deploy keys": Act(repository_action("regenerate_keys", "keyed_repository"), "maintainer",
                                  lambda w: GitRepository.objects.get(pk=w.keyed_repository.pk).deploy_public_key
                                  != w.keyed_repository.deploy_public_key),
    "add a member": Act(add_member, "owner",
                        lambda w: ProjectMembership.objects.filter(user=w.newcomer, project=w.sales).exists()),
    "issue a project API key": Act(issue_key, "owner",
                                   lambda w: ApiKey.objects.filter(name="issued in the matrix", project=w.sales,
                                                                   scopes=["executions:read"]).exists()),
    "revoke a key": Act(revoke_key, "owner", lambda w: ApiKey.objects.get(pk=w.sales_key.pk).revoked_at is not None),
    "write a project secret": Act(write_project_secret, "owner",
                                  lambda w: Secret.objects.filter(project=w.sales, name="PROJECT_TOKEN").exists()),
}  # fmt: skip


def may(person: str, act: Act) -> bool:
    if person == "root":
        return True
    role = PEOPLE[person]
    return role is not None and ROLES.index(role) >= ROLES.index(act.least_role)


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("person", list(PEOPLE))
def test_each_person_may_do_exactly_what_their_role_allows(person, action, world, django_user_model):
    act = ACTIONS[action]
    allowed = may(person, act)
    client, admin = client_of(person, django_user_model), as_root(django_user_model)
    before = snapshot(world)

    response = act.perform(client, world, admin)

    assert response.status_code < 500, response.content.decode()[:2000]
    if isinstance(act.effect, tuple):  # a page: shown to those who may see it, 403/404 to everyone else
        marker = act.effect[1](world)
        if allowed:
            assert response.status_code == 200 and marker in response.content.decode()
        else:
            assert response.status_code in (403, 404)
            assert marker not in response.content.decode()
        assert snapshot(world) == before
        return
    if allowed:
        assert response.status_code in (200, 302), response.content.decode()[:2000]
        assert act.effect(world), f"{person} may {action}, but it did not happen ({response.status_code})"
        assert_audited(person, action, world, django_user_model)
    else:
        assert not act.effect(world), f"{person} may not {action}, but it happened"
        assert snapshot(world) == before, f"{person} may not {action}, but something changed"
        refused = response.status_code in (403, 404) or _admin_refusal(response) or _read_only(client, world, act)
        assert refused, f"{person} may not {action}: expected 403/404 or a refusal, got {response.status_code}"


SECRET_VALUES = ("tok-package-1", "tok-project-1")


def assert_audited(person: str, action: str, world: World, django_user_model) -> None:
    """An action that changed something is in the project's audit log under the person's name, without a value
    of any secret it wrote."""
    user = django_user_model.objects.get(username=person)
    assert AuditEntry.objects.filter(user=user, project=world.sales).exists(), f"{action} by {person}: no entry"
    logged = json.dumps(list(AuditEntry.objects.values("object_repr", "details")), default=str)
    assert not any(value in logged for value in SECRET_VALUES)


def _read_only(client, world, act: Act) -> bool:
    if act.read_only is None:
        return False
    obj, field = act.read_only[0](world), act.read_only[1]
    page = client.get(change_url(obj))
    return page.status_code == 200 and field not in admin_form_names(page)


def admin_form_names(page) -> set[str]:
    return AdminForm(page.content.decode()).names


def _admin_refusal(response) -> bool:
    """The admin's other ways of saying no without changing anything: a form shown again with its errors (e.g. a
    project that is not among the choices), the list shown again for an action it does not offer, or a redirect
    back to the list."""
    if response.status_code == 200:
        context = response.context or {}
        errors = context.get("errors") or (context.get("adminform") and context["adminform"].form.errors)
        return bool(errors) or "cl" in context
    # Back to the list: an action on objects outside the user's list acts on none of them.
    return response.status_code == 302 and response["Location"] == response.wsgi_request.get_full_path()


# --- API keys: each kind of key against each endpoint, on Sales's objects ---------------------------------------

KEYS = {
    "Sales key, every scope": ("sales", None),
    "Sales key without the scope": ("sales", "missing"),
    "HR key, every scope": ("hr", None),
    "platform key": (None, None),
}


def api_send_event(client, world, key):
    event = {"specversion": "1.0", "type": TRIGGERED_RUN, "source": "matrix", "id": "m-1",
             "data": {"package_name": world.orders.package_name}}  # fmt: skip
    return client.post("/fx/events", json.dumps(event), content_type="application/cloudevents+json",
                       headers={"X-API-KEY": key})  # fmt: skip


def api_read_execution(client, world, key):
    return client.get(f"/fx/executions/{world.done.pk}", headers={"X-API-KEY": key})


def api_read_chain(client, world, key):
    return client.get(f"/fx/cid/{world.done.correlation_id}", headers={"X-API-KEY": key})


def api_sync(client, world, key):
    return client.post(f"/fx/git/repositories/{world.repository.pk}/sync", headers={"X-API-KEY": key})


def api_read_repository(client, world, key):
    return client.get(f"/fx/git/repositories/{world.repository.pk}", headers={"X-API-KEY": key})


ENDPOINTS = {
    "POST /fx/events (triggered_run)": ("events:send", api_send_event,
                                         lambda w, r: r.status_code == 202 and Execution.objects.filter(
                                             package=w.orders, trigger_type=TriggerType.TRIGGERED).exists()),
    "GET /fx/executions/<id>": ("executions:read", api_read_execution,
                                lambda w, r: r.status_code == 200 and r.json()["execution_id"] == str(w.done.pk)),
    "GET /fx/cid/<cid>": ("executions:read", api_read_chain,
                          lambda w, r: r.status_code == 200 and len(r.json()["executions"]) == 1),
    "POST /fx/git/repositories/<id>/sync": ("git:sync", api_sync,
                                            lambda w, r: r.status_code == 202 and bool(w.published.of(SYNC))),
    "GET /fx/git/repositories/<id>": ("git:sync", api_read_repository,
                                      lambda w, r: r.status_code == 200 and r.json()["id"] == w.repository.pk),
}  # fmt: skip


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("kind", list(KEYS))
def test_each_key_reaches_exactly_its_project_and_scopes(kind, endpoint, world, client):
    scope, perform, worked = ENDPOINTS[endpoint]
    project_name, narrowed = KEYS[kind]
    project = {"sales": world.sales, "hr": world.hr, None: None}[project_name]
    scopes = [s for s in ["events:send", "executions:read", "git:sync"] if not (narrowed and s == scope)]
    _, key = ApiKey.issue(kind, project=project, scopes=scopes)
    before = snapshot(world)

    response = perform(client, world, key)

    if project_name in ("sales", None) and not narrowed:
        assert worked(world, response), (response.status_code, response.content.decode()[:500])
        return
    # Without the scope: 403 before anything is looked up; another project's object: 404, like a missing one.
    assert response.status_code == (403 if narrowed else 404), response.content.decode()[:500]
    body = response.content.decode()  # the answer may repeat what was asked for, never what is behind it
    assert world.repository.url not in body and "steps" not in body and "execution_id" not in body
    after = snapshot(world)
    after.pop("ApiKey"), before.pop("ApiKey")  # the key's own last use is recorded
    assert after == before


def test_a_direct_trigger_honours_allow_manual_triggering_even_with_a_platform_key(world, client):
    Package.objects.filter(pk=world.orders.pk).update(allow_manual_triggering=False)
    _, key = ApiKey.issue("platform")

    response = api_send_event(client, world, key)

    assert response.status_code == 403, response.content.decode()
    assert not Execution.objects.filter(trigger_type=TriggerType.TRIGGERED).exists()


# --- the attacks of the issue, by staff users holding only the old model permissions ---------------------------


def legacy_staff(username: str, *codenames: str):
    user = make_staff(username, password=None)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def test_a_user_with_only_add_apikey_can_no_longer_issue_a_key(world, client):
    client.force_login(legacy_staff("kim", "add_apikey", "view_apikey"))

    response = client.post(reverse("admin:executions_apikey_add"), {"name": "mine", "scopes": ["events:send"]})

    assert response.status_code in (403, 404) or _admin_refusal(response)
    assert not ApiKey.objects.filter(name="mine").exists()


def test_a_user_with_only_run_package_cannot_run_a_package(world, client):
    client.force_login(legacy_staff("ron", "run_package"))

    client.post(reverse("admin:packages_package_run", args=[world.orders.pk]))

    assert Execution.objects.count() == 3


def test_a_user_with_change_execution_cannot_schedule_another_teams_saved_run(world, client, django_user_model):
    client.force_login(legacy_staff("cid", "change_execution", "view_execution"))
    data = execution_form(world, as_root(django_user_model), world.saved, schedule="* * * * *")

    response = client.post(change_url(world.saved), data)

    assert response.status_code in (403, 404)
    assert Execution.objects.get(pk=world.saved.pk).schedule == ""


def test_a_user_with_view_execution_cannot_read_another_teams_results(world, client):
    client.force_login(legacy_staff("val", "view_execution", "view_package"))

    response = client.get(reverse("admin:executions_execution_step_results", args=[world.done.pk, world.step.pk]))

    assert response.status_code in (403, 404)
    assert OUTPUT_MARKER not in response.content.decode()
