"""Browser tests: Debian's Chromium driven by Playwright's sync API against pytest-django's `live_server`.

A test module imports the fixtures it uses by name (`from tests.e2e.browser import beat, browser_page`) and the
helpers. Chromium comes from EXECUTOR_CHROMIUM or /usr/bin/chromium (`apt-get install chromium`; Playwright's own
browser download is never used). Without it the tests skip, or fail when EXECUTOR_REQUIRE_BROWSER=1 (as in CI).
Screenshots go to artifacts/screenshots/ under the project root, kept by CI as an artifact.
"""

import contextlib
import os
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import stop_process
from tests.e2e.test_schedule import start_beat

SCREENSHOTS = Path(settings.BASE_DIR) / "artifacts" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
TIMEOUT_MS = 15_000


def chromium_path() -> str:
    return os.environ.get("EXECUTOR_CHROMIUM", "/usr/bin/chromium")


def no_browser(reason: str) -> None:
    """Skip, or fail where a browser is required (CI sets EXECUTOR_REQUIRE_BROWSER=1)."""
    if os.environ.get("EXECUTOR_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (EXECUTOR_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser_page(request, monkeypatch):
    """A fresh page of a headless Chromium, 1400x1000, 15 s default timeout. When the test fails, the page it
    was on is saved as artifacts/screenshots/FAILED-<test>.png."""
    executable = chromium_path()
    if not os.access(executable, os.X_OK):
        no_browser(f"no Chromium at {executable}: apt-get install chromium, or set EXECUTOR_CHROMIUM")
    # Playwright's sync API marks an asyncio loop as running on this thread, which Django's ORM takes for an async
    # context; the test's own ORM calls stay synchronous, so let them through.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    failure_shot = "FAILED-" + re.sub(r"[^\w.-]+", "_", request.node.name)
    (SCREENSHOTS / f"{failure_shot}.png").unlink(missing_ok=True)  # from an earlier run
    failed_before = request.session.testsfailed
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            # The call phase has been reported by now: a failure shows in the session's count.
            if request.session.testsfailed > failed_before:
                with contextlib.suppress(Exception):  # a page that crashed has no picture to give
                    screenshot(page, failure_shot)
            context.close()
            browser.close()
            # With that loop marked running, Django keeps its connections apart from the thread's usual ones
            # (asgiref's thread-critical Local), so the test's queries went through a connection of their own:
            # close it here, or dropping the test database fails ("being accessed by other users").
            connections.close_all()


@pytest.fixture
def beat(tmp_path):
    """A real `celery beat` (the database scheduler) against the test database, stopped with SIGTERM."""
    proc = start_beat(tmp_path / "beat.log")
    try:
        yield proc
    finally:
        stop_process(proc)


def logged_in(page, live_server, user, password: str = "password"):
    """Log in through the admin's login form (pytest-django's `admin_user` has the password "password")."""
    page.goto(f"{live_server.url}/admin/login/")
    page.get_by_label("Username").fill(user.get_username())
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()  # the admin index, not the form again
    return page


def screenshot(page, name: str) -> Path:
    """Save the whole page as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
