"""A runner in a browser: Rita, runner of Sales, logs in, sees only Sales's packages, runs one on a real worker and
reads its results, and finds the package's page read-only (no Save; a POST of the form is refused).

The live server and a real Celery worker, as in the seed walkthrough; screenshots land in artifacts/screenshots/.
"""

import pytest
from playwright.sync_api import expect

from packages.models import Package, Project
from tests.e2e.browser import (
    expect_step,
    logged_in,
    open_from_admin_index,
    open_the_run,
    run_from_the_package_page,
    screenshot,
    show_results,
    wait_until_the_run_completes,
)
from tests.factories import make_member, make_package, make_staff

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SALES_PACKAGE = "Sales report"
HR_PACKAGE = "HR payroll"


def test_a_runner_sees_only_their_project_runs_a_package_and_cannot_edit_it(browser_page, live_server,
                                                                            celery_worker):  # fmt: skip
    sales, hr = Project.objects.create(name="Sales"), Project.objects.create(name="HR")
    package = make_package("sales_report", {"report.py": "print('orders today: 42')"}, name=SALES_PACKAGE,
                           description="Daily orders", project=sales)  # fmt: skip
    make_package("hr_payroll", {"pay.py": "print('salaries')"}, name=HR_PACKAGE, project=hr)
    rita = make_staff("rita")
    make_member(rita, sales, "runner")

    page = logged_in(browser_page, live_server, rita)
    screenshot(page, "20-runner-index")
    open_from_admin_index(page, "packages", "package", "Packages")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text(SALES_PACKAGE)
    assert HR_PACKAGE not in page.content()
    screenshot(page, "21-runner-packages")

    page.locator("#result_list").get_by_role("link", name=SALES_PACKAGE, exact=True).click()
    expect(page.locator("h1")).to_have_text("View package")  # Django's read-only page, not "Change package"
    expect(page.get_by_role("button", name="Save", exact=True)).to_have_count(0)
    expect(page.locator("input[name=description], textarea[name=description]")).to_have_count(0)
    screenshot(page, "22-runner-package-read-only")
    assert post_the_edit_form(page, live_server, package) == 403
    assert Package.objects.get(pk=package.pk).description == "Daily orders"

    run_from_the_package_page(page, SALES_PACKAGE)
    wait_until_the_run_completes(page)
    screenshot(page, "23-runner-executions")
    open_the_run(page)
    expect_step(page, "report.py", "Completed")
    show_results(page, "report.py")
    expect(page.locator("#stdout")).to_contain_text("orders today: 42")
    screenshot(page, "24-runner-results")


def post_the_edit_form(page, live_server, package: Package) -> int:
    """What a hand-made request would send: the change form posted with a valid CSRF token, from the browser's
    own session. Returns the status."""
    url = f"{live_server.url}/admin/packages/package/{package.pk}/change/"
    token = page.locator("input[name=csrfmiddlewaretoken]").first.get_attribute("value")
    form = {"csrfmiddlewaretoken": token, "name": SALES_PACKAGE, "package_name": package.package_name,
            "description": "edited by a runner", "timezone": "UTC", "priority": "5",
            "retries_after_worker_loss": "0"}  # fmt: skip
    response = page.request.post(url, form=form, headers={"Referer": url}, max_redirects=0)
    return response.status
