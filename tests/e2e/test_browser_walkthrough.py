"""The seed user guide (create a package, look at it, run it, read the results, save the run), done in a browser,
once as a superuser and once as a maintainer of the project (no model permissions: the role is what counts).

A person's path through the admin: links and buttons are clicked where the guide clicks them, never typed URLs
(except the login page). The web app is pytest-django's live server; a real Celery worker runs the package and a
real beat holds its schedule. Screenshots of each main page land in artifacts/screenshots/.
"""

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from packages.models import EventType, Project, ProjectRole
from tests.e2e.browser import (
    expect_step,
    logged_in,
    open_from_admin_index,
    open_the_run,
    run_from_the_package_page,
    show_results,
    wait_until_the_run_completes,
)
from tests.e2e.browser import screenshot as save_screenshot
from tests.factories import make_member, make_staff

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SEED_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "seed_package"
PACKAGE = "Seed walkthrough"
TECHNICAL_NAME = "seed_walkthrough"


@pytest.mark.parametrize("person", ["superuser", "maintainer"])
def test_the_seed_walkthrough_in_a_browser(person, browser_page, live_server, admin_user, celery_worker, beat):
    project = Project.objects.create(name="Seed project")
    EventType.objects.create(name="seed.trigger")
    user = admin_user
    if person == "maintainer":
        user = make_staff("mia")
        make_member(user, project, ProjectRole.MAINTAINER)
    page = logged_in(browser_page, live_server, user)

    def screenshot(page, name: str) -> None:  # the README's pictures are the superuser's
        save_screenshot(page, name if person == "superuser" else f"maintainer-{name}")

    screenshot(page, "01-admin-index")

    # The guide's Executions -> Packages -> +Add (here the Packages app's Packages), then Create Package 1-11.
    open_from_admin_index(page, "packages", "package", "Packages")
    page.get_by_role("link", name="Add package").click()
    fill_in_the_package(page)
    screenshot(page, "02-package-add")
    click_save(page)
    expect_success(page, f"The package “{PACKAGE}” was added successfully.")

    # Check Created Package: its details page and the event that triggers it.
    open_the_package(page)
    # "The created package should be triggered every 20 minutes of every hour but can also be run manually."
    expect(page.locator(".field-schedule_preview")).to_contain_text("At 20 minutes past the hour")
    expect(page.locator("#id_tags_to option")).to_have_text(["walkthrough"])
    expect(page.locator("#id_trigger_event_types_to option")).to_have_text(["seed.trigger"])
    screenshot(page, "03-package-detail")
    event = show_trigger_event(page)
    assert event["type"] == "ferris_executor.run_execution.triggered_run"
    assert json.loads(event["data"])["package_name"] == TECHNICAL_NAME
    screenshot(page, "04-trigger-event")

    # Package Executions / Runs: Run, then the package's executions until the run completes.
    run_from_the_package_page(page, PACKAGE)
    expect(page.locator("h1")).to_have_text("Select execution to change")
    wait_until_the_run_completes(page)
    screenshot(page, "05-executions")

    open_the_run(page)
    expect_step(page, "config.json", "Unprocessed")
    expect_step(page, "test_scr.py", "Completed")
    screenshot(page, "06-execution")
    show_results(page, "test_scr.py")
    expect(page.locator("#stdout")).to_contain_text("somekey -> some value 2")
    screenshot(page, "07-step-results")

    # Save a Run/Execution: name it, describe it, tick Saved.
    page.get_by_role("link", name="Back to the execution").click()
    save_the_run(page, name="Seed run", description="First run of the walkthrough")
    expect_success(page, "was changed successfully.")

    # needs the Saved executions list: Executions -> Saved executions shows the saved run.
    page.locator("#site-name").get_by_role("link").click()  # back to the admin index
    open_from_admin_index(page, "executions", "savedexecution", "Saved executions")
    expect(page.locator("#result_list").get_by_role("link", name="Seed run", exact=True)).to_be_visible()
    screenshot(page, "08-saved-executions")

    assert beat.proc.poll() is None, "celery beat stopped during the walkthrough"


def fill_in_the_package(page) -> None:
    page.get_by_label("Name:", exact=True).fill(PACKAGE)
    # Leaving Name prefills the technical name ("seed-walkthrough"): let that happen first, then overwrite it.
    page.get_by_label("Name:", exact=True).press("Tab")
    page.get_by_label("Technical name:", exact=True).fill(TECHNICAL_NAME)
    page.get_by_label("Description:", exact=True).fill("The seed package of the user guide, created in a browser.")
    page.get_by_label("Project:", exact=True).select_option(label="Seed project")
    page.get_by_label("New tags:", exact=True).fill("walkthrough")
    page.get_by_label("Schedule:", exact=True).fill("20 * * * *")
    choose_in_selector(page, "trigger_event_types", "seed.trigger")
    page.get_by_label("Allow manual triggering", exact=True).check()
    page.get_by_label("Active", exact=True).check()
    upload_script(page, 0, SEED_DIR / "config.json")
    page.get_by_role("button", name="Add another Script").click()  # a link with role="button"
    upload_script(page, 1, SEED_DIR / "test_scr.py")


def choose_in_selector(page, field: str, option: str) -> None:
    """A filter_horizontal widget: pick the option in the "available" list, then click the "choose" arrow."""
    page.locator(f"#id_{field}_from").select_option(label=option)
    page.locator(f"#id_{field}_add").click()
    expect(page.locator(f"#id_{field}_to option")).to_have_text([option])


def upload_script(page, row: int, path: Path) -> None:
    page.locator(f"#id_scripts-{row}-upload").set_input_files(path)


def click_save(page) -> None:
    page.get_by_role("button", name="Save", exact=True).click()


def expect_success(page, text: str) -> None:
    expect(page.locator("ul.messagelist li.success")).to_contain_text(text)


def open_the_package(page) -> None:
    """The guide's magnifying glass: the package's name in the list opens its page."""
    page.locator("#result_list").get_by_role("link", name=PACKAGE, exact=True).click()
    expect(page.locator("h1")).to_have_text("Change package")


def show_trigger_event(page) -> dict:
    """Expand the collapsed "Show Trigger Event" section and read the event it shows."""
    page.locator("summary", has_text="Show Trigger Event").click()
    event = page.locator(".field-trigger_event pre")
    expect(event).to_be_visible()
    return json.loads(event.inner_text())


def save_the_run(page, *, name: str, description: str) -> None:
    page.get_by_label("Name:", exact=True).fill(name)
    page.get_by_label("Description:", exact=True).fill(description)
    page.get_by_label("Saved", exact=True).check()
    click_save(page)
