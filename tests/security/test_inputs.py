"""Bounded inputs (README: Security model): hostile bodies and headers get a 4xx with a message, never a 500, and
nothing is stored. Run-form uploads, secrets.json imports, POST /fx/events, the other API endpoints and the push
webhook, through Django's test client against PostgreSQL, and uploads over a real HTTP server (the live server).

Admin forms are posted by a client that enforces CSRF, like a browser against production: CsrfViewMiddleware
reads a form's body before any view runs, so a limit that only works when the view reads it first would pass
with the default test client and fail in production.
"""

import base64
import hashlib
import hmac
import html
import json
import socket

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from executions.models import ApiKey, Execution, ExecutionFile, TriggerEvent, TriggerType
from executions.services import trigger_execution
from executor_project.uploads import MiB
from packages.git_credentials import set_secret_field
from packages.models import EventType, GitRepository, Package, Project, Secret
from packages.run_forms import RunForm, parse_parameters
from packages.secret_forms import read_secrets_file
from tests.factories import make_package, package_form

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("enqueued")]

BOUNDARY = "executor-test-boundary"
PARAMETERS = {"fields": [{"type": "text", "name": "note"}, {"type": "file", "name": "report", "required": True}]}


class MultipartStream:
    """A multipart/form-data body made while it is read, so a 30 MiB upload costs no memory; it counts the bytes
    the server read (`read_bytes`), which is how the tests see that a body was refused before it was read."""

    def __init__(self, fields: dict[str, str], file_field: str, file_name: str, file_size: int):
        parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                 for name, value in fields.items()]  # fmt: skip
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_name}"'
                     "\r\nContent-Type: text/csv\r\n\r\n")  # fmt: skip
        self.head, self.tail = "".join(parts).encode(), f"\r\n--{BOUNDARY}--\r\n".encode()
        self.file_size = file_size
        self.length = len(self.head) + file_size + len(self.tail)
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        remaining = self.length - self.read_bytes
        size = remaining if size is None or size < 0 else min(size, remaining)
        data = self._slice(self.read_bytes, size)
        self.read_bytes += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:  # Django's LimitedStream wants one; multipart parsing never calls it
        raise AssertionError("readline is not used for multipart bodies")

    def _slice(self, start: int, size: int) -> bytes:
        body_start, tail_start = len(self.head), len(self.head) + self.file_size
        out = bytearray()
        end = start + size
        if start < body_start:
            out += self.head[start : min(end, body_start)]
        if end > body_start and start < tail_start:
            out += b"x" * (min(end, tail_start) - max(start, body_start))
        if end > tail_start:
            out += self.tail[max(start, tail_start) - tail_start : end - tail_start]
        return bytes(out)

    def environ(self) -> dict:
        return {"CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}", "CONTENT_LENGTH": str(self.length),
                "wsgi.input": self}  # fmt: skip

    def raw(self) -> bytes:
        return self._slice(0, self.length)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_superuser("alice", "alice@example.com", "alice-password-1")


@pytest.fixture
def browser(alice):
    """Alice's browser: logged in, CSRF enforced as in production; `browser.token` is her CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get(reverse("admin:index"))
    client.token = client.cookies["csrftoken"].value
    return client


@pytest.fixture
def form_package():
    return make_package("alice_report", {"parameters.json": json.dumps(PARAMETERS), "main.py": "print(1)"})


@pytest.fixture
def small_limits(settings):
    """Uploads limited to 64 KiB (scripts 16 KiB), so files over the limit are cheap to send."""
    settings.EXECUTOR_MAX_UPLOAD_BYTES = 64 * 1024
    settings.EXECUTOR_MAX_SCRIPT_BYTES = 16 * 1024


def run_url(package) -> str:
    return reverse("admin:packages_package_run", args=[package.pk])


def send(client, url: str, stream: MultipartStream, **extra):
    return client.generic("POST", url, b"", **{**stream.environ(), **extra})


def nothing_was_started() -> bool:
    return Execution.objects.count() == 0 and ExecutionFile.objects.count() == 0


# --- run-form uploads ------------------------------------------------------------------------------------------


def test_it_runs_a_form_with_a_file_under_the_limit(browser, form_package, small_limits):
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token, "note": "q1"}, "report", "report.csv", 60 * 1024)

    response = send(browser, run_url(form_package), stream)

    execution = Execution.objects.get()
    assert response.status_code == 302 and response.url == reverse("admin:executions_execution_change",
                                                                   args=[execution.pk])  # fmt: skip
    assert execution.params == {"note": "q1", "report": "_uploads/report/report.csv"}
    assert bytes(ExecutionFile.objects.get().content) == b"x" * 60 * 1024


def test_it_refuses_a_30_mib_upload_from_its_content_length_without_reading_it(browser, form_package):
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token}, "report", "report.csv", 30 * MiB)

    response = send(browser, run_url(form_package), stream)

    assert response.status_code == 413
    page = response.content.decode()
    assert "The form is 30.0 MiB: files may be at most 10 MiB (EXECUTOR_MAX_UPLOAD_BYTES)." in page
    assert "Nothing was saved or started" in page and run_url(form_package) in page  # and the way back
    assert stream.read_bytes == 0
    assert nothing_was_started()


def test_it_stops_reading_a_file_that_grows_past_the_limit(browser, form_package, small_limits):
    # 512 KiB is within the Content-Length allowance (64 KiB + 1 MiB for fields), so the body is read: until the
    # file passes 64 KiB.
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token, "note": "q1"}, "report", "report.csv", 512 * 1024)

    response = send(browser, run_url(form_package), stream)

    assert response.status_code == 413
    assert "report.csv is larger than 64 KiB (EXECUTOR_MAX_UPLOAD_BYTES)." in response.content.decode()
    assert stream.read_bytes < 64 * 1024 + 3 * 64 * 1024  # the limit plus the parser's read-ahead, not 512 KiB
    assert nothing_was_started()


def test_re_run_with_edited_parameters_has_the_same_limits(browser, form_package):
    source = trigger_execution(form_package, trigger_type=TriggerType.MANUAL, params={"note": "a"})
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token}, "report", "report.csv", 11 * MiB)

    response = send(browser, reverse("admin:executions_execution_rerun_edited", args=[source.pk]), stream)

    assert response.status_code == 413 and "files may be at most 10 MiB" in response.content.decode()
    assert Execution.objects.count() == 1 and ExecutionFile.objects.count() == 0


def test_the_run_form_checks_the_file_size_itself(admin_client, form_package, settings):
    # Scripts may be larger than run-form files here, so the upload handler lets 4 KiB through: the form says no.
    settings.EXECUTOR_MAX_UPLOAD_BYTES, settings.EXECUTOR_MAX_SCRIPT_BYTES = 2048, 64 * 1024
    upload = SimpleUploadedFile("report.csv", b"x" * 4096)

    response = admin_client.post(run_url(form_package), {"note": "q1", "report": upload})

    assert response.status_code == 200
    assert "report.csv is larger than 2 KiB (EXECUTOR_MAX_UPLOAD_BYTES)." in response.content.decode()
    assert nothing_was_started()


@pytest.mark.parametrize("file_name, message", [
    ("r" * 201 + ".csv", "Ensure this filename has at most 200 characters"),
    ("???", "The file name has no letters or digits"),
])  # fmt: skip
def test_the_run_form_refuses_file_names_it_cannot_store(file_name, message):
    files = {"report": SimpleUploadedFile(file_name, b"a,b")}
    form = RunForm(parse_parameters(json.dumps(PARAMETERS).encode()), {}, files)
    assert not form.is_valid()
    assert message in form.errors["report"][0]


def test_a_run_form_sent_chunked_without_content_length_is_refused(browser, form_package):
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token}, "report", "report.csv", 1024)

    response = send(browser, run_url(form_package), stream, CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked")

    assert response.status_code == 411
    assert "Send the body with a Content-Length header" in response.json()["detail"]
    assert stream.read_bytes == 0 and nothing_was_started()


@pytest.mark.parametrize("content_length", ["abc", "-1", "1e3", "١٢"])
def test_a_form_with_a_malformed_content_length_is_refused_with_400(browser, form_package, content_length):
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token}, "report", "report.csv", 1024)

    response = send(browser, run_url(form_package), stream, CONTENT_LENGTH=content_length)

    assert response.status_code == 400
    assert "is not a number of bytes" in response.json()["detail"]
    assert nothing_was_started()


def test_the_login_form_with_a_malformed_content_length_is_a_400_not_a_500(client):
    response = client.generic("POST", reverse("admin:login"), "username=a&password=b",
                              content_type="application/x-www-form-urlencoded", CONTENT_LENGTH="abc")  # fmt: skip
    assert response.status_code == 400


def test_a_form_posted_with_a_wrong_csrf_token_is_still_refused(browser, form_package, small_limits):
    stream = MultipartStream({"csrfmiddlewaretoken": "x" * 64, "note": "q1"}, "report", "report.csv", 1024)
    assert send(browser, run_url(form_package), stream).status_code == 403
    assert nothing_was_started()


# --- secrets.json ----------------------------------------------------------------------------------------------


def test_an_oversized_secrets_json_is_refused_before_it_is_read(browser):
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token, "name": "Alice", "package_name": "alice"},
                             "secrets_file", "secrets.json", 30 * MiB)  # fmt: skip

    response = send(browser, reverse("admin:packages_package_add"), stream)

    assert response.status_code == 413 and "files may be at most 10 MiB" in response.content.decode()
    assert stream.read_bytes == 0
    assert (Package.objects.count(), Secret.objects.count()) == (0, 0)


def test_a_secrets_json_that_grows_past_the_limit_stops_the_upload(browser, small_limits):
    stream = MultipartStream({"csrfmiddlewaretoken": browser.token, "name": "Alice", "package_name": "alice"},
                             "secrets_file", "secrets.json", 300 * 1024)  # fmt: skip

    response = send(browser, reverse("admin:packages_package_add"), stream)

    assert response.status_code == 413
    assert "secrets.json is larger than 64 KiB (EXECUTOR_MAX_UPLOAD_BYTES)." in response.content.decode()
    assert (Package.objects.count(), Secret.objects.count()) == (0, 0)


class UnreadableUpload(SimpleUploadedFile):
    def read(self, *args):
        raise AssertionError("the file was read")


def test_the_secrets_file_size_is_checked_before_the_file_is_read(settings):
    settings.EXECUTOR_MAX_UPLOAD_BYTES = 1024
    with pytest.raises(Exception, match=r"secrets.json is larger than 1 KiB \(EXECUTOR_MAX_UPLOAD_BYTES\)"):
        read_secrets_file(UnreadableUpload("secrets.json", b"{}" + b" " * 2000))


@pytest.mark.parametrize("content, message", [
    (b"[" * 5000 + b"]" * 5000, "secrets.json cannot be imported: nested deeper than 32 levels."),
    (b'{"a": {"b": "c"}}', "secrets.json values must be strings."),
    (b'{"API_TOKEN": "\\u0000"}', "holds a NUL character"),
    (b'{"API_TOKEN": "\xff"}', "secrets.json cannot be imported: not UTF-8 text."),
    (json.dumps({f"K{n}": "v" for n in range(1001)}).encode(), "holds 1001 secrets; at most 1000"),
    (json.dumps({"K" * 201: "v"}).encode(), "is longer than 200 characters"),
    (b'{"bad name": "v"}', "'bad name' is not a valid secret name"),
])  # fmt: skip
def test_a_hostile_secrets_json_is_refused_with_a_message_and_nothing_is_saved(admin_client, content, message):
    form = package_form(secrets_file=SimpleUploadedFile("secrets.json", content))

    response = admin_client.post(reverse("admin:packages_package_add"), form)

    assert response.status_code == 200
    assert message in html.unescape(response.content.decode())
    assert (Package.objects.count(), Secret.objects.count()) == (0, 0)


def test_a_refused_secrets_json_never_shows_a_value(admin_client):
    form = package_form(secrets_file=SimpleUploadedFile("secrets.json", b'{"API_TOKEN": ["tok-very-secret"]}'))
    page = admin_client.post(reverse("admin:packages_package_add"), form).content.decode()
    assert "secrets.json values must be strings." in page and "tok-very-secret" not in page


# --- POST /fx/events ---------------------------------------------------------------------------------------------

BRIDGE = '{"event_type": "sales.order_created", "event_source": "shop", "payload": %s}'
CE = {"specversion": "1.0", "id": "ce-1", "source": "erp", "type": "sales.order_created"}
CE_HEADERS = {"HTTP_CE_SPECVERSION": "1.0", "HTTP_CE_ID": "b-1", "HTTP_CE_SOURCE": "erp",
              "HTTP_CE_TYPE": "sales.order_created"}  # fmt: skip
DEEP = "[" * 5000 + "]" * 5000
CLOUDEVENTS = "application/cloudevents+json"


def nested(levels: int) -> str:
    """`levels` objects inside each other."""
    return '{"a": ' * levels + "1" + "}" * levels


def cloud_event(**fields) -> str:
    return json.dumps({**CE, **fields})


HOSTILE = [
    # (name, body, content type, extra WSGI environ, status, message)
    ("nested 5000 deep in the payload", BRIDGE % DEEP, "application/json", {}, 400, "nested deeper than 32 levels"),
    ("nested 5000 deep at the top", DEEP, "application/json", {}, 400, "nested deeper than 32 levels"),
    ("33 levels", BRIDGE % nested(32), "application/json", {}, 400, "nested deeper than 32 levels"),
    ("cloud event data nested 5000 deep", cloud_event()[:-1] + ', "data": ' + DEEP + "}", CLOUDEVENTS, {}, 400,
     "nested deeper than 32 levels"),
    ("cloud event data string nested 5000 deep", cloud_event(data=DEEP), CLOUDEVENTS, {}, 400,
     "data is refused: nested deeper than 32 levels"),
    ("Content-Length abc", BRIDGE % "{}", "application/json", {"CONTENT_LENGTH": "abc"}, 400,
     "Content-Length 'abc' is not a number of bytes"),
    ("Content-Length -1", BRIDGE % "{}", "application/json", {"CONTENT_LENGTH": "-1"}, 400,
     "is not a number of bytes"),
    ("Content-Length 10**30", BRIDGE % "{}", "application/json", {"CONTENT_LENGTH": "1" + "0" * 30}, 413,
     "larger than 262144 bytes"),
    ("chunked, no Content-Length", BRIDGE % "{}", "application/json",
     {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}, 411, "Content-Length header"),
    ("empty body", "", "application/json", {"CONTENT_TYPE": "application/json"}, 400, "The body is empty"),
    ("not UTF-8", b'{"event_type": "\xff\xfe", "event_source": "shop"}', "application/json", {}, 400,
     "not UTF-8 text"),
    ("UTF-16", '{"event_type": "a", "event_source": "b"}'.encode("utf-16"), "application/json", {}, 400,
     "not UTF-8 text"),
    ("a raw NUL byte", b'{"event_type": "a\x00b", "event_source": "shop"}', "application/json", {}, 400,
     "Malformed JSON: Invalid control character"),
    ("an escaped NUL in the payload", BRIDGE % '{"note": "a\\u0000b"}', "application/json", {}, 400,
     "holds a NUL character"),
    ("an escaped NUL in event_type", '{"event_type": "a\\u0000", "event_source": "shop"}', "application/json", {},
     400, "holds a NUL character"),
    ("a lone surrogate", BRIDGE % '{"note": "\\ud800"}', "application/json", {}, 400, "lone UTF-16 surrogate"),
    ("1e999999", BRIDGE % '{"n": 1e999999}', "application/json", {}, 400, "a number out of range"),
    ("NaN", BRIDGE % '{"n": NaN}', "application/json", {}, 400, "NaN is not a JSON number"),
    ("an integer of 5000 digits", BRIDGE % ('{"n": %s}' % ("9" * 5000)), "application/json", {}, 400,
     "an integer of 5000 digits"),
    ("binary mode without ce-id", '{"n": 1}', "application/json",
     {k: v for k, v in CE_HEADERS.items() if k != "HTTP_CE_ID"}, 400, "without the required headers ce-id"),
    ("binary mode, specversion 9.9", '{"n": 1}', "application/json", {**CE_HEADERS, "HTTP_CE_SPECVERSION": "9.9"},
     400, "Not a valid CloudEvent"),
    ("binary mode, body nested 5000 deep", DEEP, "application/json", CE_HEADERS, 400, "nested deeper than 32"),
    ("binary mode, an integer of 5000 digits", "9" * 5000, "application/json", CE_HEADERS, 400,
     "an integer of 5000 digits"),
    ("binary mode, NUL in ce-id", '{"n": 1}', "application/json", {**CE_HEADERS, "HTTP_CE_ID": "b\x00"}, 400,
     "id holds a NUL character"),
    ("binary mode, ce-time garbage", '{"n": 1}', "application/json", {**CE_HEADERS, "HTTP_CE_TIME": "\x7f" * 40},
     400, "time:"),
    ("specversion a list", json.dumps({**CE, "specversion": ["1.0"]}), CLOUDEVENTS, {}, 400,
     "Not a valid CloudEvent"),
    ("datacontenttype of 200 characters", cloud_event(datacontenttype="application/json;" + "x" * 183, data={}),
     CLOUDEVENTS, {}, 400, "datacontenttype is longer than 100 characters"),
    ("data_base64 holding Infinity", cloud_event(data_base64=base64.b64encode(b'{"n": 1e999999}').decode()),
     CLOUDEVENTS, {}, 400, "a number out of range"),
]  # fmt: skip


@pytest.fixture
def key():
    return ApiKey.issue("tests")[1]


@pytest.fixture
def subscriber():
    """A package every well-formed event of the tests' type would start."""
    package = make_package("alice_orders", {"main.py": "print(1)"})
    package.trigger_event_types.add(EventType.objects.create(name="sales.order_created"))
    return package


@pytest.mark.parametrize("body, content_type, environ, status, message", [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])  # fmt: skip
def test_a_hostile_event_gets_a_4xx_with_a_message_and_stores_nothing(client, key, subscriber, body, content_type,
                                                                      environ, status, message):  # fmt: skip
    event_types = EventType.objects.count()

    response = client.generic("POST", "/fx/events", body, content_type=content_type, HTTP_X_API_KEY=key, **environ)

    assert response.status_code == status, response.content[:500]
    assert message in response.json()["detail"]
    assert (TriggerEvent.objects.count(), Execution.objects.count()) == (0, 0)
    assert EventType.objects.count() == event_types


def test_32_levels_of_nesting_are_accepted(client, key, subscriber):
    response = client.post("/fx/events", BRIDGE % nested(31), content_type="application/json",
                           headers={"X-API-KEY": key})  # fmt: skip
    assert response.status_code == 202, response.content
    assert Execution.objects.get().params["a"]["a"]["a"] is not None


@pytest.mark.parametrize("environ, status", [
    ({"CONTENT_LENGTH": "abc"}, 400),
    ({"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}, 411),
])  # fmt: skip
def test_the_events_api_bounds_its_body_without_the_middleware_too(client, key, settings, environ, status):
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if not name.endswith("RequestLimitsMiddleware")]
    response = client.generic("POST", "/fx/events", BRIDGE % "{}", content_type="application/json",
                              HTTP_X_API_KEY=key, **environ)  # fmt: skip
    assert response.status_code == status and response.json()["detail"]
    assert TriggerEvent.objects.count() == 0


@pytest.mark.parametrize("path", [
    "/fx/cid/a%00b", "/fx/executions/a%00b", "/fx/executions/%ED%A0%80",
    "/fx/git/repositories/99999999999999999999999999", "/fx/git/repositories/-1",
])  # fmt: skip
def test_the_other_api_endpoints_answer_hostile_paths_with_a_4xx(client, key, path):
    response = client.get(path, headers={"X-API-KEY": key})
    assert 400 <= response.status_code < 500 and response.json()["detail"]


def test_sync_now_ignores_a_hostile_body(client, key, enqueued):
    repository = GitRepository.objects.create(project=Project.objects.create(name="Sales"),
                                              url="https://github.com/acme/fx.git")  # fmt: skip
    response = client.generic("POST", f"/fx/git/repositories/{repository.pk}/sync", DEEP,
                              content_type="application/json", HTTP_X_API_KEY=key)  # fmt: skip
    assert response.status_code == 202 and enqueued.of("executor.sync_repository")


# --- the push webhook -------------------------------------------------------------------------------------------


@pytest.fixture
def repository():
    repository = GitRepository.objects.create(project=Project.objects.create(name="Sales"),
                                              url="https://github.com/acme/fx.git")  # fmt: skip
    set_secret_field(repository, "webhook_secret", "hook-secret")
    repository.save()
    return repository


def signed(body: bytes) -> str:
    return "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("body", [
    DEEP.encode(), b"[1, 2]", b'{"ref": 5}', b'{"ref": "refs/heads/\\u0000"}', b"\xff\xfe", b'{"ref": NaN}',
    b"payload=%7B%22ref%22%7D",
], ids=["nested 5000 deep", "a list", "ref a number", "ref with NUL", "not UTF-8", "NaN", "form-encoded"])  # fmt: skip
def test_a_signed_webhook_whose_body_is_not_a_push_payload_still_syncs_the_branch(client, repository, body, enqueued):
    response = client.post(reverse("git_webhook", args=[repository.pk]), body, content_type="application/json",
                           headers={"X-Hub-Signature-256": signed(body)})  # fmt: skip
    assert response.status_code == 202 and response.json() == {"status": "sync queued"}
    assert enqueued.of("executor.sync_repository") == [("executor.sync_repository", [repository.pk], "maintenance")]


@pytest.mark.parametrize("headers, environ, status", [
    ({"X-Hub-Signature-256": "sha256=\xe9\xe9"}, {}, 403),
    ({}, {"CONTENT_LENGTH": "abc"}, 400),
    ({}, {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}, 411),
], ids=["a non-ASCII signature", "Content-Length abc", "chunked"])  # fmt: skip
def test_hostile_unsigned_webhook_requests_are_refused_without_a_sync(client, repository, headers, environ, status,
                                                                     enqueued):  # fmt: skip
    response = client.generic("POST", reverse("git_webhook", args=[repository.pk]), b'{"ref": "x"}',
                              content_type="application/json", headers=headers, **environ)  # fmt: skip
    assert response.status_code == status and response.json()["detail"]
    assert not enqueued.of("executor.sync_repository")


def test_a_webhook_body_over_the_limit_is_a_413(client, repository, settings, enqueued):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"ref": "refs/heads/main", "pad": "x" * 2000}).encode()
    response = client.post(reverse("git_webhook", args=[repository.pk]), body, content_type="application/json",
                           headers={"X-Hub-Signature-256": signed(body)})  # fmt: skip
    assert response.status_code == 413 and "larger than 1024 bytes" in response.json()["detail"]
    assert not enqueued.of("executor.sync_repository")


def test_a_webhook_for_a_repository_id_past_any_integer_column_is_a_404(client):
    response = client.post(f"/git/webhook/{'9' * 30}", b"{}", content_type="application/json")
    assert response.status_code == 404


# --- over a real HTTP server -------------------------------------------------------------------------------------


def http_exchange(live_server, request: bytes, body_parts: list[bytes], timeout: float = 10) -> tuple[int, bytes]:
    """Send a raw HTTP/1.1 request (headers, then each body part), and read the answer until the server closes
    or `timeout` passes: an answer while the client still holds back most of the body proves it was not read."""
    host, port = live_server.thread.host, live_server.thread.port
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(request)
        for part in body_parts:
            connection.sendall(part)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1].strip().endswith((b"}", b"</html>")):
                    break
        except TimeoutError:
            pass
    return int(answer.split(b" ", 2)[1]), answer


def session_cookie(alice) -> str:
    client = Client()
    client.force_login(alice)
    return client.cookies["sessionid"].value


@pytest.mark.django_db(transaction=True)
def test_over_http_a_chunked_upload_is_refused_and_a_30_mib_one_is_answered_before_it_is_sent(live_server, alice):
    package = make_package("alice_report", {"parameters.json": json.dumps(PARAMETERS), "main.py": "print(1)"})
    stream = MultipartStream({"note": "q1"}, "report", "report.csv", 30 * MiB)
    head = (f"POST {run_url(package)} HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid={session_cookie(alice)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n")  # fmt: skip

    chunk = stream.raw()[:4096]
    chunked = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
    status, answer = http_exchange(live_server, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode(), [chunked])
    assert status == 411 and b"Content-Length header" in answer

    status, answer = http_exchange(live_server, f"{head}Content-Length: {stream.length}\r\n\r\n".encode(), [chunk])
    assert status == 413 and b"files may be at most 10 MiB (EXECUTOR_MAX_UPLOAD_BYTES)" in answer
    assert nothing_was_started()


DEEP_CONFIG = b'{"a": ' * 5000 + b"1" + b"}" * 5000


def test_a_package_file_nested_5000_deep_is_refused_by_the_admin_form_and_by_import(db):
    from django.core.exceptions import ValidationError

    from packages.forms import json_object
    from packages.importer import PackageImportError, import_package_files

    with pytest.raises(ValidationError, match="config.json is not valid JSON: nested deeper than"):
        json_object(DEEP_CONFIG, "config.json")
    with pytest.raises(PackageImportError, match="config.json is not valid JSON"):
        import_package_files("deep_config", {"config.json": DEEP_CONFIG, "main.py": b"print(1)"})
    assert not Package.objects.filter(package_name="deep_config").exists()
