"""HTTP to the fault stack's gunicorn, every answer recorded.

A test ends by asserting `problems()` is empty: every request got an HTTP answer, none a server error (a 503 is
allowed while the test has a dependency down on purpose), every API error was JSON, never an HTML page, and the
admin session logged in before an outage still works after it.
"""

import contextlib
import http.client
import http.cookiejar
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int | None  # None: no HTTP answer at all (refused, reset, timed out)
    content_type: str
    body: bytes
    seconds: float
    during_outage: bool
    tag: str = ""  # the `fault` tag of the event posted
    error: str = ""
    landed_on: str = ""  # the path answered at the end of any redirects

    def json(self) -> dict:
        return json.loads(self.body)

    def execution_ids(self) -> list[str]:
        """The executions an accepted event started (listed as ids, or as objects with an id)."""
        if self.status not in (200, 202):
            return []
        listed = self.json().get("executions", [])
        return [item if isinstance(item, str) else item.get("execution_id") or item.get("id") for item in listed]

    def __str__(self) -> str:
        outcome = self.status if self.status is not None else self.error
        outage = " during an outage" if self.during_outage else ""
        return f"{self.method} {self.path} -> {outcome} [{self.content_type}]{outage}: {self.body[:300]!r}"


class Web:
    def __init__(self, base_url: str, api_key: str, admin_user: str, admin_password: str) -> None:
        self.base_url, self.api_key = base_url, api_key
        self.admin_user, self.admin_password = admin_user, admin_password
        self.answers: list[Answer] = []
        self._outage = False
        self._admin: urllib.request.OpenerDirector | None = None

    @contextlib.contextmanager
    def outage(self):
        """Requests made meanwhile may get 503 (a JSON one from the API): a dependency is down on purpose."""
        self._outage = True
        try:
            yield
        finally:
            self._outage = False

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
        *,
        opener: urllib.request.OpenerDirector | None = None,
        tag: str = "",
        timeout: float = 30,
    ) -> Answer:
        request = urllib.request.Request(self.base_url + path, data=body, headers=headers or {}, method=method)
        during, started, error = self._outage, time.monotonic(), ""
        try:
            with (opener or urllib.request.build_opener()).open(request, timeout=timeout) as response:
                status, content_type, data = response.status, response.headers.get("Content-Type", ""), response.read()
                landed_on = urllib.parse.urlsplit(response.geturl()).path
        except urllib.error.HTTPError as exc:
            status, content_type, data = exc.code, exc.headers.get("Content-Type", ""), exc.read()
            landed_on = urllib.parse.urlsplit(exc.geturl()).path
        except (OSError, http.client.HTTPException) as exc:
            status, content_type, data, error, landed_on = None, "", b"", f"{type(exc).__name__}: {exc}", ""
        seconds = time.monotonic() - started
        answer = Answer(method, path, status, content_type, data, seconds, during or self._outage, tag, error,
                        landed_on)  # fmt: skip
        self.answers.append(answer)
        return answer

    def post_event(self, event_type: str, data: dict) -> Answer:
        body = json.dumps({"event_type": event_type, "event_source": "fault-suite", "payload": data}).encode()
        headers = {"Content-Type": "application/json", "X-API-KEY": self.api_key}
        return self.request("POST", "/fx/events", body, headers, tag=data.get("fault", ""))

    def execution(self, execution_id: str) -> Answer:
        return self.request("GET", f"/fx/executions/{execution_id}", headers={"X-API-KEY": self.api_key})

    def admin_page(self, path: str = "/admin/executions/execution/") -> Answer:
        return self.request("GET", path, opener=self._admin_session())

    def accepted_ids(self, tag: str) -> set[str]:
        return {id_ for answer in self.answers if answer.tag == tag for id_ in answer.execution_ids()}

    def problems(self) -> list[str]:
        found = []
        for answer in self.answers:
            if answer.status is None:
                found.append(f"no answer: {answer}")
            elif answer.status >= 500 and not (answer.status == 503 and answer.during_outage):
                found.append(f"server error: {answer}")
            elif answer.path.startswith("/fx/") and answer.status >= 400 and "json" not in answer.content_type:
                found.append(f"API error that is not JSON: {answer}")
            elif answer.landed_on == "/admin/login/" and not answer.path.startswith("/admin/login/"):
                found.append(f"logged out (the session was lost): {answer}")
        return found

    @contextlib.contextmanager
    def asking_meanwhile(self, tag: str, execution_id: str, every: float = 0.5):
        """During an outage, what users keep doing: post an event, read an execution, the health check and an admin
        list, every `every` seconds, from a thread; all of it recorded as during the outage."""
        stop = threading.Event()
        session = self._admin_session()  # logged in before the outage

        def ask() -> None:
            while not stop.is_set():
                self.post_event("faults.sleep", {"fault": tag, "seconds": 0})
                self.execution(execution_id)
                self.request("GET", "/healthz")
                self.request("GET", "/admin/executions/execution/", opener=session)
                stop.wait(every)

        asker = threading.Thread(target=ask, name="asking-meanwhile", daemon=True)
        with self.outage():
            asker.start()
            try:
                yield
            finally:
                stop.set()
                asker.join(timeout=120)

    def burst(self, event_type: str, tag: str, rate: float, seconds: float, threads: int = 16) -> list[Answer]:
        """`rate` events per second for `seconds`, each sent at its own time whatever the answers take."""
        count = round(rate * seconds)
        started = time.monotonic()

        def send(n: int) -> Answer:
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            return self.post_event(event_type, {"fault": tag, "n": n})

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(send, range(count)))

    def _admin_session(self) -> urllib.request.OpenerDirector:
        """Logged in to the admin as the suite's superuser (once): a session cookie, as a browser keeps it."""
        if self._admin is None:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            page = self.request("GET", "/admin/login/", opener=opener)
            token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
            assert token, f"no login form: {page}"
            form = urllib.parse.urlencode({
                "username": self.admin_user, "password": self.admin_password,
                "csrfmiddlewaretoken": token.group(1).decode(), "next": "/admin/",
            }).encode()  # fmt: skip
            headers = {"Content-Type": "application/x-www-form-urlencoded", "Referer": f"{self.base_url}/admin/login/"}
            answer = self.request("POST", "/admin/login/", form, headers, opener=opener)
            assert answer.status == 200 and any(cookie.name == "sessionid" for cookie in jar), f"login: {answer}"
            self._admin = opener
        return self._admin
