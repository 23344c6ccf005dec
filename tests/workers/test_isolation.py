"""Hostile scripts against the real bubblewrap sandbox: each is contained and reported with the right status."""

import json
import threading
import time

import psutil
import pytest
from django.conf import settings as django_settings

from executions.models import Execution, StepStatus, TriggerType
from executions.services import trigger_execution
from packages.models import Secret, SecretScope
from tests.factories import make_package
from workers import runner

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr("executions.services.enqueue", lambda execution: None)


def run_script(code: str, **package_fields):
    package = make_package(files={"hostile.py": code}, **package_fields)
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    return Execution.objects.get(pk=execution.pk).steps.get()


def test_a_script_runs_unprivileged_without_capabilities():
    code = "import os\ncaps = open('/proc/self/status').read().count('CapEff:\\t0000000000000000')\n"
    step = run_script(code + "print(os.getuid(), os.getgid(), caps)")
    assert step.stdout == "65534 65534 1\n"


def test_the_executor_s_code_settings_and_other_directories_are_not_there(tmp_path):
    other = tmp_path / "other-execution"
    other.mkdir()
    (other / "secret.txt").write_text("not yours")
    base = django_settings.BASE_DIR
    paths = [str(base / "executor_project" / "settings.py"), str(base / ".venv"), str(other / "secret.txt"),
             "/etc/shadow", "/root/.bashrc", "/var/run/postgresql"]  # fmt: skip
    step = run_script(f"import os, json\nprint(json.dumps([os.path.exists(p) for p in {paths!r}]))")
    assert json.loads(step.stdout) == [False] * len(paths)


def test_the_network_is_off_unless_the_package_allows_it():
    probe = (
        "import socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', 5432), timeout=2); print('reached')\n"
        "except OSError as exc:\n    print('blocked', exc.errno)\n"
    )
    assert run_script(probe).stdout.startswith("blocked")
    assert run_script(probe, package_name="network_ok", network_access=True).stdout == "reached\n"


def test_a_memory_hog_hits_the_memory_limit(settings):
    settings.EXECUTOR_STEP_MEMORY_MB = 256
    step = run_script("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')")
    assert (step.status, step.status_reason) == (StepStatus.FAILED, "failed: memory limit")


def test_an_infinite_loop_hits_the_cpu_limit(settings):
    settings.EXECUTOR_STEP_CPU_SECONDS = 1
    step = run_script("while True:\n    pass")
    assert (step.status, step.status_reason) == (StepStatus.FAILED, "failed: CPU time limit")


def test_tmp_is_private_and_size_capped(settings, tmp_path):
    settings.EXECUTOR_STEP_TMP_MB = 8
    host_file = tmp_path / "host-only.txt"  # under the host's /tmp
    host_file.write_text("not for scripts")
    code = (
        f"import os\nprint(os.path.exists({str(host_file)!r}))\n"
        "try:\n    open('/tmp/big', 'wb').write(b'x' * 16 * 1024 * 1024); print('wrote')\n"
        "except OSError as exc:\n    print('full', exc.errno)\n"
    )
    assert run_script(code).stdout == "False\nfull 28\n"  # 28: ENOSPC


def test_killing_its_parent_only_ends_the_step():
    step = run_script(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time; time.sleep(1)\nprint('alive')"
    )
    assert step.status in {StepStatus.COMPLETED, StepStatus.FAILED}
    assert run_script("print('next one runs')", package_name="after_the_attack").stdout == "next one runs\n"


def test_secrets_are_not_on_any_command_line(settings):
    package = make_package(files={"wait.py": "import json, sys, time\njson.loads(sys.argv[1])\ntime.sleep(2)"})
    secret = Secret(scope=SecretScope.PACKAGE, package=package, name="token")
    secret.set_value("tok-cmdline-987")
    secret.save()
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    command_lines = []

    def scan():
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for process in psutil.process_iter(["cmdline"]):
                command_lines.append(" ".join(process.info["cmdline"] or []))
            time.sleep(0.1)

    scanner = threading.Thread(target=scan)
    scanner.start()
    runner.run_execution(str(execution.id), worker_name="test-worker")
    scanner.join()

    assert execution.steps.get().status == StepStatus.COMPLETED
    assert any("@EXECUTOR_ARGS_FILE" in line for line in command_lines)  # the step was seen running
    assert not any("tok-cmdline-987" in line for line in command_lines)


def test_the_admin_warns_when_the_sandbox_is_off(admin_client, settings):
    settings.EXECUTOR_SANDBOX = "off"
    assert "EXECUTOR_SANDBOX=off" in admin_client.get("/admin/").content.decode()
    settings.EXECUTOR_SANDBOX = "bwrap"
    assert "EXECUTOR_SANDBOX=off" not in admin_client.get("/admin/").content.decode()
