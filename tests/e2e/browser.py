"""Browser tests: Debian's Chromium driven by Playwright's sync API against pytest-django's `live_server`, and the
steps a person takes through the admin that several browser tests share.

The `browser_page` fixture (tests/e2e/conftest.py) opens a page with `chromium_page`. Chromium comes from
EXECUTOR_CHROMIUM or /usr/bin/chromium (`apt-get install chromium`; Playwright's own browser download is never
used). Without it the tests skip, or fail when EXECUTOR_REQUIRE_BROWSER=1 (as in CI). Screenshots go to
artifacts/screenshots/ under the project root, kept by CI as an artifact.
"""

import contextlib
import os
import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from playwright.sync_api import expect, sync_playwright

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


@contextlib.contextmanager
def chromium_page(request):
    """A fresh page of a headless Chromium, 1400x1000, 15 s default timeout. When the test fails, the page it
    was on is saved as artifacts/screenshots/FAILED-<test>.png."""
    executable = chromium_path()
    if not os.access(executable, os.X_OK):
        no_browser(f"no Chromium at {executable}: apt-get install chromium, or set EXECUTOR_CHROMIUM")
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


# A person's steps through the admin, shared by the browser tests.


def open_from_admin_index(page, app: str, model: str, label: str) -> None:
    """Click a model's link in its application's box on the admin index."""
    page.locator(f"#content-main .app-{app} tr.model-{model}").get_by_role("link", name=label, exact=True).click()


def run_from_the_package_page(page, package_name: str) -> None:
    """The Run button on the package's page; confirm where a confirmation page asks."""
    page.locator(".object-tools").get_by_role("button", name="Run", exact=True).click()
    confirm = page.locator("form input[type=submit][value=Run]")  # run_confirm.html; the tool above is a <button>
    started = page.locator("ul.messagelist li.success")
    expect(confirm.or_(started)).to_be_visible()
    if confirm.is_visible():
        confirm.click()
    expect(started).to_contain_text(f"of {package_name} started.")


def manual_run_row(page):
    return page.locator("#result_list tbody tr", has_text="Manual")


def wait_until_the_run_completes(page, timeout: float = 60) -> None:
    """Reload the package's executions every second until the manual run shows Completed."""
    status = manual_run_row(page).locator(".field-status_display")
    deadline = time.monotonic() + timeout
    while status.inner_text().strip() != "Completed":
        assert status.inner_text().strip() not in {"Failed", "Cancelled", "Skipped"}, status.inner_text()
        assert time.monotonic() < deadline, f"the run is still {status.inner_text().strip()!r} after {timeout} s"
        time.sleep(1)
        page.reload()


def open_the_run(page) -> None:
    """The guide's magnifying glass on the latest run: its id opens it."""
    manual_run_row(page).locator("th a").click()
    expect(page.locator("h1")).to_have_text("Change execution")


def step_row(page, file_name: str):
    return page.locator("#steps-group tbody tr", has=page.locator(".field-file_name", has_text=file_name))


def expect_step(page, file_name: str, status: str) -> None:
    expect(step_row(page, file_name).locator(".field-status_display")).to_have_text(status)


def show_results(page, file_name: str) -> None:
    step_row(page, file_name).get_by_role("link", name="Show Results").click()
    expect(page.locator("h1")).to_have_text(f"Results of {file_name}")
