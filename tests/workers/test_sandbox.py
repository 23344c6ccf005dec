import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from django.conf import settings

from workers.fx_bridge import RUNTIME_SITE_DIR
from workers.sandbox import run_process, truncation_marker


def _python(code: str, tmp_path, *, env=None, timeout=10.0, cap=1024 * 1024):
    return run_process(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=str(tmp_path),
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
        timeout_seconds=timeout,
        output_cap_bytes=cap,
    )


def test_it_captures_output_and_exit_code(tmp_path):
    result = _python("import sys; print('hello'); print('oops', file=sys.stderr); sys.exit(3)", tmp_path)
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (3, "hello\n", "oops\n", False)


def test_it_gives_the_child_only_the_environment_it_was_handed(tmp_path):
    os.environ["EXECUTOR_TEST_LEAK"] = "should-not-be-seen"
    try:
        result = _python("import os, json; print(json.dumps(sorted(os.environ)))", tmp_path, env={"ONLY": "this"})
    finally:
        del os.environ["EXECUTOR_TEST_LEAK"]
    assert "EXECUTOR_TEST_LEAK" not in result.stdout
    assert '"ONLY"' in result.stdout


def test_it_closes_stdin(tmp_path):
    result = _python("import sys; print(repr(sys.stdin.read()))", tmp_path)
    assert result.stdout == "''\n"


def test_it_kills_the_whole_process_group_on_timeout(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """
    started = time.monotonic()
    result = _python(code, tmp_path, timeout=1.5)
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 10
    grandchild = int(pid_file.read_text())
    # The grandchild was killed with its group; once reaped by init it no longer exists.
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_it_caps_output_and_counts_what_it_dropped(tmp_path):
    result = _python("import sys; sys.stdout.write('x' * 50_000)", tmp_path, cap=1024)
    assert result.stdout == "x" * 1024
    assert result.stdout_dropped == 48_976
    assert result.exit_code == 0
    assert truncation_marker(result.stdout_dropped, 1024) == (
        "\n[output truncated: 48976 more bytes not kept, limit 1024 bytes]\n"
    )
    assert truncation_marker(0, 1024) == ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_without_a_sandbox_the_runtime_removes_the_secret_files_as_soon_as_it_has_read_them(tmp_path):
    """EXECUTOR_SANDBOX=off: argv[1] and the package's variables are files on the worker's disk for the step's
    start only; the script sees its arguments and variables, and no longer the files."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    script = tmp_path / "step.py"
    script.write_text(
        "import os, sys\n"
        f"print(sys.argv[1], os.environ['REGION'], sorted(os.listdir({str(private)!r})))\n"
        "print('EXECUTOR_ARGS_FILE' in os.environ, 'EXECUTOR_ENV_FILE' in os.environ)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(RUNTIME_SITE_DIR),
        "EXECUTOR_ARGS_FILE": str(private / "argv.json"),
        "EXECUTOR_ENV_FILE": str(private / "environment.json"),
    }
    files = {str(private / "argv.json"): b'{"secrets": {"TOKEN": "s3cret"}}',
             str(private / "environment.json"): b'{"REGION": "eu"}'}  # fmt: skip

    result = run_process(
        [settings.EXECUTOR_SCRIPT_PYTHON, str(script), "@EXECUTOR_ARGS_FILE"], cwd=str(tmp_path), env=env,
        timeout_seconds=30, output_cap_bytes=4096, private_files=files,
    )  # fmt: skip

    assert result.stdout == '{"secrets": {"TOKEN": "s3cret"}} eu []\nFalse False\n', result.stderr


SPAWNING_UNDER_SIGNALS = """
import collections, json, os, signal, sys, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "executor_project.settings")
import django
django.setup()
from workers.isolation import isolation_for
from workers.sandbox import run_process
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as a pool process running a task: not fatal to it
isolation = isolation_for([], network=False, uid=None) if sys.argv[1] == "sandbox" else None
print("spawning", flush=True)
outcomes, deadline = collections.Counter(), time.monotonic() + 3
while time.monotonic() < deadline:
    result = run_process(["/bin/true"], cwd="/tmp", env={"PATH": "/usr/bin:/bin"}, timeout_seconds=10,
                         output_cap_bytes=1024, isolation=isolation)
    outcomes[f"{result.exit_code} {result.sandbox_error}"] += 1
print(json.dumps(outcomes), flush=True)
"""


@pytest.mark.parametrize("mode", ["sandbox", "plain"])
def test_a_signal_to_the_worker_s_process_group_never_kills_a_step_while_it_is_being_started(mode):
    """Between fork and setsid a new process still belongs to the worker's process group. A supervisor's SIGTERM
    (or a Ctrl-C) to that group then reached it and killed the step as it started. Here the group gets a SIGTERM
    every millisecond while steps are started: each step runs, or (with the sandbox, if every attempt is hit) says
    it could not start; none is killed."""
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNING_UNDER_SIGNALS, mode], cwd=settings.BASE_DIR,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert spawner.stdout.readline() == "spawning\n"
    while spawner.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spawner.pid, signal.SIGTERM)
        time.sleep(0.001)

    outcomes = json.loads(spawner.stdout.read())
    could_not_start = "None it was stopped by SIGTERM before it started"
    assert set(outcomes) <= {"0 ", could_not_start}, outcomes
    assert outcomes["0 "] > 10 * outcomes.get(could_not_start, 0), outcomes
