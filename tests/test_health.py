"""/readyz (executor_project/health.py) against the real PostgreSQL and Redis, and with each of them unreachable: a
port nobody listens on, or a Redis that accepts the connection and never answers."""

import contextlib
import json
import socket
import time

import pytest
from django.test import Client

from executor_project import liveness
from tests.executions.test_api_errors import closed_port, database_unreachable
from tests.security.test_deploy_check import documented_production_env, probe

PASSWORD = "s3cret-redis-password"


@contextlib.contextmanager
def frozen_redis():
    """A server that accepts connections and never answers (a Redis stuck on a full disk, a half-open network)."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        yield f"redis://:{PASSWORD}@127.0.0.1:{server.getsockname()[1]}/0"


def ready(client: Client | None = None):
    started = time.monotonic()
    response = (client or Client()).get("/readyz")
    return response, time.monotonic() - started


@pytest.mark.django_db
def test_it_answers_200_when_the_database_and_redis_answer():
    response, _ = ready()

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
    assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db
def test_it_answers_503_naming_redis_when_redis_refuses_connections(settings, caplog):
    settings.CELERY_BROKER_URL = f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"

    response, took = ready()

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "ok", "redis": "unreachable"}}
    assert took < 2
    assert PASSWORD not in response.content.decode() + caplog.text
    assert "readyz: Redis is unreachable (ConnectionError)" in caplog.text


@pytest.mark.django_db
def test_it_answers_503_within_about_a_second_when_redis_accepts_but_never_answers(settings):
    with frozen_redis() as url:
        settings.CELERY_BROKER_URL = url

        response, took = ready()

    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "unreachable"
    assert took < 2.5


def test_it_names_the_database_then_both_when_they_are_down_and_recovers_without_a_restart(
    transactional_db, settings, caplog
):
    saved = settings.CELERY_BROKER_URL
    with database_unreachable():
        database_down, took = ready()
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port()}/0"
        both_down, _ = ready()
    settings.CELERY_BROKER_URL = saved

    up, _ = ready()

    assert database_down.status_code == 503
    assert json.loads(database_down.content) == {
        "status": "unavailable",
        "checks": {"database": "unreachable", "redis": "ok"},
    }
    assert took < 6  # settings: connect_timeout 5 s; a refused port answers at once
    assert (both_down.status_code, both_down.json()["checks"]) == (
        503,
        {"database": "unreachable", "redis": "unreachable"},
    )
    assert (up.status_code, up.json()["status"]) == (200, "ready")
    assert "Traceback" not in caplog.text


def test_the_quick_start_s_socket_url_is_spelt_for_redis_py():
    assert liveness.redis_py_url("redis+socket:///data/redis.sock") == "unix:///data/redis.sock"
    assert liveness.redis_py_url("redis+socket:///data/redis.sock?virtual_host=3") == "unix:///data/redis.sock?db=3"
    assert liveness.redis_py_url("redis://:pw@host:6379/2") == "redis://:pw@host:6379/2"


def test_production_answers_readyz_over_plain_http_for_the_container_health_check(tmp_path):
    """EXECUTOR_HTTPS redirects plain HTTP to https, except the health checks, called from inside the container."""
    answers = probe(documented_production_env(tmp_path), [("/readyz", {}), ("/admin/", {})])

    status, location, _ = answers["/readyz {}"]
    assert status in (200, 503) and location == ""  # 503: the test has no executor database
    assert answers["/admin/ {}"][:2] == [301, "https://127.0.0.1:8000/admin/"]  # the rule is on
