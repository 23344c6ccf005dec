"""Each API key's request limit (executor_project/api_rate.py), counted in the real test Redis; what an unreachable
Redis does to it; and how EXECUTOR_API_RATE_LIMIT is read (executor_project/env.py)."""

import copy
import json
import time
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from executions.models import ApiKey, TriggerEvent
from executor_project import api_rate
from executor_project.env import env_rate
from packages.models import Project
from tests.e2e.processes import free_port
from tests.factories import make_member, make_staff
from tests.metrics_scrape import Scrape

pytestmark = pytest.mark.django_db


def refused_and_uncounted(client) -> tuple[float, float]:
    """executor_api_rate_limit_total by outcome, from /metrics (a counter shared by the whole test run)."""
    scrape = Scrape.parse(client.get("/metrics").content.decode())
    return tuple(scrape.value("executor_api_rate_limit_total", outcome=outcome) for outcome in ("refused", "uncounted"))


def read(client, key: str):
    """GET an execution nobody has: 404 while the key is within its limit."""
    return client.get(f"/fx/executions/{uuid.uuid4()}", HTTP_X_API_KEY=key)


def test_a_key_past_its_limit_is_answered_429_with_retry_after_and_its_request_is_not_looked_at(client, settings):
    settings.EXECUTOR_API_RATE_LIMIT = "3/h"  # an hour's window: the test does not straddle its edge
    busy, calm = ApiKey.issue("busy sender")[1], ApiKey.issue("another team")[1]
    before = refused_and_uncounted(client)

    assert [read(client, busy).status_code for _ in range(3)] == [404, 404, 404]
    refused = read(client, busy)
    event = client.post("/fx/events", json.dumps({"event_type": "sales.order_created", "event_source": "erp"}),
                        content_type="application/json", HTTP_X_API_KEY=busy)  # fmt: skip

    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 3600
    assert refused.json()["detail"] == (
        f"This API key made more than 3/h requests (EXECUTOR_API_RATE_LIMIT): try again in {refused['Retry-After']} s."
    )
    assert event.status_code == 429 and not TriggerEvent.objects.exists()  # refused before it was read or stored
    assert read(client, calm).status_code == 404  # counted per key
    refused, uncounted = (after - then for after, then in zip(refused_and_uncounted(client), before, strict=True))
    assert (refused, uncounted) == (2, 0)


def test_a_keys_own_limit_replaces_the_platforms(client, settings):
    settings.EXECUTOR_API_RATE_LIMIT = "1/h"
    keys = {}
    for own in ("3/h", "off", ""):
        api_key, keys[own] = ApiKey.issue(f"key limited to {own or 'the default'}")
        api_key.rate_limit = own
        api_key.save()

    answers = {own: [read(client, key) for _ in range(4)] for own, key in keys.items()}

    assert [answer.status_code for answer in answers["3/h"]] == [404, 404, 404, 429]
    assert "more than 3/h requests (this key's limit)" in answers["3/h"][3].json()["detail"]
    assert [answer.status_code for answer in answers["off"]] == [404, 404, 404, 404]
    assert [answer.status_code for answer in answers[""]] == [404, 429, 429, 429]
    assert "more than 1/h requests (EXECUTOR_API_RATE_LIMIT)" in answers[""][1].json()["detail"]


def test_only_a_superuser_sets_a_keys_limit(admin_client, client):
    sales = Project.objects.create(name="Sales")
    owner = make_staff("olivia")
    make_member(owner, sales, "owner")
    api_key = ApiKey.issue("sales crm", project=sales)[0]
    change = reverse("admin:executions_apikey_change", args=[api_key.pk])

    refused = admin_client.post(change, {"name": "sales crm", "rate_limit": "fast"})
    admin_client.post(change, {"name": "sales crm", "rate_limit": "20/s"})
    client.force_login(owner)
    page = client.get(change).content.decode()
    client.post(change, {"name": "sales crm renamed", "rate_limit": "off"})

    assert "Write a count per period like" in refused.content.decode()
    assert 'name="rate_limit"' not in page and "20/s" in page  # shown to the project's owner, not editable
    api_key.refresh_from_db()
    assert (api_key.name, api_key.rate_limit) == ("sales crm renamed", "20/s")


@pytest.fixture
def unreachable_redis(settings):
    caches = copy.deepcopy(settings.CACHES)
    caches["api_rate"]["LOCATION"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.CACHES = caches  # Django drops its cache connections when CACHES changes


@pytest.mark.usefixtures("unreachable_redis")
def test_an_unreachable_redis_lets_the_request_through_at_once_and_says_so(client, settings, caplog, monkeypatch):
    monkeypatch.setattr(api_rate, "_complained_at", float("-inf"))
    settings.EXECUTOR_API_RATE_LIMIT = "1/h"
    key = ApiKey.issue("erp")[1]
    before = refused_and_uncounted(client)

    started = time.monotonic()
    answers = [read(client, key).status_code for _ in range(3)]

    assert answers == [404, 404, 404]  # not 429, not 500
    assert time.monotonic() - started < 3  # a refused connection, no retries with backoff
    warnings = [record.getMessage() for record in caplog.records if "Redis is unreachable" in record.getMessage()]
    assert warnings == [  # one a minute, not one per request
        "API requests not counted against their keys' rate limits: Redis is unreachable (ConnectionError); quiet "
        "about it for 60 s"
    ]
    assert [after - then for after, then in zip(refused_and_uncounted(client), before, strict=True)] == [0, 3]


@pytest.mark.usefixtures("unreachable_redis")
def test_with_no_limit_redis_is_not_asked(client, settings, caplog, monkeypatch):
    monkeypatch.setattr(api_rate, "_complained_at", float("-inf"))  # a warning of an earlier test would hide one
    settings.EXECUTOR_API_RATE_LIMIT = ""
    key = ApiKey.issue("erp")[1]
    before = refused_and_uncounted(client)

    assert [read(client, key).status_code for _ in range(3)] == [404, 404, 404]
    assert "Redis is unreachable" not in caplog.text
    assert refused_and_uncounted(client) == before  # nothing counted, nor tried


@pytest.mark.parametrize(
    ("value", "rate"),
    [("600/m", "600/m"), ("20/s", "20/s"), ("1000/15m", "1000/15m"), (" 5/d ", "5/d"), ("off", ""), ("", "")],
)
def test_a_rate_is_read_as_django_ratelimit_writes_it(monkeypatch, value, rate):
    monkeypatch.setenv("EXECUTOR_API_RATE_LIMIT", value)
    assert env_rate("EXECUTOR_API_RATE_LIMIT", "6000/m") == rate


@pytest.mark.parametrize("value", ["0/m", "600", "600/x", "600/0m", "-1/s", "600 per minute"])
def test_a_rate_it_cannot_read_stops_the_start(monkeypatch, value):
    monkeypatch.setenv("EXECUTOR_API_RATE_LIMIT", value)
    with pytest.raises(ImproperlyConfigured, match="EXECUTOR_API_RATE_LIMIT must be a count per period"):
        env_rate("EXECUTOR_API_RATE_LIMIT", "6000/m")
