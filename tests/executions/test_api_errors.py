"""Errors answered in a form the caller can use (executor_project/errors.py), with real outages: the database's
address pointing at a port nobody listens on, Redis likewise, a database connection killed under a running
gunicorn. The API answers JSON `{"detail": ...}` always (503 + Retry-After for an unreachable dependency, 500
`internal error` for the unexpected, never a traceback); pages answer a plain 503 page for an outage.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from executions.models import ApiKey, Execution, ExecutionStatus
from packages.models import EventType, GitRepository, Project
from tests.factories import make_package

BASE_DIR = Path(settings.BASE_DIR)
EVENT = {"event_type": "sales.order_created", "event_source": "erp", "payload": {"order_id": 42}}


def closed_port() -> int:
    """A port nothing listens on: bound for a moment to learn a free one, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def database_unreachable():
    """Every new database connection is refused until the block ends (the current one is closed first)."""
    settings_dict = connection.settings_dict
    saved = settings_dict["HOST"], settings_dict["PORT"]
    connection.close()
    settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", str(closed_port())
    try:
        yield
    finally:
        connection.close()
        settings_dict["HOST"], settings_dict["PORT"] = saved


def post_event(client: Client, key: str, body: dict = EVENT):
    return client.post("/fx/events", json.dumps(body), content_type="application/json", headers={"X-API-KEY": key})


def assert_retry_later(response, dependency: str) -> None:
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "5"
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": f"The {dependency} is unavailable right now; try again in a few seconds."}


# --- the database unreachable, in this process -----------------------------------------------------------------


@pytest.mark.parametrize("debug", [False, True], ids=["production", "quick start (DEBUG)"])
def test_api_requests_answer_503_json_while_the_database_is_unreachable(transactional_db, settings, caplog, debug):
    settings.DEBUG = debug
    key = ApiKey.issue("erp")[1]
    client = Client(raise_request_exception=False)

    with database_unreachable():
        event = post_event(client, key)
        execution = client.get(f"/fx/executions/{Execution().id}", headers={"X-API-KEY": key})

    assert_retry_later(event, "database")
    assert_retry_later(execution, "database")
    assert "the database is unavailable (OperationalError); answered 503" in caplog.text
    assert "Traceback" not in caplog.text
    assert post_event(client, key).status_code == 202  # and served again as soon as it is back


@pytest.mark.parametrize("debug", [False, True], ids=["production", "quick start (DEBUG)"])
def test_admin_pages_answer_a_plain_503_page_while_the_database_is_unreachable(transactional_db, settings, debug):
    settings.DEBUG = debug
    get_user_model().objects.create_superuser("admin", password="pw")
    client = Client(raise_request_exception=False)
    client.login(username="admin", password="pw")

    with database_unreachable():
        page = client.get("/admin/executions/execution/")

    assert page.status_code == 503
    assert page["Retry-After"] == "5"
    text = page.content.decode()
    assert "It cannot reach its database right now" in text
    assert "Traceback" not in text and "OperationalError" not in text and "psycopg2" not in text
    assert client.get("/admin/executions/execution/").status_code == 200


class QueriesAfterTheView:
    """Stands for a middleware that needs the database after the view (the session middleware saving a session)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        get_user_model().objects.exists()
        return response


def test_an_outage_a_middleware_meets_answers_503_too(transactional_db, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.QueriesAfterTheView"]
    client = Client(raise_request_exception=False)

    with database_unreachable():
        page = client.get("/admin/login/")  # the login form itself needs no database
        api = client.get("/fx/openapi.json")

    assert page.status_code == 503 and "It cannot reach its database right now" in page.content.decode()
    assert_retry_later(api, "database")


# --- anything else -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debug", [False, True], ids=["production", "quick start (DEBUG)"])
def test_an_unexpected_api_error_is_json_500_without_a_traceback(db, settings, monkeypatch, caplog, debug):
    settings.DEBUG = debug
    key = ApiKey.issue("erp")[1]

    def broken(*args, **kwargs):
        raise RuntimeError("a bug holding s3cr3t-value")

    monkeypatch.setattr("executions.api.dispatch", broken)
    response = post_event(Client(raise_request_exception=False), key)

    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert b"s3cr3t" not in response.content and b"Traceback" not in response.content
    assert "RuntimeError: a bug holding" in caplog.text  # the traceback is for the log


@pytest.mark.parametrize("debug", [False, True], ids=["production", "quick start (DEBUG)"])
def test_other_api_errors_are_json_with_their_status(db, settings, debug):
    settings.DEBUG = debug
    client = Client()

    unknown = client.get("/fx/no-such-endpoint")
    wrong_method = client.get("/fx/events")
    webhook = client.get("/git/webhook/1")

    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"})
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"detail": "Method Not Allowed"})
    assert wrong_method["Allow"] == "POST"
    assert (webhook.status_code, webhook["Content-Type"]) == (405, "application/json")


# --- a real gunicorn ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(**env):
    """gunicorn serving the test database, as docker-compose runs it (one worker here), with `env` on top."""
    port = closed_port()
    database_url = urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + connection.settings_dict["NAME"]).geturl()
    argv = [sys.executable, "-m", "gunicorn", "executor_project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers",
            "1", "--timeout", "60"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=BASE_DIR, env={**os.environ, "DATABASE_URL": database_url, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while call(base_url + "/fx/openapi.json")[0] is None:
            assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def call(url: str, method: str = "GET", body: dict | None = None, **headers) -> tuple[int | None, dict, str]:
    """(status, headers, body text); status None when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **headers})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()
    except OSError:
        return None, {}, ""


def test_gunicorn_answers_503_json_for_a_publish_while_redis_is_unreachable(transactional_db):
    key = ApiKey.issue("ops")[1]
    repository = GitRepository.objects.create(project=Project.objects.create(name="Ops"),
                                              url="https://git.example.com/ops.git")  # fmt: skip
    package = make_package("alice_orders", {"main.py": "print(1)"})
    package.trigger_event_types.add(EventType.objects.create(name=EVENT["event_type"]))

    with gunicorn(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0") as base_url:
        sync_status, sync_headers, sync_body = call(f"{base_url}/fx/git/repositories/{repository.pk}/sync", "POST",
                                                    **{"X-API-KEY": key})  # fmt: skip
        event_status, _, event_body = call(f"{base_url}/fx/events", "POST", EVENT, **{"X-API-KEY": key})

    assert sync_status == 503, sync_body
    assert sync_headers["Retry-After"] == "5" and sync_headers["Content-Type"] == "application/json"
    assert json.loads(sync_body) == {
        "detail": "The message broker is unavailable right now; try again in a few seconds."
    }
    # An event is recorded before its publish: it is accepted, and its run waits, pending, for the broker.
    assert event_status == 202, event_body
    (execution_id,) = json.loads(event_body)["executions"]
    assert Execution.objects.get(pk=execution_id).status == ExecutionStatus.PENDING


def test_gunicorn_answers_503_json_and_a_503_page_while_the_database_is_unreachable(transactional_db):
    key = "exk_any-key-the-database-cannot-be-asked-about"

    with gunicorn(DATABASE_URL=f"postgres://postgres@127.0.0.1:{closed_port()}/nowhere") as base_url:
        api = call(f"{base_url}/fx/executions/{Execution().id}", **{"X-API-KEY": key})
        page = call(f"{base_url}/admin/", Cookie="sessionid=a-session-the-database-would-know")

    assert api[0] == 503 and api[1]["Retry-After"] == "5", api
    assert json.loads(api[2])["detail"].startswith("The database is unavailable")
    assert page[0] == 503 and page[1]["Retry-After"] == "5", page
    assert page[1]["Content-Type"].startswith("text/html")
    assert "It cannot reach its database right now" in page[2] and "Traceback" not in page[2]


def test_a_connection_a_database_restart_broke_is_replaced_not_answered_with_an_error(transactional_db):
    key = ApiKey.issue("reader")[1]
    execution_url = f"/fx/executions/{Execution().id}"  # 404 after a query: enough to use the connection

    with gunicorn() as base_url:
        before = call(base_url + execution_url, **{"X-API-KEY": key})
        killed = _terminate_other_backends(connection.settings_dict["NAME"])
        after = call(base_url + execution_url, **{"X-API-KEY": key})

    assert killed >= 1  # gunicorn's persistent connection (CONN_MAX_AGE) is gone, as after a restart
    assert before[0] == after[0] == 404, (before, after)
    assert json.loads(after[2]) == {"detail": f"No execution {execution_url.rsplit('/', 1)[1]}."}


def _terminate_other_backends(database: str) -> int:
    """What a database restart does to every client connection but this test's own."""
    admin = psycopg2.connect(urlsplit(os.environ["DATABASE_URL"])._replace(path="/postgres").geturl())
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            connection.ensure_connection()
            mine = connection.connection.info.backend_pid
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                           "AND pid <> %s", [database, mine])  # fmt: skip
            return cursor.fetchone()[0]
    finally:
        admin.close()
