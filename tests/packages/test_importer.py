import json
import os

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from executions.models import Execution, TriggerType
from executions.services import trigger_execution
from packages.importer import PackageImportError, import_package_dir, import_package_files
from packages.models import Package, Secret
from packages.run_forms import parameter_fields
from tests.factories import SEED_DIR

pytestmark = pytest.mark.django_db


def write(directory, files: dict[str, str]):
    directory.mkdir()
    for name, content in files.items():
        (directory / name).write_text(content)
    return directory


def test_it_imports_a_directory_in_name_order_and_binds_the_project():
    result = import_package_dir(SEED_DIR, project_name="demo")

    package = Package.objects.get(package_name="seed_package")
    assert result.created and result.package == package
    assert package.project.name == "demo"
    assert [(s.position, s.file_name, s.kind) for s in package.scripts.all()] == [
        (1, "config.json", "config"),
        (2, "test_scr.py", "python"),
    ]
    assert bytes(package.scripts.get(file_name="config.json").content) == (SEED_DIR / "config.json").read_bytes()


def test_manifest_execution_order_comes_first_then_the_rest_by_name(tmp_path):
    directory = write(
        tmp_path / "bob_etl",
        {
            "manifest.json": json.dumps({"description": "Nightly load", "execution_order": ["load.py", "extract.py"]}),
            "extract.py": "",
            "load.py": "",
            "notes.csv": "a,b",
        },
    )
    result = import_package_dir(directory)

    assert result.files == ["load.py", "extract.py", "manifest.json", "notes.csv"]
    assert result.package.description == "Nightly load"


def test_reimporting_replaces_the_scripts(tmp_path):
    directory = write(tmp_path / "carol", {"a.py": "print('v1')", "b.py": ""})
    import_package_dir(directory)
    (directory / "b.py").unlink()
    (directory / "a.py").write_text("print('v2')")

    result = import_package_dir(directory)

    assert not result.created
    assert [bytes(s.content) for s in result.package.scripts.all()] == [b"print('v2')"]


def test_secrets_json_goes_to_encrypted_storage_and_is_not_kept(tmp_path):
    directory = write(tmp_path / "dave", {"a.py": "", "secrets.json": '{"token": "s3cr3t-value"}'})
    result = import_package_dir(directory)

    assert result.secrets == ["token"]
    assert list(result.package.scripts.values_list("file_name", flat=True)) == ["a.py"]
    secret = Secret.objects.get(package=result.package, name="token")
    assert "s3cr3t-value" not in secret.encrypted_value
    assert secret.reveal() == "s3cr3t-value"


def test_the_full_manifest_describes_the_package(tmp_path):
    manifest = {
        "description": "Hourly report",
        "execution_order": ["run.py"],
        "tags": ["finance", "reports"],
        "trigger_events": ["invoice.created"],
        "schedule": "20 * * * *",
        "priority": 2,
        "allow_manual_triggering": False,
        "active": True,
        "output_events": ["report.ready"],
    }
    directory = write(tmp_path / "erin_report", {"manifest.json": json.dumps(manifest), "run.py": ""})

    package = import_package_dir(directory).package

    assert (package.description, package.schedule, package.priority, package.lane) == (
        "Hourly report", "20 * * * *", 2, "priority"
    )  # fmt: skip
    assert package.allow_manual_triggering is False
    assert sorted(package.tags.values_list("name", flat=True)) == ["finance", "reports"]
    assert list(package.trigger_event_types.values_list("name", flat=True)) == ["invoice.created"]
    assert package.output_events == ["report.ready"]
    assert PeriodicTask.objects.get(name=f"executor.package.{package.pk}").crontab.minute == "20"


def test_reimporting_updates_scripts_in_place(tmp_path):
    directory = write(tmp_path / "frank", {"a.py": "print('v1')"})
    before = import_package_dir(directory).package.scripts.get()
    (directory / "a.py").write_text("print('v2')")

    after = import_package_dir(directory).package.scripts.get()

    assert after.pk == before.pk
    assert bytes(after.content) == b"print('v2')"


@pytest.mark.parametrize(
    ("name", "files", "message"),
    [
        ("Bad Name", {"a.py": ""}, "directory name 'Bad Name'"),
        ("erin", {"manifest.json": "{not json"}, "manifest.json is not valid JSON"),
        ("erin", {"manifest.json": '{"execution_order": ["gone.py"]}'}, "do not exist: gone.py"),
        ("erin", {"manifest.json": '{"execution_order": "a.py"}', "a.py": ""}, "must be a list"),
        ("erin", {"manifest.json": '{"schedule": "61 * * * *"}'}, "schedule: minute"),
        ("erin", {"manifest.json": '{"shedule": "* * * * *"}'}, "unknown key 'shedule'"),
        ("erin", {"manifest.json": '{"priority": 11}'}, "priority"),
        ("erin", {"config.json": "[1, 2]"}, "config.json must hold a JSON object"),
        ("erin", {"config.json": "{oops"}, "config.json is not valid JSON"),
        ("erin", {"manifest.json": '{"entrypoint": "gone.py"}'}, "entrypoint gone.py does not exist"),
        (
            "erin",
            {"parameters.json": '{"fields": [{"type": "colour", "name": "c"}]}'},
            "parameters.json field 1: type must be one of",
        ),
        (
            "erin",
            {"parameters.json": '{"fields": [{"type": "select", "name": "c"}]}'},
            "choices must be a list of",
        ),
    ],
)
def test_a_bad_directory_is_refused_and_changes_nothing(tmp_path, name, files, message):
    directory = write(tmp_path / name, files)
    with pytest.raises(PackageImportError, match=message):
        import_package_dir(directory)
    assert Package.objects.count() == 0


def test_the_command_prints_the_order_and_fails_clearly(tmp_path, capsys):
    call_command("import_package", str(SEED_DIR), "--project", "demo")
    assert "1. config.json\n  2. test_scr.py" in capsys.readouterr().out
    with pytest.raises(CommandError, match="is not a directory"):
        call_command("import_package", str(tmp_path / "missing"))


def test_the_core_imports_a_mapping_of_file_names_to_bytes():
    result = import_package_files("gina", {"b.py": b"print(2)", "a.py": b"print(1)", "secrets.json": b'{"k": "v"}'},
                                  project_name="demo")  # fmt: skip

    assert (result.created, result.files, result.secrets) == (True, ["a.py", "b.py"], ["k"])
    assert [bytes(s.content) for s in result.package.scripts.all()] == [b"print(1)", b"print(2)"]
    assert result.package.project.name == "demo"


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, settings):
    settings.EXECUTOR_MAX_SCRIPT_BYTES = 1024
    directory = write(tmp_path / "hank", {"a.py": ""})
    (directory / "huge.csv").touch()
    os.truncate(directory / "huge.csv", 64 << 30)

    with pytest.raises(PackageImportError, match=f"huge.csv is {64 << 30} bytes; the limit is 1024 bytes"):
        import_package_dir(directory)  # 64 GiB (sparse): reading it first would not end in time
    assert Package.objects.count() == 0


def test_nested_directories_are_listed_not_imported(tmp_path):
    directory = write(tmp_path / "ivy", {"a.py": ""})
    (directory / "lib").mkdir()
    (directory / "lib" / "helper.py").write_text("")

    result = import_package_dir(directory)

    assert result.files == ["a.py"] and result.skipped == ["lib: directories inside a package are not imported"]


FX_APP = {
    "manifest.json": json.dumps({"execution_order": ["app.py"]}),
    "__init__.py": "",
    "helpers.py": "GREETING = 'hi'",
    "app.py": "import helpers",
    "parameters.json": '{"fields": []}',
    "lookup.csv": "a,b",
}


def test_with_execution_order_only_the_listed_scripts_run_and_the_rest_is_shipped(enqueued):
    result = import_package_files("fx_app", {name: content.encode() for name, content in FX_APP.items()})

    package = result.package
    assert result.shipped == ["__init__.py", "helpers.py", "lookup.csv", "manifest.json", "parameters.json"]
    assert list(package.scripts.filter(runs=True).values_list("file_name", flat=True)) == ["app.py"]
    assert package.scripts.count() == 6  # every file is kept: the worker copies them all beside the steps
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    assert list(execution.steps.values_list("file_name", flat=True)) == ["app.py"]


def test_a_reimport_follows_the_new_execution_order(enqueued):
    files = {name: content.encode() for name, content in FX_APP.items()}
    import_package_files("fx_app", files)
    files["manifest.json"] = json.dumps({"execution_order": ["helpers.py", "app.py"]}).encode()

    package = import_package_files("fx_app", files).package

    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    assert list(execution.steps.values_list("file_name", flat=True)) == ["helpers.py", "app.py"]


@pytest.mark.parametrize(
    ("manifest", "steps"),
    [
        (None, ["a.py", "b.py", "data.csv"]),  # no manifest: every file, as an upload
        ({"description": "x"}, ["a.py", "b.py", "data.csv", "manifest.json"]),  # no rule in it: the same
        ({"entrypoint": "b.py", "execution_order": ["a.py", "b.py"]}, ["b.py"]),  # the entrypoint alone
    ],
)
def test_without_execution_order_every_file_runs_and_an_entrypoint_runs_alone(enqueued, manifest, steps):
    files = {"a.py": b"", "b.py": b"", "data.csv": b"1"}
    if manifest is not None:
        files["manifest.json"] = json.dumps(manifest).encode()

    package = import_package_files("fx_rules", files).package

    assert [s.file_name for s in package.scripts.all() if s.is_step] == steps
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    assert list(execution.steps.values_list("file_name", flat=True)) == steps


def test_the_command_says_which_files_are_only_shipped(tmp_path, capsys):
    directory = write(tmp_path / "fx_app", FX_APP)
    call_command("import_package", str(directory))
    out = capsys.readouterr().out
    assert "  1. app.py\n" in out
    assert "  3. helpers.py  (shipped, not run: manifest.json does not list it)\n" in out


def choices_form(default, *, kind: str = "select") -> bytes:
    region = {"type": kind, "name": "region", "label": "Region", "default": default, "choices": [
        {"title": "Europe", "value": "eu"}, {"title": "Americas", "value": "us"}, {"title": "Asia", "value": 3},
        {"title": "Twice", "value": "t1"}, {"title": "Twice", "value": "t2"}]}  # fmt: skip
    return json.dumps({"fields": [{"type": "text", "name": "note"}, region]}).encode()


def test_a_choice_default_given_as_its_title_selects_that_choice_and_submits_its_value(admin_client, enqueued):
    package = import_package_files("fx_form", {"parameters.json": choices_form("Europe"), "a.py": b""}).package
    url = reverse("admin:packages_package_run", args=[package.pk])

    page = admin_client.get(url).content.decode()
    assert '<option value="eu" selected>Europe</option>' in page

    admin_client.post(url, {"note": "", "region": "eu"})  # what the browser sends for the pre-selected choice
    assert Execution.objects.get(package=package).params["region"] == "eu"


@pytest.mark.parametrize(
    ("default", "kind", "expected"),
    [("Asia", "radio", 3), (["Americas", "eu"], "multiselect", ["us", "eu"]), ("us", "select", "us")],
)
def test_a_choice_default_becomes_the_choices_value(default, kind, expected):
    package = import_package_files("fx_form", {"parameters.json": choices_form(default, kind=kind)}).package
    assert parameter_fields(package)[1]["default"] == expected


@pytest.mark.parametrize(
    ("default", "message"),
    [
        ("Oceania", "field 2 \\(region\\): default 'Oceania' is neither a choice's value nor its title"),
        ("Twice", "field 2 \\(region\\): default 'Twice' is the title of 2 choices: give a value instead"),
    ],
)
def test_a_choice_default_that_names_no_single_choice_is_an_import_problem(default, message):
    with pytest.raises(PackageImportError, match=message):
        import_package_files("fx_form", {"parameters.json": choices_form(default), "a.py": b""})
    assert Package.objects.count() == 0
