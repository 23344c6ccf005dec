"""The package form as a person meets it: a failed save keeps the chosen script files (never a secrets.json), the
cron error shows once, the time zone is typed with suggestions, and the schedule preview answers as you type."""

import re
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from packages import staged_uploads
from packages.models import AuditEntry, Package, Project, Secret, StagedUpload
from tests.factories import SEED_DIR, make_member, make_package, make_staff, package_form
from workers.reaper import reap

pytestmark = pytest.mark.django_db

ADD = "/admin/packages/package/add/"
PREVIEW = "/admin/packages/package/schedule-preview/"
BAD_CRON = "day of week: 7 is out of range"


def kept_tokens(page: str) -> dict[str, str]:
    """The staged-file tokens the re-rendered form carries, by row."""
    return dict(re.findall(r'name="(scripts-\d+-staged)" value="([^"]+)"', page))


def resubmit(tokens: dict[str, str], **overrides) -> dict:
    """The same form posted again with no file chosen: only the tokens of the kept files."""
    data = package_form(**overrides)
    for index in range(2):
        data[f"scripts-{index}-upload"] = ""
    return {**data, **tokens}


def test_it_keeps_the_chosen_files_across_a_failed_save_and_saves_them_on_resubmit(admin_client, admin_user):
    failed = admin_client.post(ADD, package_form(schedule="20 * * * 7"))

    page = failed.content.decode()
    assert failed.status_code == 200 and Package.objects.count() == 0
    assert page.count(BAD_CRON) == 1  # next to the field only; the preview does not repeat it
    assert "Fix the schedule above to see when it runs." in page
    assert re.search(r"kept: <strong>config\.json \(27\W+bytes\)</strong>, saved with the package", page), page
    assert "kept: <strong>test_scr.py" in page
    tokens = kept_tokens(page)
    assert len(tokens) == 2
    assert sorted(StagedUpload.objects.filter(owner=admin_user).values_list("file_name", flat=True)) == [
        "config.json", "test_scr.py"
    ]  # fmt: skip

    saved = admin_client.post(ADD, resubmit(tokens, schedule="20 * * * 6"))

    assert saved.status_code == 302, saved.context["adminform"].errors if saved.context else saved
    package = Package.objects.get(package_name="seed_package")
    assert {s.file_name: bytes(s.content) for s in package.scripts.all()} == {
        name: (SEED_DIR / name).read_bytes() for name in ("config.json", "test_scr.py")
    }
    assert [s.position for s in package.scripts.all()] == [1, 2]
    assert StagedUpload.objects.count() == 0  # consumed by the save
    scripts_added = AuditEntry.objects.filter(object_type="script", action="create")
    assert [entry.details for entry in scripts_added] == [{"fields": ["upload"]}] * 2  # not the token's field


def test_a_second_failure_keeps_the_same_files_and_a_new_choice_replaces_a_kept_one(admin_client):
    tokens = kept_tokens(admin_client.post(ADD, package_form(schedule="bad")).content.decode())

    again = admin_client.post(ADD, resubmit(tokens, schedule="still bad")).content.decode()
    assert kept_tokens(again) == tokens and "kept: <strong>test_scr.py" in again

    data = resubmit(tokens, schedule="0 9 * * *")
    data["scripts-1-upload"] = SimpleUploadedFile("test_scr.py", b"print('newer')\n")
    assert admin_client.post(ADD, data).status_code == 302
    assert bytes(Package.objects.get().scripts.get(file_name="test_scr.py").content) == b"print('newer')\n"


def test_another_persons_kept_file_is_refused(client, admin_client, django_user_model):
    tokens = kept_tokens(admin_client.post(ADD, package_form(schedule="bad")).content.decode())
    bob = django_user_model.objects.create_superuser("bob", password="password")
    client.force_login(bob)

    page = client.post(ADD, resubmit(tokens, schedule="0 9 * * *")).content.decode()

    assert page.count("The file kept from your last attempt is no longer available") == 2
    assert Package.objects.count() == 0
    assert kept_tokens(page) == {}  # bob's form does not carry alice's tokens on
    assert StagedUpload.objects.count() == 2  # still the admin's, untouched


def test_a_forged_or_expired_token_is_refused(admin_client, admin_user, settings):
    kept, token = staged_uploads.stage(admin_user, "app.py", b"print(1)\n")
    forged = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    for bad in (forged, "not-a-token"):
        page = admin_client.post(ADD, {**resubmit({}), "scripts-0-staged": bad}).content.decode()
        assert "no longer available" in page and Package.objects.count() == 0

    StagedUpload.objects.filter(pk=kept.pk).update(created_at=timezone.now() - timedelta(hours=25))
    page = admin_client.post(ADD, {**resubmit({}), "scripts-0-staged": token}).content.decode()
    assert "(kept files last 24 hours)" in page and Package.objects.count() == 0


def test_kept_files_are_checked_again_when_saved(admin_client, settings):
    tokens = kept_tokens(admin_client.post(ADD, package_form(schedule="bad")).content.decode())
    settings.EXECUTOR_MAX_SCRIPT_BYTES = 10

    page = admin_client.post(ADD, resubmit(tokens, schedule="0 9 * * *")).content.decode()

    assert "config.json is 27 bytes; the limit is 10 bytes" in page
    assert Package.objects.count() == 0


def test_only_valid_files_are_kept(admin_client):
    data = package_form(schedule="bad")
    data["scripts-0-upload"] = SimpleUploadedFile("config.json", b"{not json")
    page = admin_client.post(ADD, data).content.decode()

    assert "config.json is not valid JSON" in page
    assert list(StagedUpload.objects.values_list("file_name", flat=True)) == ["test_scr.py"]
    assert list(kept_tokens(page)) == ["scripts-1-staged"]


def test_a_secrets_file_is_never_kept_and_the_form_says_to_choose_it_again(admin_client):
    data = package_form(schedule="bad", secrets_file=SimpleUploadedFile("secrets.json", b'{"pw": "s3cret-value"}'))

    page = admin_client.post(ADD, data).content.decode()

    assert "Not kept: choose secrets.json again before saving" in page
    assert StagedUpload.objects.count() == 2  # the two scripts
    assert not StagedUpload.objects.filter(content__contains=b"s3cret-value").exists()
    assert "s3cret-value" not in page
    assert Secret.objects.count() == 0


def test_the_reaper_sweeps_expired_kept_files():
    alice = make_staff("alice", password=None)
    old, _ = staged_uploads.stage(alice, "old.py", b"")
    fresh, _ = staged_uploads.stage(alice, "fresh.py", b"")
    StagedUpload.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=24, minutes=1))

    reap()

    assert list(StagedUpload.objects.values_list("file_name", flat=True)) == ["fresh.py"]


def test_one_person_keeps_a_bounded_number_of_files(monkeypatch):
    monkeypatch.setattr(staged_uploads, "PER_OWNER", 2)
    alice = make_staff("alice", password=None)
    for name in ("a.py", "b.py", "c.py"):
        staged_uploads.stage(alice, name, b"")
    assert sorted(StagedUpload.objects.values_list("file_name", flat=True)) == ["b.py", "c.py"]


def test_the_time_zone_is_typed_with_suggestions_and_an_unknown_one_is_named(admin_client):
    page = admin_client.get(ADD).content.decode()
    assert 'list="id_timezone_choices"' in page and '<option value="Europe/Berlin">' in page
    assert '<select name="timezone"' not in page

    refused = admin_client.post(ADD, package_form(timezone="Mars/Olympus_Mons")).content.decode()
    assert "Unknown time zone “Mars/Olympus_Mons”: type a few letters of a city" in refused
    assert admin_client.post(ADD, package_form(timezone="Europe/Berlin")).status_code == 302
    assert str(Package.objects.get().timezone) == "Europe/Berlin"


BAD_INPUT = [
    ({"schedule": "20 * * * 7", "timezone": "UTC"}, "schedule", "day of week: 7 is out of range 0-6"),
    ({"schedule": "20 * *", "timezone": "UTC"}, "schedule", "5 fields"),
    ({"schedule": "x" * 5000, "timezone": "UTC"}, "schedule", "too long"),
    ({"schedule": "0 9 * * *", "timezone": "Mars/Olympus_Mons"}, "timezone", "Unknown time zone"),
    ({"schedule": "0 9 * * *"}, "timezone", "required"),
    ({"schedule": "0 9 * * *", "timezone": "\x00<script>"}, "timezone", "Unknown time zone"),
]


def test_the_preview_answers_what_is_typed_and_names_the_field_of_bad_input(admin_client):
    answer = admin_client.get(PREVIEW, {"schedule": "0 9 * * 0", "timezone": "Europe/Berlin"})

    assert answer.status_code == 200
    body = answer.json()
    assert body["words"] == "At 09:00, only on Monday"
    assert len(body["next_runs"]) == 5
    first = body["next_runs"][0]
    assert first["at"].endswith(("T09:00:00+01:00", "T09:00:00+02:00")) and first["utc"].endswith("+00:00")
    assert "Next runs (Europe/Berlin)" in body["html"] and "UTC" in body["html"]

    assert admin_client.get(PREVIEW, {"schedule": "", "timezone": "UTC"}).json()["html"] == "Not scheduled."

    for query, field, error in BAD_INPUT:  # each answered 400 with the field at fault named
        answer = admin_client.get(PREVIEW, query)
        assert answer.status_code == 400, query
        assert answer.json()["field"] == field and error in answer.json()["error"], (query, answer.json())


def test_the_preview_is_for_people_who_edit_packages(client, django_user_model):
    assert client.get(PREVIEW, {"schedule": "* * * * *", "timezone": "UTC"}).status_code == 302  # to the login
    viewer = make_staff("victor", password=None)
    make_member(viewer, Project.objects.create(name="Sales"), "viewer")
    client.force_login(viewer)
    assert client.get(PREVIEW, {"schedule": "* * * * *", "timezone": "UTC"}).status_code == 403

    maintainer = make_staff("mia", password=None)
    make_member(maintainer, Project.objects.get(name="Sales"), "maintainer")
    client.force_login(maintainer)
    assert client.get(PREVIEW, {"schedule": "* * * * *", "timezone": "UTC"}).status_code == 200
    assert client.post(PREVIEW, {"schedule": "* * * * *", "timezone": "UTC"}).status_code == 405


def test_the_change_page_previews_the_saved_schedule_and_carries_the_live_script(admin_client):
    package = make_package(files={"a.py": ""}, schedule="0 9 * * *")
    page = admin_client.get(reverse("admin:packages_package_change", args=[package.pk])).content.decode()
    assert "At 09:00" in page and "Next runs (UTC)" in page
    assert reverse("admin:packages_package_schedule_preview") in page


def test_a_new_version_of_a_script_is_kept_on_the_change_page_too(admin_client, seed_package):
    url = reverse("admin:packages_package_change", args=[seed_package.pk])
    first, second = seed_package.scripts.all()
    rows = {"scripts-TOTAL_FORMS": "2", "scripts-INITIAL_FORMS": "2", "scripts-0-id": str(first.pk),
            "scripts-0-upload": "", "scripts-1-id": str(second.pk)}  # fmt: skip
    newer = SimpleUploadedFile("test_scr.py", b"print('v2')\n")

    page = admin_client.post(url, package_form(schedule="bad", **rows, **{"scripts-1-upload": newer})).content.decode()
    assert "kept: <strong>test_scr.py (12" in page
    tokens = kept_tokens(page)
    assert list(tokens) == ["scripts-1-staged"]

    saved = admin_client.post(url, package_form(schedule="", **rows, **{"scripts-1-upload": ""}, **tokens))
    assert saved.status_code == 302
    second.refresh_from_db()
    assert bytes(second.content) == b"print('v2')\n"
