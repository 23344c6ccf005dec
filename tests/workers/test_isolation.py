"""Hostile scripts against the real bubblewrap sandbox: each is contained and reported with the right status."""

import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
from django.conf import settings as django_settings

from executions.models import Execution, StepStatus, TriggerType
from executions.services import trigger_execution
from packages.models import Secret, SecretScope
from tests.e2e.runs import step_processes
from tests.factories import make_package
from workers import runner
from workers.isolation import isolation_for
from workers.sandbox import run_process

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def run_script(code: str, **package_fields):
    package = make_package(files={"hostile.py": code}, **package_fields)
    execution = trigger_execution(package, trigger_type=TriggerType.MANUAL)
    runner.run_execution(str(execution.id), worker_name="test-worker")
    return Execution.objects.get(pk=execution.pk).steps.get()


def test_a_script_runs_unprivileged_without_capabilities():
    code = (
        "import os\nstatus = open('/proc/self/status').read()\n"
        "print(os.getuid(), os.getgid(), status.count('CapEff:\\t0000000000000000'), "
        "status.count('CapBnd:\\t0000000000000000'))"
    )
    step = run_script(code)
    # A root worker gives the step its slot's own host uid (slot 0 here); otherwise it is nobody in a user namespace.
    uid = django_settings.EXECUTOR_STEP_UID_BASE if os.geteuid() == 0 else 65534
    assert step.stdout == f"{uid} {uid} 1 1\n"


def test_a_fork_bomb_hits_the_process_limit_and_everything_it_started_is_gone(settings):
    settings.EXECUTOR_STEP_PROCESSES = 32
    code = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(600)\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print('stopped after', children, exc.errno)\n"
        "    raise SystemExit(3)\n"
    )
    step = run_script(code)
    assert (step.status, step.status_reason) == (StepStatus.FAILED, "failed: exit code 3")
    assert step.stdout.startswith("stopped after ") and step.stdout.endswith(" 11\n")  # 11: EAGAIN
    assert int(step.stdout.split()[2]) < 32
    assert step_processes() == []  # nothing runs as a slot's uid any more: the sleepers are gone, warm or cold


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
    command_lines, step_seen = [], []
    workspace = f"executor-{execution.id}-"

    def scan():
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for process in psutil.process_iter(["cmdline", "cwd"]):
                command_lines.append(" ".join(process.info["cmdline"] or []))
                # A cold step's command line holds the placeholder; a warm one's is its server's, in the workspace.
                if "@EXECUTOR_ARGS_FILE" in command_lines[-1] or workspace in (process.info["cwd"] or ""):
                    step_seen.append(process.pid)
            time.sleep(0.1)

    scanner = threading.Thread(target=scan)
    scanner.start()
    runner.run_execution(str(execution.id), worker_name="test-worker")
    scanner.join()

    step = execution.steps.get()
    assert step.status == StepStatus.COMPLETED, step.stderr
    assert step_seen  # the step was seen running
    assert not any("tok-cmdline-987" in line for line in command_lines)


def test_the_admin_warns_when_the_sandbox_is_off(admin_client, settings):
    settings.EXECUTOR_SANDBOX = "off"
    assert "EXECUTOR_SANDBOX=off" in admin_client.get("/admin/").content.decode()
    settings.EXECUTOR_SANDBOX = "bwrap"
    assert "EXECUTOR_SANDBOX=off" not in admin_client.get("/admin/").content.decode()


def test_an_unprivileged_worker_s_steps_are_nobody_in_a_user_namespace(tmp_path):
    isolation = isolation_for([tmp_path], network=False, uid=None)  # what a worker not running as root uses
    result = run_process(
        [django_settings.EXECUTOR_SCRIPT_PYTHON, "-c", "import os, sys; print(os.getuid(), sys.prefix)"],
        cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"}, timeout_seconds=30, output_cap_bytes=4096,
        isolation=isolation,
    )  # fmt: skip
    prefix = str(Path(django_settings.EXECUTOR_SCRIPT_PYTHON).parent.parent)
    assert (result.exit_code, result.stdout) == (0, f"65534 {prefix}\n")
