"""Events over real HTTP (the live server) run on real `celery worker` processes.

Scripts emit the next event of a chain the way any HTTP client would: POST /fx/events with an API key from a
platform secret (their packages have network access), or through `context.events.send` (the FX outbox), which
fans out only within the emitting package's project.
"""

import html
import json
import re
import time
import urllib.error
import urllib.request
import uuid

import pytest
from django.urls import reverse

from executions.lifecycle import EXECUTION_FINISHED
from executions.models import ApiKey, Execution, ExecutionStatus, TriggerEvent, TriggerEventStatus, TriggerType
from executions.services import trigger_execution
from executions.waiting import wait_until_finished
from packages.models import EventType, Project, Secret, SecretScope
from tests.e2e.processes import worker_process
from tests.event_bodies import BAD_INPUT
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Posts `next_event` (from argv[1]) to the API, carrying the chain's keys the way FX scripts do.
EMIT_NEXT = """\
import json, sys, urllib.request
args = json.loads(sys.argv[1])
print("hop", args.get("hop", 0), "origin", args.get("origin_event_type"))
body = {"event_type": args["next_event"], "event_source": args["package_name"],
        "payload": {"_fxcid": args["_fxcid"], "_fxparentexec": args["_fxexec"], "hop": args.get("hop", 0) + 1,
                    "api_url": args["api_url"], "next_event": args.get("then", args["next_event"])}}
request = urllib.request.Request(args["api_url"] + "/fx/events", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "X-API-KEY": args["secrets"]["API_KEY"]})
print(urllib.request.urlopen(request).read().decode())
"""


@pytest.fixture
def api_key():
    """A key for the test's requests, and the same key as a platform secret for scripts that emit events."""
    _, key = ApiKey.issue("e2e")
    secret = Secret(scope=SecretScope.PLATFORM, name="API_KEY")
    secret.set_value(key)
    secret.save()
    return key


def post_event(live_server, key: str, body: dict | str, content_type: str = "application/json") -> tuple[int, dict]:
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    headers = {"Content-Type": content_type, "X-API-KEY": key}
    request = urllib.request.Request(f"{live_server.url}/fx/events", data, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get_json(live_server, key: str, path: str) -> dict:
    request = urllib.request.Request(f"{live_server.url}{path}", headers={"X-API-KEY": key})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def subscribed(package_name: str, event_type: str, files: dict[str, str], **fields):
    package = make_package(package_name, files, **fields)
    package.trigger_event_types.add(EventType.objects.get_or_create(name=event_type)[0])
    return package


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met after {timeout} s")
        time.sleep(0.2)
    return result


def test_one_event_starts_three_packages_that_run_at_once_on_two_workers(celery_worker, live_server, api_key,
                                                                          tmp_path):  # fmt: skip
    for name in ("fan_a", "fan_b", "fan_c"):
        subscribed(name, "e2e.fan_out", {"work.py": "import time; time.sleep(2)"})

    with worker_process(tmp_path / "second.log", name="e2e-second"):
        status, body = post_event(live_server, api_key, {"event_type": "e2e.fan_out", "event_source": "e2e",
                                                         "payload": {"batch": 1}})  # fmt: skip
        executions = [wait_until_finished(Execution.objects.get(pk=pk), timeout=60) for pk in body["executions"]]

    assert status == 202 and body["status"] == "started"
    assert sorted(e.package.package_name for e in executions) == ["fan_a", "fan_b", "fan_c"]
    assert {e.status for e in executions} == {ExecutionStatus.COMPLETED}
    steps = [e.steps.get() for e in executions]
    assert max(s.started_at for s in steps) < min(s.finished_at for s in steps)  # all three ran at the same time
    assert len({e.worker_name for e in executions}) == 2
    assert {e.correlation_id for e in executions} == {body["cid"]}


def test_a_three_package_chain_shares_one_cid_and_shows_as_a_tree(celery_worker, live_server, api_key, admin_client):
    subscribed("chain_a", "e2e.chain.a", {"emit.py": EMIT_NEXT}, network_access=True)
    subscribed("chain_b", "e2e.chain.b", {"emit.py": EMIT_NEXT}, network_access=True)
    subscribed("chain_c", "e2e.chain.c", {"last.py": "import sys; print('last', sys.argv[1][:0])"})

    payload = {"api_url": live_server.url, "next_event": "e2e.chain.b", "then": "e2e.chain.c"}
    status, body = post_event(live_server, api_key, {"event_type": "e2e.chain.a", "event_source": "e2e",
                                                     "payload": payload})  # fmt: skip
    assert status == 202
    last = wait_for(lambda: Execution.objects.filter(package__package_name="chain_c").first(), what="chain_c started")
    wait_until_finished(last, timeout=60)

    chain = get_json(live_server, api_key, f"/fx/cid/{body['cid']}")["executions"]
    assert [e["service"] for e in chain] == ["chain_a", "chain_b", "chain_c"]
    assert [e["status"] for e in chain] == ["completed"] * 3
    assert [e["chain_depth"] for e in chain] == [0, 1, 2]
    assert [e["parent_execution_id"] for e in chain] == [None, chain[0]["execution_id"], chain[1]["execution_id"]]
    assert [e["origin_event_type"] for e in chain] == ["e2e.chain.a", "e2e.chain.b", "e2e.chain.c"]
    one = get_json(live_server, api_key, f"/fx/executions/{chain[1]['execution_id']}")
    assert one["cid"] == body["cid"] and one["steps"][0]["status"] == "completed"

    page = admin_client.get(reverse("admin:executions_execution_change", args=[last.pk])).content.decode()
    tree = page[page.index('<ul class="executor-chain">') :]
    assert tree.index("chain_a") < tree.index("chain_b") < tree.index("chain_c")


def test_the_same_event_id_twice_runs_once(celery_worker, live_server, api_key):
    subscribed("dup_once", "e2e.dup", {"main.py": "print('ran')"})
    event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "e2e", "type": "e2e.dup",
             "data": json.dumps({"n": 1})}  # fmt: skip

    first = post_event(live_server, api_key, event, "application/cloudevents+json")
    wait_until_finished(Execution.objects.get(pk=first[1]["executions"][0]), timeout=60)
    second = post_event(live_server, api_key, event, "application/cloudevents+json")

    assert (first[0], second[0]) == (202, 200)
    assert second[1]["duplicate"] is True and second[1]["executions"] == first[1]["executions"]
    assert Execution.objects.filter(package__package_name="dup_once").count() == 1


def test_show_trigger_event_json_from_the_package_page_works_as_it_is(celery_worker, live_server, api_key,
                                                                       admin_client):  # fmt: skip
    package = make_package("shown_target", {"main.py": "import sys; print(sys.argv[1])"})
    page = admin_client.get(reverse("admin:packages_package_change", args=[package.pk])).content.decode()
    shown = html.unescape(re.search(r'<pre class="executor-output">(.*?)</pre>', page, re.S).group(1))

    status, body = post_event(live_server, api_key, shown, "application/cloudevents+json")
    assert status == 202, body
    execution = wait_until_finished(Execution.objects.get(pk=body["executions"][0]), timeout=60)

    assert execution.package == package and execution.status == ExecutionStatus.COMPLETED
    argv = json.loads(execution.steps.get().stdout)
    assert argv["origin_event_type"] == "ferris_executor.run_execution.triggered_run"
    assert (argv["package_name"], argv["trigger_type"], argv["_fxcid"]) == ("shown_target", "triggered", body["cid"])


@pytest.mark.parametrize("body, content_type, status, message", [case[1:] for case in BAD_INPUT],
                         ids=[case[0] for case in BAD_INPUT])  # fmt: skip
def test_bad_input_over_http_is_refused_and_stores_nothing(live_server, api_key, body, content_type, status, message):
    subscribed("alice_a", "sales.order_created", {"main.py": "print(1)"})
    answered, reply = post_event(live_server, api_key, body, content_type)

    assert answered == status
    assert message in reply["detail"]
    assert (TriggerEvent.objects.count(), Execution.objects.count()) == (0, 0)


def test_a_package_that_triggers_itself_is_stopped_by_the_depth_guard(celery_worker, live_server, api_key, settings):
    settings.EXECUTOR_EVENT_MAX_CHAIN_DEPTH = 3  # read by the live server, which receives the scripts' events
    subscribed("loop_self", "e2e.loop", {"emit.py": EMIT_NEXT}, network_access=True)

    payload = {"api_url": live_server.url, "next_event": "e2e.loop"}
    status, body = post_event(
        live_server, api_key, {"event_type": "e2e.loop", "event_source": "e2e", "payload": payload}
    )
    assert status == 202
    stopped = wait_for(lambda: TriggerEvent.objects.filter(status=TriggerEventStatus.STOPPED).first(),
                       what="the guard stopped the loop")  # fmt: skip
    executions = list(Execution.objects.filter(correlation_id=body["cid"]).order_by("chain_depth"))
    for execution in executions:
        wait_until_finished(execution, timeout=60)

    assert [e.chain_depth for e in executions] == [0, 1, 2, 3]
    assert stopped.chain_depth == 4 and "chain depth 4 is over the limit of 3" in stopped.status_reason
    assert stopped.parent_execution_id == executions[-1].id


def test_lifecycle_events_start_their_subscribers_and_a_reaction_emits_none(celery_worker):
    watcher = subscribed("watcher", "ferris_executor.run_execution.execution_finished",
                         {"watch.py": "import sys; print(sys.argv[1])"})  # fmt: skip
    watched = make_package("watched", {"main.py": "print('work')"})

    run = wait_until_finished(trigger_execution(watched, trigger_type=TriggerType.MANUAL), timeout=60)
    reaction = wait_for(lambda: Execution.objects.filter(package=watcher).first(), what="the watcher started")
    wait_until_finished(reaction, timeout=60)
    time.sleep(1)  # room for a wrong second reaction to its own finish

    argv = json.loads(reaction.steps.get().stdout)
    assert (argv["source_package_name"], argv["status"]) == ("watched", "completed")
    assert argv["source_execution_id"] == str(run.id) and argv["_fxcid"] == run.correlation_id
    assert (reaction.parent_execution_id, reaction.chain_depth) == (run.id, 1)
    assert Execution.objects.filter(package=watcher).count() == 1
    assert TriggerEvent.objects.filter(type__endswith="execution_finished").count() == 1


def test_events_a_script_emits_start_only_its_own_projects_packages(celery_worker):
    sales, billing = Project.objects.create(name="Sales"), Project.objects.create(name="Billing")
    sender = make_package("sales_sender", {"send.py": "from ferris_ef import context\n"
                                                      "context.events.send('e2e.team.news', data={'n': 1})"},
                          project=sales)  # fmt: skip
    ours = subscribed("sales_listener", "e2e.team.news", {"main.py": "print('ours')"}, project=sales)
    subscribed("billing_listener", "e2e.team.news", {"main.py": "print('theirs')"}, project=billing)
    subscribed("billing_watcher", EXECUTION_FINISHED, {"main.py": "print('watching')"}, project=billing)

    run = wait_until_finished(trigger_execution(sender, trigger_type=TriggerType.MANUAL), timeout=60)
    reaction = wait_for(lambda: Execution.objects.filter(package=ours).first(), what="the listener started")
    wait_until_finished(reaction, timeout=60)
    time.sleep(1)  # room for a wrong start in Billing

    assert (run.status, reaction.status) == (ExecutionStatus.COMPLETED, ExecutionStatus.COMPLETED)
    assert reaction.parent_execution_id == run.id
    assert not Execution.objects.filter(package__project=billing).exists()
    # the script's event, kept as Sales'; no lifecycle event, as only Billing watches for one
    assert list(TriggerEvent.objects.values_list("type", "project__name")) == [("e2e.team.news", "Sales")]
