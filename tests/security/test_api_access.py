"""API key holders (README: Security model) reach only their key's scopes and project, through the real API.

Two teams share one Executor: Sales (Alice's packages) and Billing (Bob's). Each attack is made with a Sales key
against Billing, and each test asserts both that the answer gives nothing away (404 worded exactly like a missing
object, 403 naming the scope) and that Billing is untouched (no execution started, no sync queued, no event kept
in its name). Events emitted by scripts and lifecycle events are driven through `dispatch(parent=...)` and
`Lifecycle` with real execution rows, as the worker calls them.
"""

import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command

from executions.events import EventRejected, IncomingEvent, dispatch
from executions.lifecycle import EXECUTION_FINISHED, Lifecycle
from executions.models import ALL_API_SCOPES, ApiKey, ApiScope, Execution, TriggerEvent, TriggerType
from executions.services import trigger_execution
from packages.audit import AuditAction
from packages.models import AuditEntry, EventType, GitRepository, Project
from packages.trigger_events import TRIGGERED_RUN
from tests.factories import make_package

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]

ONE_STEP = {"main.py": "print('hi')"}


@pytest.fixture
def sales():
    return Project.objects.create(name="Sales")


@pytest.fixture
def billing():
    return Project.objects.create(name="Billing")


def key_for(project=None, scopes=None) -> str:
    return ApiKey.issue(f"key of {project or 'the platform'}", project=project, scopes=scopes)[1]


def subscribed(package_name: str, event_type: str, project=None, **fields):
    package = make_package(package_name, ONE_STEP, project=project, **fields)
    package.trigger_event_types.add(EventType.objects.get_or_create(name=event_type)[0])
    return package


def run_of(package, **fields) -> Execution:
    return trigger_execution(package, trigger_type=TriggerType.MANUAL, **fields)


@pytest.fixture
def api(client):
    """`api(key, "GET", path)` / `api(key, "POST", path, body)` -> (status, JSON body)."""

    def call(key: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body) if body is not None else ""
        response = client.generic(method, path, data, content_type="application/json", HTTP_X_API_KEY=key)
        return response.status_code, response.json()

    return call


def event(event_type: str, payload: dict | None = None) -> dict:
    return {"event_type": event_type, "event_source": "erp", "payload": payload or {}}


# --- scopes -------------------------------------------------------------------------------------------------------


@pytest.fixture
def endpoints(sales):
    """Each endpoint: its scope, (method, path, body), and the status it answers when allowed."""
    execution = run_of(make_package("alice_reports", ONE_STEP, project=sales))
    repository = GitRepository.objects.create(project=sales, url="https://github.com/sales/fx.git")
    subscribed("alice_listener", "sales.order_created", sales)
    return {
        "POST /fx/events": (ApiScope.EVENTS_SEND, ("POST", "/fx/events", event("sales.order_created")), 202),
        "GET /fx/executions/<id>": (ApiScope.EXECUTIONS_READ, ("GET", f"/fx/executions/{execution.id}", None), 200),
        "GET /fx/cid/<cid>": (ApiScope.EXECUTIONS_READ, ("GET", f"/fx/cid/{execution.correlation_id}", None), 200),
        "POST /fx/git/repositories/<id>/sync": (
            ApiScope.GIT_SYNC, ("POST", f"/fx/git/repositories/{repository.pk}/sync", None), 202),
        "GET /fx/git/repositories/<id>": (ApiScope.GIT_SYNC, ("GET", f"/fx/git/repositories/{repository.pk}", None),
                                          200),
    }  # fmt: skip


ENDPOINTS = ["POST /fx/events", "GET /fx/executions/<id>", "GET /fx/cid/<cid>", "POST /fx/git/repositories/<id>/sync",
             "GET /fx/git/repositories/<id>"]  # fmt: skip
SCOPE_WORDS = {"events:send": "send events", "executions:read": "read executions",
               "git:sync": "sync or read Git repositories"}  # fmt: skip


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_key_without_the_endpoints_scope_is_refused_with_403_and_changes_nothing(api, sales, endpoints,
                                                                                  enqueued, endpoint):  # fmt: skip
    scope, request, _ = endpoints[endpoint]
    others = [other for other in ALL_API_SCOPES if other != scope]
    executions, events = Execution.objects.count(), TriggerEvent.objects.count()

    for key in (key_for(sales, others), key_for(None, others), key_for(sales, [])):
        status, body = api(key, *request)

        assert status == 403, body
        assert body == {"detail": f"This API key may not {SCOPE_WORDS[scope]} (scope {scope})."}
    assert (Execution.objects.count(), TriggerEvent.objects.count()) == (executions, events)
    assert not enqueued.of("executor.sync_repository")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_key_with_only_the_endpoints_scope_is_answered(api, sales, endpoints, endpoint):
    scope, request, allowed = endpoints[endpoint]

    status, body = api(key_for(sales, [scope]), *request)

    assert status == allowed, body


# --- reads and syncs stay in the key's project ------------------------------------------------------------------


def test_another_projects_execution_answers_404_exactly_like_a_missing_one(api, sales, billing):
    bobs = run_of(make_package("bob_invoices", ONE_STEP, project=billing), params={"iban": "DE00 1234"})
    missing = uuid.uuid4()

    answers = [api(key_for(sales), "GET", f"/fx/executions/{execution_id}") for execution_id in (bobs.id, missing)]

    assert answers == [(404, {"detail": f"No execution {bobs.id}."}), (404, {"detail": f"No execution {missing}."})]
    assert api(key_for(billing), "GET", f"/fx/executions/{bobs.id}")[0] == 200
    assert api(key_for(None), "GET", f"/fx/executions/{bobs.id}")[0] == 200  # a platform key reaches everything


def test_another_projects_chain_answers_404_and_a_shared_chain_lists_only_the_keys_project(api, sales, billing):
    bobs_alone = run_of(make_package("bob_invoices", ONE_STEP, project=billing))
    alices = run_of(make_package("alice_reports", ONE_STEP, project=sales))
    bobs_in_alices_chain = run_of(make_package("bob_ledger", ONE_STEP, project=billing),
                                  correlation_id=alices.correlation_id)  # fmt: skip

    alone = api(key_for(sales), "GET", f"/fx/cid/{bobs_alone.correlation_id}")
    shared = api(key_for(sales), "GET", f"/fx/cid/{alices.correlation_id}")
    everything = api(key_for(None), "GET", f"/fx/cid/{alices.correlation_id}")

    assert alone == (404, {"detail": f"No execution with correlation id {bobs_alone.correlation_id}."})
    assert api(key_for(sales), "GET", "/fx/cid/0123abcd")[1]["detail"] == "No execution with correlation id 0123abcd."
    assert [e["execution_id"] for e in shared[1]["executions"]] == [str(alices.id)]
    assert [e["execution_id"] for e in everything[1]["executions"]] == [str(alices.id), str(bobs_in_alices_chain.id)]


def test_another_projects_repository_is_neither_synced_nor_shown(api, sales, billing, enqueued):
    bobs = GitRepository.objects.create(project=billing, url="https://github.com/billing/secret-plans.git")

    sync = api(key_for(sales), "POST", f"/fx/git/repositories/{bobs.pk}/sync")
    read = api(key_for(sales), "GET", f"/fx/git/repositories/{bobs.pk}")
    missing = api(key_for(sales), "GET", f"/fx/git/repositories/{bobs.pk + 1000}")

    assert sync == read == (404, {"detail": f"No repository {bobs.pk}."})
    assert missing == (404, {"detail": f"No repository {bobs.pk + 1000}."})
    assert not enqueued.of("executor.sync_repository")
    assert not AuditEntry.objects.filter(action=AuditAction.SYNC).exists()


def test_a_sync_through_the_api_is_queued_and_audited_with_the_key(api, billing, enqueued):
    bobs = GitRepository.objects.create(project=billing, url="https://github.com/billing/fx.git")
    key = key_for(billing)

    status, body = api(key, "POST", f"/fx/git/repositories/{bobs.pk}/sync")

    assert status == 202 and body["url"] == bobs.url
    assert enqueued.of("executor.sync_repository") == [("executor.sync_repository", [bobs.pk], "maintenance")]
    entry = AuditEntry.objects.get(action=AuditAction.SYNC)
    assert (entry.project, entry.object_id) == (billing, str(bobs.pk))
    assert entry.actor == f"API key {ApiKey.objects.get(hint=key[:12])}"


# --- events fan out within the key's project ----------------------------------------------------------------------


def test_a_project_keys_event_starts_only_its_projects_subscribers(api, sales, billing):
    alices = [subscribed(name, "invoice.paid", sales) for name in ("alice_a", "alice_b")]
    subscribed("bob_a", "invoice.paid", billing)
    subscribed("platform_a", "invoice.paid", None)

    status, body = api(key_for(sales), "POST", "/fx/events", event("invoice.paid", {"invoice": 7}))

    assert status == 202 and body["status"] == "started"
    started = Execution.objects.filter(pk__in=body["executions"])
    assert sorted(e.package_id for e in started) == [p.pk for p in alices]
    assert Execution.objects.count() == 2  # nothing of Billing's, nothing of the platform's
    assert TriggerEvent.objects.get().project == sales


def test_a_platform_keys_event_starts_every_projects_subscribers(api, sales, billing):
    for name, project in (("alice_a", sales), ("bob_a", billing), ("platform_a", None)):
        subscribed(name, "invoice.paid", project)

    status, body = api(key_for(None), "POST", "/fx/events", event("invoice.paid"))

    assert status == 202 and len(body["executions"]) == 3
    assert TriggerEvent.objects.get().project is None


def test_a_project_keys_event_is_audited_without_its_data(api, sales):
    subscribed("alice_a", "invoice.paid", sales)

    api(key_for(sales), "POST", "/fx/events", event("invoice.paid", {"card": "4111 1111 1111 1111"}))

    entry = AuditEntry.objects.get(action=AuditAction.SEND_EVENT)
    assert entry.project == sales and entry.details["started"] == ["alice_a"]
    assert "4111" not in json.dumps(entry.details)


def test_a_triggered_run_of_another_projects_package_answers_404_like_a_missing_one(api, sales, billing):
    bobs = make_package("bob_payroll", ONE_STEP, project=billing)
    missing_id = bobs.pk + 1000

    by_id = api(key_for(sales), "POST", "/fx/events", event(TRIGGERED_RUN, {"package_id": bobs.pk}))
    by_name = api(key_for(sales), "POST", "/fx/events", event(TRIGGERED_RUN, {"package_name": "bob_payroll"}))
    missing = api(key_for(sales), "POST", "/fx/events", event(TRIGGERED_RUN, {"package_id": missing_id}))

    assert by_id == (404, {"detail": f"No package with package_id {bobs.pk}."})
    assert by_name == (404, {"detail": "No package with package_name 'bob_payroll'."})
    assert missing == (404, {"detail": f"No package with package_id {missing_id}."})
    assert (Execution.objects.count(), TriggerEvent.objects.count()) == (0, 0)


def test_a_triggered_run_starts_the_keys_own_package_and_audits_the_run(api, sales):
    alices = make_package("alice_reports", ONE_STEP, project=sales)

    status, body = api(key_for(sales), "POST", "/fx/events", event(TRIGGERED_RUN, {"package_id": alices.pk}))

    assert status == 202, body
    assert Execution.objects.get().package == alices
    run = AuditEntry.objects.get(action=AuditAction.RUN)
    assert (run.project, run.object_id, run.actor.startswith("API key")) == (sales, body["executions"][0], True)


def test_a_triggered_run_is_refused_when_the_package_does_not_allow_manual_triggering(api, sales):
    locked = make_package("alice_locked", ONE_STEP, project=sales, allow_manual_triggering=False)

    for key in (key_for(sales), key_for(None)):
        status, body = api(key, "POST", "/fx/events", event(TRIGGERED_RUN, {"package_id": locked.pk}))

        assert status == 403
        assert "does not allow manual triggering" in body["detail"]
    assert (Execution.objects.count(), TriggerEvent.objects.count()) == (0, 0)


def test_a_triggered_run_of_an_inactive_package_starts_nothing(api, sales):
    asleep = make_package("alice_asleep", ONE_STEP, project=sales, active=False)

    status, body = api(key_for(sales), "POST", "/fx/events", event(TRIGGERED_RUN, {"package_id": asleep.pk}))

    assert (status, body["status"], body["executions"]) == (202, "stopped", [])
    assert "inactive" in body["statusReason"] and Execution.objects.count() == 0


def test_a_project_key_cannot_hang_its_runs_under_another_projects_execution(api, sales, billing):
    bobs = run_of(make_package("bob_invoices", ONE_STEP, project=billing))
    subscribed("alice_a", "invoice.paid", sales)

    status, body = api(key_for(sales), "POST", "/fx/events",
                       event("invoice.paid", {"_fxparentexec": str(bobs.id)}))  # fmt: skip

    assert status == 202
    child = Execution.objects.get(pk=body["executions"][0])
    assert (child.parent_execution_id, child.chain_depth) == (None, 0)
    assert not bobs.child_executions.exists()


def test_an_event_id_another_project_used_is_refused_without_its_outcome(api, sales, billing):
    subscribed("bob_a", "invoice.paid", billing)
    subscribed("alice_a", "invoice.paid", sales)
    cloud = {"specversion": "1.0", "id": "evt-1", "source": "erp", "type": "invoice.paid", "data": {}}
    first = api(key_for(billing), "POST", "/fx/events", cloud)

    status, body = api(key_for(sales), "POST", "/fx/events", cloud)

    assert first[0] == 202 and status == 409
    assert body == {"detail": "An event with this source and id was received before from another sender: send it "
                              "with a new id."}  # fmt: skip
    assert first[1]["cid"] not in json.dumps(body) and Execution.objects.count() == 1
    again = api(key_for(billing), "POST", "/fx/events", cloud)  # the same project: the first outcome, as before
    assert (again[0], again[1]["duplicate"], again[1]["executions"]) == (200, True, first[1]["executions"])


# --- events emitted by executions fan out within the emitting package's project ---------------------------------


def test_an_event_a_script_emits_starts_only_its_projects_subscribers(sales, billing):
    emitter = run_of(make_package("alice_emitter", ONE_STEP, project=sales))
    alices = subscribed("alice_listener", "invoice.paid", sales)
    subscribed("bob_listener", "invoice.paid", billing)

    outcome = dispatch(IncomingEvent(type="invoice.paid", source="alice", data={}), parent=emitter)

    assert [e.package for e in outcome.executions] == [alices]
    assert outcome.event.project == sales and outcome.event.parent_execution == emitter
    assert not Execution.objects.filter(package__project=billing).exists()


def test_a_script_cannot_trigger_another_projects_package_directly(sales, billing):
    emitter = run_of(make_package("alice_emitter", ONE_STEP, project=sales))
    bobs = make_package("bob_payroll", ONE_STEP, project=billing)

    with pytest.raises(EventRejected) as refused:
        dispatch(IncomingEvent(type=TRIGGERED_RUN, source="alice", data={"package_id": bobs.pk}), parent=emitter)

    assert (refused.value.status, str(refused.value)) == (404, f"No package with package_id {bobs.pk}.")
    assert not bobs.executions.exists() and TriggerEvent.objects.count() == 0


def test_an_event_from_a_package_of_no_project_reaches_every_project(sales, billing):
    emitter = run_of(make_package("platform_emitter", ONE_STEP))
    for name, project in (("alice_listener", sales), ("bob_listener", billing)):
        subscribed(name, "invoice.paid", project)

    outcome = dispatch(IncomingEvent(type="invoice.paid", source="platform", data={}), parent=emitter)

    assert len(outcome.executions) == 2 and outcome.event.project is None


def test_lifecycle_events_start_only_the_emitting_projects_watchers(sales, billing):
    watched = run_of(make_package("alice_watched", ONE_STEP, project=sales))
    alices = subscribed("alice_watcher", EXECUTION_FINISHED, sales)
    subscribed("bob_watcher", EXECUTION_FINISHED, billing)

    Lifecycle(watched).finished("completed")

    event = TriggerEvent.objects.get()
    assert event.project == sales and [e.package for e in event.executions.all()] == [alices]


def test_a_run_only_another_project_watches_emits_no_lifecycle_event(sales, billing):
    watched = run_of(make_package("alice_watched", ONE_STEP, project=sales))
    subscribed("bob_watcher", EXECUTION_FINISHED, billing)

    Lifecycle(watched).finished("completed")

    assert TriggerEvent.objects.count() == 0 and Execution.objects.count() == 1


# --- manage.py create_api_key -------------------------------------------------------------------------------------


def create_api_key(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_api_key_issues_a_project_key_with_the_scopes_given(sales):
    out, err = create_api_key("sales crm", "--project", "Sales", "--scope", "events:send", "--scope", "git:sync")

    key = out.strip()
    assert out == key + "\n"  # the key alone on stdout
    api_key = ApiKey.authenticate(key)
    assert (api_key.name, api_key.project, api_key.scopes) == ("sales crm", sales, ["events:send", "git:sync"])
    assert "Sales" in err and key not in err
    entry = AuditEntry.objects.get(action=AuditAction.ISSUE_KEY)
    assert (entry.actor, entry.project, entry.object_id) == ("manage.py create_api_key", sales, str(api_key.pk))
    assert key not in json.dumps(entry.details) and api_key.key_hash not in json.dumps(entry.details)


def test_create_api_key_takes_a_projects_number_too(sales):
    out, _ = create_api_key("by number", "--project", str(sales.pk))
    assert ApiKey.authenticate(out.strip()).project == sales


def test_create_api_key_without_flags_issues_a_platform_key_with_every_scope():
    out, _ = create_api_key("ci pipeline")

    api_key = ApiKey.authenticate(out.strip())
    assert (api_key.project, api_key.scopes) == (None, ALL_API_SCOPES)
    assert AuditEntry.objects.get(action=AuditAction.ISSUE_KEY).project is None


@pytest.mark.parametrize("args, message", [
    (["--project", "Marketing"], "No project 'Marketing' (projects: Sales)"),
    (["--scope", "admin:all"], "Unknown scope 'admin:all': choose from events:send, executions:read, git:sync"),
])  # fmt: skip
def test_create_api_key_refuses_an_unknown_project_or_scope_and_issues_nothing(sales, args, message):
    with pytest.raises(CommandError) as refused:
        create_api_key("typo", *args)

    assert message in str(refused.value)
    assert not ApiKey.objects.exists() and not AuditEntry.objects.exists()
