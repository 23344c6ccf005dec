"""The step loop against the real database and real subprocesses (no Celery: the task is a thin wrapper)."""

import json

import pytest
from cryptography.fernet import Fernet

from executions.models import Execution, ExecutionStatus, StepStatus, TriggerType
from executions.services import trigger_execution
from packages.models import EnvironmentVariable, Project, SecretScope
from tests.factories import add_secret, make_package
from workers import runner
from workers.lease import LeaseLost, claim
from workers.masking import MASK

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def run(package, **params) -> Execution:
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL, params=params)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    execution.refresh_from_db()
    return execution


def test_the_seed_package_reads_its_config_through_ferris_cli(seed_package):
    execution = run(seed_package)

    assert execution.status == ExecutionStatus.COMPLETED
    config_step, script_step = execution.steps.order_by("position")
    assert config_step.status == StepStatus.UNPROCESSED
    assert script_step.status == StepStatus.COMPLETED
    assert script_step.exit_code == 0
    assert script_step.stdout_lines[:2] == [("stdout_1", "somekey -> some value 2"), ("stdout_2", "some value 2")]
    assert script_step.duration_ms > 0
    assert execution.worker_name == "test-worker"
    assert execution.started_at <= execution.finished_at


def test_a_failing_step_fails_the_execution_and_skips_the_rest():
    package = make_package(
        files={
            "1_ok.py": "print('first')",
            "2_boom.py": "import sys; print('about to fail'); sys.exit(3)",
            "3_never.py": "print('never')",
        }
    )
    execution = run(package)

    assert execution.status == ExecutionStatus.FAILED
    assert execution.status_reason == "failed: step 2 (2_boom.py) failed"
    statuses = list(execution.steps.order_by("position").values_list("status", "status_reason", "exit_code"))
    assert statuses == [
        (StepStatus.COMPLETED, "", 0),
        (StepStatus.FAILED, "failed: exit code 3", 3),
        (StepStatus.SKIPPED, "skipped: earlier step failed", None),
    ]


def test_a_traceback_lands_in_the_step_errors():
    execution = run(make_package(files={"bad.py": "raise RuntimeError('no data for today')"}))
    step = execution.steps.get()
    assert step.status == StepStatus.FAILED
    assert "RuntimeError: no data for today" in step.stderr


def test_scripts_get_the_fx_arguments_and_parameters_cannot_spoof_them():
    package = make_package(files={"show.py": "import sys; print(sys.argv[1])"})
    execution = run(package, region="eu", package_name="spoofed")

    payload = json.loads(execution.steps.get().stdout)
    assert payload["region"] == "eu"
    assert payload["package_name"] == package.package_name
    assert payload["package_id"] == str(package.id)
    assert payload["execution_id"] == payload["_fxexec"] == str(execution.id)
    assert payload["_fxcid"] == execution.correlation_id
    assert payload["trigger_type"] == "manual"
    assert payload["secrets"] == {}


def test_scripts_run_in_a_private_copy_with_siblings_importable_and_a_scrubbed_environment(settings):
    package = make_package(
        files={
            "helpers.py": "GREETING = 'hi from a sibling'",
            "main.py": (
                "import os, json, helpers\n"
                "print(helpers.GREETING)\n"
                "print(json.dumps(sorted(os.listdir('.'))))\n"
                "print(json.dumps(dict(os.environ)))\n"
            ),
        }
    )
    execution = run(package)

    main = execution.steps.get(file_name="main.py")
    greeting, listing, environment = main.stdout.splitlines()
    assert greeting == "hi from a sibling"
    assert json.loads(listing) == ["helpers.py", "main.py"]
    env = json.loads(environment)
    for leaked in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"):
        assert leaked not in env
    assert env["HOME"].endswith("/home")


def test_a_second_delivery_of_the_same_execution_runs_nothing(seed_package):
    execution = run(seed_package)
    before = list(execution.steps.values_list("id", "started_at", "stdout"))

    runner.run_execution(str(execution.id), worker_name="another-worker")

    execution.refresh_from_db()
    assert execution.worker_name == "test-worker"
    assert list(execution.steps.values_list("id", "started_at", "stdout")) == before


def test_a_missing_interpreter_fails_the_step_with_a_reason(settings):
    settings.EXECUTOR_SANDBOX = "off"  # in the sandbox, bwrap itself reports it (exit code 1, on stderr)
    settings.EXECUTOR_SCRIPT_PYTHON = "/nonexistent/python"
    execution = run(make_package(files={"a.py": "print(1)"}))
    step = execution.steps.get()
    assert step.status == StepStatus.FAILED
    assert step.status_reason.startswith("failed: could not start the script")


def test_a_timed_out_step_says_so(settings):
    settings.EXECUTOR_STEP_TIMEOUT_SECONDS = 1
    execution = run(make_package(files={"slow.py": "import time; time.sleep(30)"}))
    step = execution.steps.get()
    assert (step.status, step.status_reason, step.exit_code) == (StepStatus.FAILED, "failed: timed out after 1 s", None)


def test_writes_after_losing_the_lease_are_refused(seed_package):
    execution = trigger_execution(seed_package, trigger_type=TriggerType.MANUAL)
    lease = claim(str(execution.id), "worker-a")
    assert claim(str(execution.id), "worker-b") is None

    Execution.objects.filter(pk=execution.pk).update(lease_owner="someone-else")
    with pytest.raises(LeaseLost):
        lease.update_step(execution.steps.first().id, status=StepStatus.RUNNING)
    with pytest.raises(LeaseLost):
        lease.update_execution(status=ExecutionStatus.COMPLETED)
    assert execution.steps.first().status == StepStatus.PENDING


def test_scripts_get_secrets_package_over_project_over_platform_and_output_masks_them():
    project = Project.objects.create(name="finance")
    package = make_package(
        project=project,
        files={"leak.py": "import json, sys\nargs = json.loads(sys.argv[1])\nprint(json.dumps(args['secrets']))\n"
               "print('token is', args['secrets']['api_token'], file=sys.stderr)"},
    )  # fmt: skip
    add_secret(name="api_token", value="platform-tok-1", scope=SecretScope.PLATFORM)
    add_secret(project=project, name="api_token", value="project-tok-22", scope=SecretScope.PROJECT)
    add_secret(project=project, name="db_password", value="project-pw-333", scope=SecretScope.PROJECT)
    add_secret(package=package, name="api_token", value="package-tok-4444", scope=SecretScope.PACKAGE)

    step = run(package).steps.get()

    assert step.status == StepStatus.COMPLETED
    assert json.loads(step.stdout) == {"api_token": MASK, "db_password": MASK}
    assert step.stderr == f"token is {MASK}\n"
    assert "package-tok-4444" not in step.stdout + step.stderr


def test_the_script_itself_sees_the_real_secret_values():
    package = make_package(files={"check.py": "import json, sys\nassert json.loads(sys.argv[1])['secrets'] == "
                                  "{'k': 's3cr3t-value'}\nprint('ok')"})  # fmt: skip
    add_secret(package=package, name="k", value="s3cr3t-value", scope=SecretScope.PACKAGE)
    step = run(package).steps.get()
    assert (step.status, step.stdout) == (StepStatus.COMPLETED, "ok\n")


def test_package_environment_variables_reach_the_script():
    package = make_package(files={"env.py": "import os; print(os.environ['REGION'], os.environ['HOME'] != '/x')"})
    EnvironmentVariable.objects.create(package=package, name="REGION", value="eu-west")
    assert run(package).steps.get().stdout == "eu-west True\n"


def test_continue_on_failure_runs_the_remaining_steps():
    package = make_package(
        files={"1.py": "import sys; sys.exit(1)", "2.py": "print('still ran')"}, continue_on_failure=True
    )
    execution = run(package)
    assert execution.status == ExecutionStatus.FAILED
    assert list(execution.steps.order_by("position").values_list("status", flat=True)) == [
        StepStatus.FAILED,
        StepStatus.COMPLETED,
    ]


def test_the_package_step_timeout_applies():
    package = make_package(files={"slow.py": "import time; time.sleep(30)"}, step_timeout_seconds=1)
    assert run(package).steps.get().status_reason == "failed: timed out after 1 s"


def test_with_an_entrypoint_only_that_file_runs_and_the_others_are_importable():
    package = make_package(
        files={"lib.py": "VALUE = 41", "main.py": "import lib; print(lib.VALUE + 1)"}, entrypoint="main.py"
    )
    execution = run(package)
    assert list(execution.steps.values_list("file_name", "status", "stdout")) == [
        ("main.py", StepStatus.COMPLETED, "42\n")
    ]


def test_an_undecryptable_secret_fails_the_run_with_a_clear_reason(settings):
    package = make_package(files={"a.py": "print(1)"})
    add_secret(package=package, name="k", value="v", scope=SecretScope.PACKAGE)
    settings.EXECUTOR_FERNET_KEYS = [Fernet.generate_key().decode()]

    execution = run(package)

    assert execution.status == ExecutionStatus.FAILED
    assert "cannot be decrypted" in execution.status_reason
    step = execution.steps.get()  # it never started: skipped, not failed as if the script had
    assert (step.status, step.status_reason) == (StepStatus.SKIPPED, "skipped: the execution failed (see its reason)")
