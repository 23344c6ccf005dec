"""The package form in a browser at 1280x800 (and looked at again at 1920x1080 at each stage): two files and a
wrong cron are submitted, the error shows once and both files are kept; the cron is fixed while the preview follows
the typing; a plain Save stores both scripts. pytest-django's live server serves the admin; no worker is needed
(nothing runs)."""

import pytest
from playwright.sync_api import expect

from packages.models import Package
from tests.e2e.browser import logged_in, screenshot
from tests.factories import SEED_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

APP = b"import json, sys\nprint(json.loads(sys.argv[1])['package_name'])\n"
BAD_CRON = "day of week: 7 is out of range"


SMALL = {"width": 1280, "height": 800}
WIDE = {"width": 1920, "height": 1080}


def test_a_failed_save_keeps_the_files_and_the_cron_is_checked_as_you_type(
    browser_page, live_server, admin_user, tmp_path
):
    app = tmp_path / "app.py"
    app.write_bytes(APP)
    page = logged_in(browser_page, live_server, admin_user)
    page.set_viewport_size(SMALL)
    page.goto(f"{live_server.url}/admin/packages/package/add/")

    page.get_by_label("Name:", exact=True).fill("Nightly report")
    page.get_by_label("Name:", exact=True).press("Tab")  # the technical name fills itself in
    expect(page.get_by_label("Technical name:", exact=True)).to_have_value("nightly-report")
    page.get_by_label("Timezone:", exact=True).fill("Europe/Berlin")
    page.get_by_label("Schedule:", exact=True).fill("20 * * * 7")
    page.locator("#id_scripts-0-upload").set_input_files(SEED_DIR / "config.json")
    page.get_by_role("button", name="Add another Script").click()
    page.locator("#id_scripts-1-upload").set_input_files(app)
    page.get_by_role("button", name="Save", exact=True).click()

    # Refused: the cron error once, both files kept with their names and sizes.
    expect(page.locator(".errornote").first).to_contain_text("Please correct the error")
    expect(page.get_by_text(BAD_CRON)).to_have_count(1)
    expect(page.locator(".field-schedule_preview")).to_contain_text("Fix the schedule above")
    kept = page.locator(".executor-kept")
    expect(kept).to_have_count(2)
    expect(kept.nth(0)).to_contain_text("kept: config.json (27\u00a0bytes), saved with the package")
    expect(kept.nth(1)).to_contain_text(f"kept: app.py ({len(APP)}\u00a0bytes), saved with the package")
    expect(page.get_by_label("Timezone:", exact=True)).to_have_value("Europe/Berlin")
    on_both_screens(page, "package-form-kept")

    # Typing: a wrong value shows its error in the preview (the stale one above goes), a right one the runs.
    schedule = page.get_by_label("Schedule:", exact=True)
    preview = page.locator(".field-schedule_preview .readonly")
    schedule.fill("20 * * * 9")
    expect(preview).to_contain_text("Schedule: day of week: 9 is out of range")
    expect(page.get_by_text("is out of range")).to_have_count(1)
    schedule.fill("20 9 * * 6")
    expect(preview).to_contain_text("At 09:20, only on Sunday")
    expect(preview).to_contain_text("Next runs (Europe/Berlin)")
    expect(preview.locator("tbody tr")).to_have_count(5)
    expect(preview.locator("tbody tr").first).to_contain_text("09:20 CE")  # CET or CEST, then the UTC column
    page.get_by_label("Timezone:", exact=True).fill("Asia/Tokyo")
    expect(preview).to_contain_text("Next runs (Asia/Tokyo)")
    expect(preview.locator("tbody tr").first).to_contain_text("00:20 UTC")  # 09:20 JST
    on_both_screens(page, "package-form-preview")

    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("ul.messagelist li.success")).to_contain_text("was added successfully")
    package = Package.objects.get(package_name="nightly-report")
    assert (package.schedule, str(package.timezone)) == ("20 9 * * 6", "Asia/Tokyo")
    assert {s.file_name: bytes(s.content) for s in package.scripts.all()} == {
        "config.json": (SEED_DIR / "config.json").read_bytes(),
        "app.py": APP,
    }


def on_both_screens(page, name: str) -> None:
    """Screenshots at 1280x800 and 1920x1080; at each, the kept files' notes and the preview are on screen."""
    for viewport in (SMALL, WIDE):
        page.set_viewport_size(viewport)
        for box in [*page.locator(".executor-kept").all(), page.locator(".field-schedule_preview .readonly")]:
            right = box.evaluate("element => element.getBoundingClientRect().right")
            assert right <= viewport["width"], (name, viewport, right)
        screenshot(page, f"{name}-{viewport['width']}")
    page.set_viewport_size(SMALL)
