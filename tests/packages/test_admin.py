"""The seed walkthrough through the admin's forms: add a package with two files, Run it, read its results."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from executions.models import Execution, ExecutionStatus, StepStatus
from packages.importer import import_package_files
from packages.models import EventType, Package, PackageState, Project, ProjectMembership, ProjectRole, Secret, Tag
from packages.schedules import sync_package_schedule
from tests.factories import SEED_DIR, make_package, package_form

pytestmark = pytest.mark.django_db


def test_a_package_is_added_with_several_files_in_one_form(admin_client):
    response = admin_client.post(reverse("admin:packages_package_add"), package_form())

    assert response.status_code == 302, response.context["adminform"].errors if response.context else response
    package = Package.objects.get(package_name="seed_package")
    assert [(s.position, s.file_name) for s in package.scripts.all()] == [(1, "config.json"), (2, "test_scr.py")]


def test_the_same_file_twice_is_refused_with_a_message(admin_client):
    data = package_form(**{"scripts-1-upload": SimpleUploadedFile("config.json", b"{}")})
    response = admin_client.post(reverse("admin:packages_package_add"), data)

    assert response.status_code == 200
    assert "config.json appears twice" in response.content.decode()
    assert Package.objects.count() == 0


def test_an_oversized_file_is_refused(admin_client, settings):
    settings.EXECUTOR_MAX_SCRIPT_BYTES = 10
    response = admin_client.post(reverse("admin:packages_package_add"), package_form())
    assert "the limit is 10 bytes" in response.content.decode()
    assert Package.objects.count() == 0


def test_run_starts_an_execution_and_shows_the_package_executions(
    admin_client, seed_package, admin_user, django_capture_on_commit_callbacks, enqueued
):
    change_page = admin_client.get(reverse("admin:packages_package_change", args=[seed_package.pk]))
    run_url = reverse("admin:packages_package_run", args=[seed_package.pk])
    assert run_url in change_page.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(run_url)

    execution = Execution.objects.get()
    assert (execution.trigger_type, execution.status, execution.created_by) == ("manual", "pending", admin_user)
    changelist = reverse("admin:executions_execution_changelist")
    assert response["Location"] == f"{changelist}?package__id__exact={seed_package.pk}"
    assert enqueued == [("executor.run_execution", [str(execution.id)], "default")]
    listing = admin_client.get(response["Location"]).content.decode()
    assert execution.short_id in listing
    assert "0/2" in listing


def test_run_is_refused_with_a_message_when_manual_runs_are_off(admin_client):
    package = make_package(files={"a.py": ""}, allow_manual_triggering=False)
    response = admin_client.post(reverse("admin:packages_package_run", args=[package.pk]), follow=True)
    assert "does not allow manual triggering" in response.content.decode()
    assert Execution.objects.count() == 0


def test_show_results_numbers_the_output_lines(admin_client, seed_package):
    execution = Execution.objects.create(
        package=seed_package, trigger_type="manual", correlation_id="c" * 32, status=ExecutionStatus.COMPLETED
    )
    step = execution.steps.create(
        position=2,
        file_name="test_scr.py",
        status=StepStatus.COMPLETED,
        exit_code=0,
        duration_ms=41,
        stdout="somekey -> some value 2\nsome value 2\n",
        stderr="a warning",
    )
    detail = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk])).content.decode()
    results_url = reverse("admin:executions_execution_step_results", args=[execution.pk, step.pk])
    assert results_url in detail

    page = admin_client.get(results_url).content.decode()
    assert "stdout_1" in page and "somekey -&gt; some value 2" in page
    assert "stdout_2" in page and "a warning" in page and "41 ms" in page


def test_script_download_returns_the_stored_bytes(admin_client, seed_package):
    script = seed_package.scripts.get(file_name="test_scr.py")
    response = admin_client.get(reverse("admin:packages_script_download", args=[script.pk]))
    assert response.content == (SEED_DIR / "test_scr.py").read_bytes()
    assert 'filename="test_scr.py"' in response["Content-Disposition"]


def test_the_package_page_shows_which_files_run_and_which_are_only_shipped(admin_client):
    files = {"manifest.json": b'{"execution_order": ["app.py"]}', "app.py": b"import helpers", "helpers.py": b""}
    package = import_package_files("fx_app", files).package

    page = admin_client.get(reverse("admin:packages_package_change", args=[package.pk])).content.decode()

    page = re.sub(r">\s+<", "><", page)
    rows = {row.split("</p>")[0].rsplit(">", 1)[-1]: row for row in page.split('<td class="field-file_name">')[1:]}
    assert '<td class="field-runs_display"><p>Runs</p>' in rows["app.py"]
    for name in ("helpers.py", "manifest.json"):
        assert ">Shipped only</span>" in rows[name] and "manifest.json does not list it to run" in rows[name]


def test_clearing_a_position_keeps_the_script_where_it_was(admin_client, seed_package):
    first, second = seed_package.scripts.all()
    data = package_form(
        **{
            "scripts-TOTAL_FORMS": "2",
            "scripts-INITIAL_FORMS": "2",
            "scripts-0-id": str(first.pk),
            "scripts-0-position": "",
            "scripts-0-upload": "",
            "scripts-1-id": str(second.pk),
            "scripts-1-position": "7",
            "scripts-1-upload": "",
        }
    )
    response = admin_client.post(reverse("admin:packages_package_change", args=[seed_package.pk]), data)

    assert response.status_code == 302
    assert [(s.file_name, s.position) for s in seed_package.scripts.all()] == [("config.json", 1), ("test_scr.py", 7)]


def test_a_viewer_cannot_run_and_nothing_starts(client, django_user_model):
    package = make_package(files={"a.py": ""}, project=Project.objects.create(name="Sales"))
    bob = django_user_model.objects.create_user("bob", password="pw", is_staff=True)
    ProjectMembership.objects.create(project=package.project, user=bob, role=ProjectRole.VIEWER)
    client.force_login(bob)

    page = client.get(reverse("admin:packages_package_change", args=[package.pk])).content.decode()
    response = client.post(reverse("admin:packages_package_run", args=[package.pk]))

    assert reverse("admin:packages_package_run", args=[package.pk]) not in page  # no Run button either
    assert response.status_code == 403
    assert Execution.objects.count() == 0


def test_the_old_run_permission_alone_runs_nothing(client, django_user_model):
    package = make_package(files={"a.py": ""}, project=Project.objects.create(name="Sales"))
    carol = django_user_model.objects.create_user("carol", password="pw", is_staff=True)
    carol.user_permissions.add(*Permission.objects.filter(codename__in=["run_package", "view_package"]))
    client.force_login(carol)

    response = client.post(reverse("admin:packages_package_run", args=[package.pk]))

    assert response.status_code == 404  # not a member: the package is not there for her
    assert Execution.objects.count() == 0


def test_the_seed_package_is_created_as_the_seed_describes(admin_client):
    Tag.objects.create(name="demo")
    event_type = EventType.objects.create(name="demo.file_uploaded")
    data = package_form(
        project=str(Project.objects.create(name="Roboto").pk),
        tags=[str(Tag.objects.get(name="demo").pk)],
        new_tags="seed, walkthrough",
        schedule="20 * * * *",
        trigger_event_types=[str(event_type.pk)],
    )
    response = admin_client.post(reverse("admin:packages_package_add"), data)

    assert response.status_code == 302, response.context["adminform"].errors
    package = Package.objects.get(package_name="seed_package")
    assert sorted(package.tags.values_list("name", flat=True)) == ["demo", "seed", "walkthrough"]
    assert list(package.trigger_event_types.all()) == [event_type]
    task = PeriodicTask.objects.get(name=f"executor.package.{package.pk}")
    assert (task.crontab.minute, task.crontab.hour, task.enabled) == ("20", "*", True)

    page = admin_client.get(reverse("admin:packages_package_change", args=[package.pk])).content.decode()
    assert "ferris_executor.run_execution.triggered_run" in page
    assert "Next runs (UTC)" in page


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("schedule", "20 * * * 7", "day of week"),
        ("schedule", "20 * *", "5 fields"),
        ("timezone", "Mars/Olympus_Mons", "Unknown time zone"),
        ("priority", "11", "less than or equal to 10"),
        ("step_timeout_seconds", "99999999", "At most 21600 s"),
    ],
)
def test_bad_package_settings_are_refused_with_a_message(admin_client, field, value, message):
    response = admin_client.post(reverse("admin:packages_package_add"), package_form(**{field: value}))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Package.objects.count() == 0


def test_a_malformed_config_json_is_refused(admin_client):
    data = package_form(**{"scripts-0-upload": SimpleUploadedFile("config.json", b"{not json")})
    response = admin_client.post(reverse("admin:packages_package_add"), data)
    assert "config.json is not valid JSON" in response.content.decode()
    assert Package.objects.count() == 0


def test_invalid_environment_variable_names_are_refused(admin_client):
    data = package_form(
        **{"environment_variables-TOTAL_FORMS": "2", "environment_variables-0-name": "1BAD",
           "environment_variables-0-value": "x", "environment_variables-1-name": "PATH",
           "environment_variables-1-value": "/evil"}
    )  # fmt: skip
    page = admin_client.post(reverse("admin:packages_package_add"), data).content.decode()
    assert "not starting with a digit" in page
    assert "PATH is set by the executor" in page
    assert Package.objects.count() == 0


def test_secrets_are_write_only(admin_client):
    data = package_form(
        **{"secrets-TOTAL_FORMS": "1", "secrets-0-name": "api_token", "secrets-0-value": "tok-very-secret-1"},
        secrets_file=SimpleUploadedFile("secrets.json", b'{"db_password": "pw-very-secret-2"}'),
    )
    assert admin_client.post(reverse("admin:packages_package_add"), data).status_code == 302
    package = Package.objects.get()

    assert {s.name: s.reveal() for s in Secret.objects.filter(package=package)} == {
        "api_token": "tok-very-secret-1",
        "db_password": "pw-very-secret-2",
    }
    page = admin_client.get(reverse("admin:packages_package_change", args=[package.pk])).content.decode()
    assert "api_token" in page and "db_password" in page
    assert "tok-very-secret-1" not in page and "pw-very-secret-2" not in page
    for secret in Secret.objects.all():
        assert secret.encrypted_value not in page


def test_an_empty_value_keeps_an_existing_secret(admin_client, seed_package):
    secret = Secret(scope="package", package=seed_package, name="k")
    secret.set_value("original")
    secret.save()
    change_url = reverse("admin:packages_package_change", args=[seed_package.pk])
    first, second = seed_package.scripts.all()
    data = package_form(
        **{"scripts-TOTAL_FORMS": "2", "scripts-INITIAL_FORMS": "2", "scripts-0-id": str(first.pk),
           "scripts-0-upload": "", "scripts-1-id": str(second.pk), "scripts-1-upload": "",
           "secrets-TOTAL_FORMS": "1", "secrets-INITIAL_FORMS": "1", "secrets-0-id": str(secret.pk),
           "secrets-0-name": "k", "secrets-0-value": ""}
    )  # fmt: skip
    assert admin_client.post(change_url, data).status_code == 302
    secret.refresh_from_db()
    assert secret.reveal() == "original"


def test_deleting_a_package_in_the_admin_removes_its_schedule(admin_client):
    package = make_package("gone_soon", files={"a.py": ""}, schedule="0 * * * *")
    sync_package_schedule(package)
    assert PeriodicTask.objects.filter(name=f"executor.package.{package.pk}").exists()

    response = admin_client.post(reverse("admin:packages_package_delete", args=[package.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Package.objects.filter(pk=package.pk).exists()
    assert not PeriodicTask.objects.filter(name=f"executor.package.{package.pk}").exists()


def test_editing_the_schedule_in_the_admin_updates_beat(admin_client, seed_package):
    first, second = seed_package.scripts.all()
    data = package_form(
        schedule="0 9 * * 0",
        **{"scripts-TOTAL_FORMS": "2", "scripts-INITIAL_FORMS": "2", "scripts-0-id": str(first.pk),
           "scripts-0-upload": "", "scripts-1-id": str(second.pk), "scripts-1-upload": ""},
    )  # fmt: skip
    assert admin_client.post(reverse("admin:packages_package_change", args=[seed_package.pk]), data).status_code == 302
    task = PeriodicTask.objects.get(name=f"executor.package.{seed_package.pk}")
    assert (task.crontab.hour, task.crontab.day_of_week) == ("9", "1")  # FX Monday = Celery 1


def test_the_package_page_shows_its_fx_state(admin_client, seed_package):
    PackageState.objects.create(package=seed_package, data={"last_id": 41})
    page = admin_client.get(reverse("admin:packages_package_change", args=[seed_package.pk])).content.decode()
    assert "&quot;last_id&quot;: 41" in page
