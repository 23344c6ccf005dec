"""POST /fx/events, GET /fx/executions/<id>, GET /fx/cid/<cid> through Django's test client and PostgreSQL.

The broker is replaced by a recorder here (what the worker does is tests/e2e/test_events.py's subject).
"""

import json
import uuid

import pytest
from django.contrib.staticfiles import finders
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from openapi_spec_validator import validate

from executions.models import ApiKey, Execution, TriggerEvent, TriggerType
from executions.services import trigger_execution
from packages.importer import import_package_files
from packages.models import EventType
from packages.trigger_events import trigger_event_for
from tests.event_bodies import BAD_INPUT, BRIDGE, cloud_event
from tests.factories import make_package

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]

ONE_STEP = {"main.py": "print('hi')"}


@pytest.fixture
def key():
    return ApiKey.issue("tests")[1]


@pytest.fixture
def post(client, key):
    def post(body, content_type="application/json", **headers):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return client.post("/fx/events", data, content_type=content_type, headers={"X-API-KEY": key, **headers})

    return post


def subscribed(package_name: str, event_type: str, **fields):
    package = make_package(package_name, ONE_STEP, **fields)
    package.trigger_event_types.add(EventType.objects.get_or_create(name=event_type)[0])
    return package


def test_an_event_starts_every_active_subscribed_package(post, django_capture_on_commit_callbacks, enqueued):
    for name in ("alice_a", "alice_b", "alice_c"):
        subscribed(name, "sales.order_created")
    subscribed("bob_inactive", "sales.order_created", active=False)
    make_package("charlie_other", ONE_STEP)

    with django_capture_on_commit_callbacks(execute=True):
        response = post({"event_type": "sales.order_created", "event_source": "shop", "payload": {"order": 42}})

    assert response.status_code == 202, response.content
    body = response.json()
    executions = Execution.objects.filter(pk__in=body["executions"]).select_related("package", "trigger_event")
    assert sorted(e.package.package_name for e in executions) == ["alice_a", "alice_b", "alice_c"]
    assert {e.correlation_id for e in executions} == {body["cid"]}
    assert {e.trigger_type for e in executions} == {TriggerType.TRIGGERED}
    assert all(e.params == {"order": 42} and e.trigger_event.type == "sales.order_created" for e in executions)
    assert body["eventType"] == "sales.order_created" and body["status"] == "started"
    assert len(enqueued) == 3  # after the one transaction committed
    event = TriggerEvent.objects.get()
    assert (event.source, event.data, event.api_key.name) == ("shop", {"order": 42}, "tests")


def test_an_event_takes_the_same_few_queries_however_many_packages_it_starts(post, django_capture_on_commit_callbacks,
                                                                          enqueued):  # fmt: skip
    post({"event_type": "warm.up", "event_source": "shop", "payload": {}})  # the key's last use, written once a minute
    queries = {}
    for fan_out in (1, 8):
        for n in range(fan_out):
            subscribed(f"alice_{fan_out}_{n}", f"orders.batch_{fan_out}")
        with CaptureQueriesContext(connection) as captured, django_capture_on_commit_callbacks(execute=True):
            response = post({"event_type": f"orders.batch_{fan_out}", "event_source": "shop", "payload": {}})
        assert response.status_code == 202 and len(response.json()["executions"]) == fan_out
        # Savepoints are the test's transaction around the event's own (BEGIN / COMMIT otherwise, not counted).
        queries[fan_out] = [q["sql"] for q in captured if "SAVEPOINT" not in q["sql"]]

    # The key, the packages with their scripts, the event, its executions, their steps, the audit entry: no UPDATE
    # after the publish (the runs are stamped enqueued at their INSERT, executions/queueing.py).
    assert len(queries[8]) == len(queries[1]) == 6, "\n".join(queries[8])
    assert not any("executions_apikey" in sql and sql.startswith("UPDATE") for sql in queries[1] + queries[8])
    assert ApiKey.objects.get().last_used_at is not None
    assert len(enqueued) == 1 + 8


def test_a_fanned_out_run_has_steps_only_for_the_scripts_its_manifest_lists(post):
    files = {"manifest.json": b'{"execution_order": ["app.py"], "trigger_events": ["sales.order_created"]}',
             "__init__.py": b"", "app.py": b"import helpers", "helpers.py": b""}  # fmt: skip
    import_package_files("erin_listed", files)

    body = post({"event_type": "sales.order_created", "event_source": "shop", "payload": {}}).json()

    execution = Execution.objects.get(pk__in=body["executions"])
    assert list(execution.steps.values_list("file_name", flat=True)) == ["app.py"]  # support files are shipped only


def test_a_fanned_out_run_has_a_step_per_script_or_its_entrypoint_alone(post):
    subscribed("alice_two_steps", "sales.order_created")
    make_package("bob_config_then_main", {"config.json": "{}", "main.py": "print(1)"}).trigger_event_types.add(
        EventType.objects.get(name="sales.order_created"))  # fmt: skip
    make_package("charlie_entry", {"helpers.py": "", "main.py": "import helpers"}, entrypoint="main.py"
                 ).trigger_event_types.add(EventType.objects.get(name="sales.order_created"))  # fmt: skip
    make_package("dave_nothing_to_run", {}).trigger_event_types.add(EventType.objects.get(name="sales.order_created"))

    body = post({"event_type": "sales.order_created", "event_source": "shop", "payload": {"n": 1}}).json()

    steps = {e.package.package_name: [(s.position, s.file_name, s.script.file_name) for s in e.steps.all()]
             for e in Execution.objects.filter(pk__in=body["executions"])}  # fmt: skip
    assert steps == {
        "alice_two_steps": [(1, "main.py", "main.py")],
        "bob_config_then_main": [(1, "config.json", "config.json"), (2, "main.py", "main.py")],
        "charlie_entry": [(1, "main.py", "main.py")],
    }
    assert body["status"] == "started"
    # This test's transaction never commits, so nothing is published: the runs say so, though their rows carry
    # enqueued_at from their INSERT (executions/queueing.py); the reason ends "; 3 of 3 recorded but not queued yet".
    assert [run["queued"] for run in body["runs"]] == [False, False, False]
    assert body["statusReason"].startswith(
        "started alice_two_steps, bob_config_then_main, charlie_entry; "
        "not started: Package 'Dave Nothing To Run' has no scripts to run."
    )


def test_an_unknown_event_type_is_registered_and_stored_with_no_subscribers(post):
    response = post({"event_type": "brand.new", "event_source": "crm", "payload": {}})

    assert response.status_code == 202
    assert response.json()["status"] == "no_subscribers" and response.json()["executions"] == []
    assert EventType.objects.filter(name="brand.new").exists()
    assert TriggerEvent.objects.get().status_reason == "no active package subscribes to this type"


def test_a_cloud_event_sent_twice_starts_nothing_the_second_time(post):
    subscribed("alice_a", "sales.order_created")
    event = cloud_event(data={"order": 7})

    first = post(event, content_type="application/cloudevents+json")
    second = post(event, content_type="application/cloudevents+json")

    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["duplicate"] is True
    assert second.json()["executions"] == first.json()["executions"]
    assert Execution.objects.count() == 1 and TriggerEvent.objects.count() == 1


def test_cloud_event_data_may_be_an_object_or_a_json_string(post):
    subscribed("alice_a", "sales.order_created")
    as_string = post(cloud_event(data={"n": 1}))
    as_object = post({**cloud_event(), "data": {"n": 2}}, content_type="application/cloudevents+json")

    params = [Execution.objects.get(pk=r.json()["executions"][0]).params for r in (as_string, as_object)]
    assert params == [{"n": 1}, {"n": 2}]


def test_a_binary_mode_cloud_event_is_accepted(client, key):
    subscribed("alice_a", "sales.order_created")
    headers = {"X-API-KEY": key, "ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "erp",
               "ce-type": "sales.order_created"}  # fmt: skip
    response = client.post("/fx/events", json.dumps({"n": 3}), content_type="application/json", headers=headers)

    assert response.status_code == 202, response.content
    assert TriggerEvent.objects.get().event_id == "b-1"
    assert Execution.objects.get().params == {"n": 3}


def test_show_trigger_event_json_posted_as_it_is_runs_that_package_only(post):
    target = make_package("alice_target", ONE_STEP)
    subscribed("bob_bystander", "ferris_executor.run_execution.triggered_run")
    shown = trigger_event_for(target, event_id=uuid.uuid4().hex, time=timezone.now())
    shown["data"] = json.dumps({**json.loads(shown["data"]), "region": "eu"})

    response = post(shown, content_type="application/cloudevents+json")

    assert response.status_code == 202, response.content
    execution = Execution.objects.select_related("package").get()
    assert execution.package == target
    assert execution.params["region"] == "eu"
    assert execution.trigger_event.type == "ferris_executor.run_execution.triggered_run"


def test_an_event_carrying_fxcid_and_fxparentexec_joins_the_chain(post):
    parent = trigger_execution(make_package("alice_parent", ONE_STEP), trigger_type=TriggerType.MANUAL)
    subscribed("bob_child", "step.two")

    response = post({"event_type": "step.two", "event_source": "script",
                     "payload": {"_fxcid": parent.correlation_id, "_fxparentexec": str(parent.id)}})  # fmt: skip

    child = Execution.objects.get(pk=response.json()["executions"][0])
    assert response.json()["cid"] == parent.correlation_id == child.correlation_id
    assert (child.parent_execution_id, child.chain_depth) == (parent.id, 1)


def test_an_external_event_starts_a_new_correlation_id(post):
    subscribed("alice_a", "sales.order_created")
    cids = {post(cloud_event(data={})).json()["cid"] for _ in range(2)}
    assert len(cids) == 2 and all(len(cid) == 32 for cid in cids)


def test_a_chain_deeper_than_the_limit_starts_nothing(post, settings):
    settings.EXECUTOR_EVENT_MAX_CHAIN_DEPTH = 2
    package = subscribed("alice_loop", "loop.ping")
    parent = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    Execution.objects.filter(pk=parent.pk).update(chain_depth=2)

    response = post({"event_type": "loop.ping", "event_source": "script", "payload": {"_fxparentexec": str(parent.id)}})

    assert response.status_code == 202
    assert response.json()["status"] == "stopped" and response.json()["executions"] == []
    assert "chain depth 3 is over the limit of 2" in response.json()["statusReason"]
    assert Execution.objects.count() == 1


def test_an_event_fanning_out_past_the_limit_starts_nothing(post, settings):
    settings.EXECUTOR_EVENT_MAX_FAN_OUT = 2
    for name in ("alice_a", "alice_b", "alice_c"):
        subscribed(name, "sales.order_created")

    response = post({"event_type": "sales.order_created", "event_source": "shop", "payload": {}})

    assert response.json()["status"] == "stopped"
    assert "3 packages subscribe to sales.order_created, over the fan-out limit of 2" in response.json()["statusReason"]
    assert Execution.objects.count() == 0 and TriggerEvent.objects.count() == 1


@pytest.mark.parametrize("body, content_type, status, message", [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])  # fmt: skip
def test_bad_input_is_refused_with_a_message_and_stores_nothing(post, body, content_type, status, message):
    subscribed("alice_a", "sales.order_created")
    event_types = EventType.objects.count()

    response = post(body, content_type=content_type)

    assert response.status_code == status, response.content
    assert message in response.json()["detail"]
    assert (TriggerEvent.objects.count(), Execution.objects.count()) == (0, 0)
    assert EventType.objects.count() == event_types


def test_an_oversized_body_is_refused_with_413(post, settings):
    settings.EXECUTOR_EVENT_MAX_BYTES = 1024
    response = post({**BRIDGE, "payload": {"blob": "x" * 2000}})
    assert response.status_code == 413
    assert "larger than 1024 bytes" in response.json()["detail"]
    assert TriggerEvent.objects.count() == 0


@pytest.mark.parametrize("headers, message", [
    ({}, "Missing X-API-KEY header"),
    ({"X-API-KEY": "exk_not-a-key"}, "Unknown or revoked API key"),
])  # fmt: skip
def test_requests_without_a_valid_key_are_refused(client, headers, message):
    subscribed("alice_a", "sales.order_created")
    response = client.post("/fx/events", json.dumps(BRIDGE), content_type="application/json", headers=headers)
    assert response.status_code == 401
    assert message in response.json()["detail"]
    assert TriggerEvent.objects.count() == 0
    assert client.get(f"/fx/cid/{uuid.uuid4().hex}", headers=headers).status_code == 401


def test_a_revoked_key_is_refused(post, key):
    ApiKey.objects.get().revoke()
    response = post(BRIDGE)
    assert response.status_code == 401 and TriggerEvent.objects.count() == 0


def test_get_execution_answers_the_fx_fields_and_its_steps(client, key):
    package = make_package("alice_reports", {"config.json": "{}", "main.py": "print(1)"})
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params={"a": 1})

    response = client.get(f"/fx/executions/{execution.id}", headers={"X-API-KEY": key})

    body = response.json()
    assert response.status_code == 200
    assert (body["execution_id"], body["service"], body["status"]) == (str(execution.id), "alice_reports", "pending")
    assert body["data"] == {"a": 1} and body["cid"] == execution.correlation_id
    assert [(s["position"], s["script"], s["status"]) for s in body["steps"]] == [
        (1, "config.json", "pending"), (2, "main.py", "pending")]  # fmt: skip


# Ids of their own: a random uuid in the test id would differ between the parallel workers' collections.
@pytest.mark.parametrize("execution_id", [str(uuid.uuid4()), "not-a-uuid"], ids=["unknown-uuid", "not-a-uuid"])
def test_get_execution_of_an_unknown_id_is_404(client, key, execution_id):
    response = client.get(f"/fx/executions/{execution_id}", headers={"X-API-KEY": key})
    assert response.status_code == 404
    assert response.json()["detail"] == f"No execution {execution_id}."


def test_get_cid_lists_the_chain_in_time_order(post, client, key):
    first = trigger_execution(make_package("alice_first", ONE_STEP), trigger_type=TriggerType.MANUAL)
    subscribed("bob_second", "chain.next")
    post({"event_type": "chain.next", "event_source": "s",
          "payload": {"_fxcid": first.correlation_id, "_fxparentexec": str(first.id)}})  # fmt: skip

    response = client.get(f"/fx/cid/{first.correlation_id}", headers={"X-API-KEY": key})

    chain = response.json()["executions"]
    assert [e["service"] for e in chain] == ["alice_first", "bob_second"]
    assert chain[1]["parent_execution_id"] == str(first.id) and chain[1]["origin_event_type"] == "chain.next"
    assert client.get("/fx/cid/unknown", headers={"X-API-KEY": key}).status_code == 404


def test_the_served_openapi_schema_validates(client):
    response = client.get("/fx/openapi.json")
    schema = response.json()
    validate(schema)
    assert {"/fx/events", "/fx/executions/{execution_id}", "/fx/cid/{cid}"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"]["name"] == "X-API-KEY"
    docs = client.get("/fx/docs")
    assert docs.status_code == 200
    assert b"/static/ninja/swagger-ui-bundle.js" in docs.content  # served here, not from a CDN
    assert finders.find("ninja/swagger-ui-bundle.js")  # collectstatic ships it with the admin's files


def test_the_admin_shows_events_and_the_chain_as_a_tree(post, admin_client):
    root = trigger_execution(make_package("alice_root", ONE_STEP), trigger_type=TriggerType.MANUAL)
    subscribed("bob_child", "chain.next")
    subscribed("charlie_grandchild", "chain.last")
    child_id = post(
        {
            "event_type": "chain.next",
            "event_source": "s",
            "payload": {"_fxcid": root.correlation_id, "_fxparentexec": str(root.id)},
        }
    ).json()["executions"][0]
    post({"event_type": "chain.last", "event_source": "s", "payload": {"_fxparentexec": child_id}})  # fmt: skip

    page = admin_client.get(reverse("admin:executions_execution_change", args=[child_id])).content.decode()

    chain = page[page.index('<ul class="executor-chain">') :]
    # root > child (this one) > grandchild, nested in that order
    assert chain.index("alice_root") < chain.index("bob_child · ") < chain.index("charlie_grandchild")
    assert "(this one)" in chain and chain.count("<ul>") >= 2
    assert "chain.next" in page  # the trigger event's link
    events = admin_client.get(reverse("admin:executions_triggerevent_changelist")).content.decode()
    assert "chain.next" in events and "chain.last" in events
    event = TriggerEvent.objects.get(type="chain.last")
    detail = admin_client.get(reverse("admin:executions_triggerevent_change", args=[event.pk])).content.decode()
    assert "charlie_grandchild" in detail and f"execution {child_id[:8]}" in detail
