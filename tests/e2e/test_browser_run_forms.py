"""A run through a package's generated form (its parameters.json), then a re-run with edited parameters, in a
browser against the live server and a real worker. Screenshots land in artifacts/screenshots/."""

import json
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.browser import logged_in, open_from_admin_index, screenshot, show_results
from tests.factories import make_package

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PARAMETERS = {"fields": [
    {"type": "text", "name": "region", "label": "Region", "required": True, "placeholder": "eu, us, ..."},
    {"type": "int", "name": "days", "label": "Days back", "min": 1, "max": 30, "default": 7},
    {"type": "select", "name": "level", "label": "Detail", "choices": [{"title": "Summary", "value": 1},
                                                                       {"title": "Full", "value": 2}]},
    {"type": "file", "name": "report", "label": "Report (CSV)", "required": True},
]}  # fmt: skip
SCRIPT = """\
import json, sys
args = json.loads(sys.argv[1])
print(f"region={args['region']} days={args['days']} level={args['level']!r}")
print("report:", open(args["report"]).read().strip())
"""


def test_a_run_through_the_form_and_a_rerun_with_edited_parameters(browser_page, live_server, admin_user,
                                                                   celery_worker):  # fmt: skip
    make_package("form_report", {"parameters.json": json.dumps(PARAMETERS), "report.py": SCRIPT},
                 name="Form report")  # fmt: skip
    page = logged_in(browser_page, live_server, admin_user)
    open_from_admin_index(page, "packages", "package", "Packages")
    page.locator("#result_list").get_by_role("link", name="Form report", exact=True).click()
    page.locator(".object-tools").get_by_role("link", name="Run…").click()
    expect(page.locator("h1")).to_have_text("Run Form report")
    expect(page.get_by_label("Days back:")).to_have_value("7")  # the default from parameters.json
    screenshot(page, "09-run-form")

    # A value out of range: the browser refuses it (the form carries min/max); a missing required value is
    # refused by the server, with the reason next to the field.
    page.get_by_label("Days back:").fill("45")
    page.get_by_role("button", name="Run", exact=True).click()
    assert "30" in page.get_by_label("Days back:").evaluate("field => field.validationMessage")
    page.locator("#run-form").evaluate("form => form.noValidate = true")  # as a client without those checks
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".form-row.errors")).to_have_count(3)  # region, days, report
    expect(page.locator(".errorlist").nth(1)).to_contain_text("less than or equal to 30")
    screenshot(page, "10-run-form-error")

    page.get_by_label("Region:").fill("us")
    page.get_by_label("Days back:").fill("5")
    page.get_by_label("Detail:").select_option(label="Full")
    page.get_by_label("Report (CSV):").set_input_files(
        files=[{"name": "q3.csv", "mimeType": "text/csv", "buffer": b"id,amount\n1,10\n"}]
    )
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("ul.messagelist li.success")).to_contain_text("of Form report started.")
    wait_until_completed(page)
    screenshot(page, "11-execution-from-form")
    show_results(page, "report.py")
    expect(page.locator("#stdout")).to_contain_text("region=us days=5 level=2")
    expect(page.locator("#stdout")).to_contain_text("report: id,amount")  # the uploaded file, read by the script

    # Re-run with edited parameters: the same form, filled in with this run's values; the file is kept.
    page.get_by_role("link", name="Back to the execution").click()
    page.locator(".object-tools").get_by_role("link", name="Re-run with edited parameters").click()
    expect(page.get_by_label("Region:")).to_have_value("us")
    expect(page.get_by_label("Days back:")).to_have_value("5")
    expect(page.get_by_label("Detail:")).to_have_value("2")
    page.get_by_label("Region:").fill("ca")
    screenshot(page, "12-rerun-form")
    page.get_by_role("button", name="Run", exact=True).click()
    wait_until_completed(page)
    expect(page.locator(".field-rerun_link")).to_contain_text("Form report")
    show_results(page, "report.py")
    expect(page.locator("#stdout")).to_contain_text("region=ca days=5 level=2")
    expect(page.locator("#stdout")).to_contain_text("report: id,amount")

    page.locator("#site-name").get_by_role("link").click()
    expect(page.locator(".executor-dashboard")).to_contain_text("Average execution time per package")
    screenshot(page, "13-dashboard")


def wait_until_completed(page, timeout: float = 60) -> None:
    """The execution page updates its status in place while the run goes on (no reload)."""
    status = page.locator("#executor-status")
    deadline = time.monotonic() + timeout
    while status.inner_text().strip() != "Completed":
        assert status.inner_text().strip() not in {"Failed", "Cancelled", "Skipped"}, page.content()[-3000:]
        assert time.monotonic() < deadline, f"still {status.inner_text().strip()!r} after {timeout} s"
        time.sleep(0.5)
