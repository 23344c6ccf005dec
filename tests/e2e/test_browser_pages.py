"""The execution page and the executions list as a person meets them at 1280x800: the page follows a running run
in place (what is being typed into its form stays), its chain tree keeps deep levels on screen, and the list fits
without scrolling sideways. A real worker runs a step that sleeps; pytest-django's live server serves the admin."""

import pytest
from playwright.sync_api import expect

from executions.models import Execution, ExecutionStatus, TriggerType
from executions.services import trigger_execution
from tests.e2e.browser import logged_in, screenshot
from tests.factories import make_package
from workers.tasks import run_execution

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SMALL = {"width": 1280, "height": 800}
WIDE = {"width": 1920, "height": 1080}
SLEEPER = "import time\nprint('working', flush=True)\ntime.sleep(5)\nprint('done')\n"


def test_the_execution_page_follows_a_run_in_place(browser_page, live_server, admin_user, celery_worker,
                                                    monkeypatch):  # fmt: skip
    run = a_run_four_levels_down_a_chain(monkeypatch)
    page = logged_in(browser_page, live_server, admin_user)
    page.set_viewport_size(SMALL)

    page.goto(f"{live_server.url}/admin/executions/execution/{run.pk}/change/")
    status = page.locator("#executor-status")
    assert status.inner_text() in {"Pending", "In progress"}
    page.evaluate("window.executorSamePage = true")  # gone if the page reloads
    # Published once the page is open: however slow the login and the page load, the page meets the run unfinished.
    run_execution.apply_async(args=[str(run.pk)], queue="default")  # one of the lanes the worker consumes
    page.get_by_label("Name:", exact=True).fill("Typed while it runs")
    page.get_by_label("Description:", exact=True).fill("Still here after the polls")
    expect(page.locator("#live-output")).to_contain_text("working", timeout=30_000)  # the step, mid-sleep
    screenshot(page, "14-execution-running-1280")

    expect(status).to_have_text("Completed", timeout=60_000)
    assert page.evaluate("window.executorSamePage") is True
    expect(page.get_by_label("Name:", exact=True)).to_have_value("Typed while it runs")
    expect(page.get_by_label("Description:", exact=True)).to_have_value("Still here after the polls")
    expect(page.locator(".object-tools")).not_to_contain_text("Cancel execution")

    deepest = page.locator("ul.executor-chain li li li li > strong")  # this run, at depth 4
    expect(deepest).to_contain_text("(this one)")
    box = deepest.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= SMALL["width"], box

    page.goto(f"{live_server.url}/admin/executions/execution/")
    assert page.evaluate("document.documentElement.scrollWidth") <= SMALL["width"]
    results = page.locator("#changelist .results")  # the admin scrolls a too-wide table inside this box
    assert results.evaluate("box => box.scrollWidth <= box.clientWidth")
    badge = page.locator("#result_list .field-status_display .executor-badge").first
    expect(badge).to_have_text("Completed")
    assert badge.evaluate("b => b.scrollWidth <= b.clientWidth && b.getBoundingClientRect().right <= innerWidth")
    screenshot(page, "15-executions-1280")

    page.set_viewport_size(WIDE)  # the README's pictures at a common desktop size
    screenshot(page, "16-executions-1920")
    page.goto(f"{live_server.url}/admin/executions/execution/{run.pk}/change/")
    screenshot(page, "17-execution-1920")


def a_run_four_levels_down_a_chain(monkeypatch) -> Execution:
    """Four finished executions, each started by the one before, and a fifth (not yet published) below them."""
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)  # this test publishes the run
    parent = None
    for depth in range(5):
        package = make_package(f"chain_{depth}", {"main.py": SLEEPER if depth == 4 else "print(1)"})
        execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
        fields = {"correlation_id": parent.correlation_id, "parent_execution": parent,
                  "chain_depth": depth} if parent else {}  # fmt: skip
        if depth < 4:
            fields["status"] = ExecutionStatus.COMPLETED
        Execution.objects.filter(pk=execution.pk).update(**fields)
        execution.refresh_from_db()
        parent = execution
    return parent
