"""The seed walkthrough through the admin's forms: add a package with two files, Run it, read its results."""

from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from executions.models import Execution, ExecutionStatus, StepStatus
from packages.models import Package
from tests.factories import SEED_DIR, make_package

pytestmark = pytest.mark.django_db


def package_form(**overrides) -> dict:
    data = {
        "name": "Seed package",
        "package_name": "seed_package",
        "description": "Prints its configuration",
        "active": "on",
        "allow_manual_triggering": "on",
        "scripts-TOTAL_FORMS": "2",
        "scripts-INITIAL_FORMS": "0",
        "scripts-MIN_NUM_FORMS": "0",
        "scripts-MAX_NUM_FORMS": "1000",
    }
    for index, name in enumerate(["config.json", "test_scr.py"]):
        data[f"scripts-{index}-upload"] = SimpleUploadedFile(name, (SEED_DIR / name).read_bytes())
    data.update(overrides)
    return data


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
    admin_client, seed_package, admin_user, django_capture_on_commit_callbacks
):
    change_page = admin_client.get(reverse("admin:packages_package_change", args=[seed_package.pk]))
    run_url = reverse("admin:packages_package_run", args=[seed_package.pk])
    assert run_url in change_page.content.decode()

    with mock.patch("workers.tasks.run_execution.apply_async") as apply_async:
        with django_capture_on_commit_callbacks(execute=True):
            response = admin_client.post(run_url)

    execution = Execution.objects.get()
    assert (execution.trigger_type, execution.status, execution.created_by) == ("manual", "pending", admin_user)
    changelist = reverse("admin:executions_execution_changelist")
    assert response["Location"] == f"{changelist}?package__id__exact={seed_package.pk}"
    apply_async.assert_called_once_with(args=[str(execution.id)], queue="default")
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


def test_a_user_without_the_run_permission_cannot_run(client, seed_package, django_user_model):
    bob = django_user_model.objects.create_user("bob", password="pw", is_staff=True)
    bob.user_permissions.add(Permission.objects.get(codename="view_package"))
    client.force_login(bob)

    response = client.post(reverse("admin:packages_package_run", args=[seed_package.pk]), follow=True)

    assert "You are not allowed to run packages." in response.content.decode()
    assert Execution.objects.count() == 0
