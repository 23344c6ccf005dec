"""A package author against the worker host, on a real root worker with the sandbox on: each attack is tried as an
attacker would, and each test checks that it failed with a clear status AND that the host is untouched (target
files unchanged, no process left, the worker healthy, the next run fine). The unprivileged worker mode is in
test_unprivileged_sandbox.py."""

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from executions.models import ExecutionStatus, StepStatus
from packages.models import EnvironmentVariable, PackageState
from tests.e2e.processes import worker_process
from tests.e2e.runs import run_on, start_on, step_processes
from tests.factories import add_secret, make_package
from tests.security.attacks import ESCAPES, build_evil_library

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SECRET = "s3cr3t-value-never-on-the-host"


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    queue = f"security-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path_factory.mktemp("security") / "worker.log"
    with django_db_blocker.unblock(), worker_process(log_path, queues=queue, name="security") as worker:
        yield worker


@pytest.fixture(autouse=True)
def worker_still_healthy(worker, monkeypatch):
    """After every attack: the worker is alive, nothing of the step is left, and the next run works."""
    yield
    assert worker.proc.poll() is None, worker.log()[-3000:]
    assert step_processes() == []
    after = run_on(worker, make_package(f"after_{uuid.uuid4().hex[:8]}", {"ok.py": "print('fine')"}), monkeypatch)
    assert (after.status, after.steps.get().stdout) == (ExecutionStatus.COMPLETED, "fine\n")


@pytest.fixture
def host_file():
    """Make a root-only file on the host; returns a function that tells whether it is exactly as made."""
    made = []

    def make(content: bytes) -> Path:
        path = Path(f"/var/tmp/executor-victim-{uuid.uuid4().hex}")
        path.write_bytes(content)
        path.chmod(0o600)
        made.append((path, content))
        return path

    yield make
    for path, content in made:
        info = path.lstat()
        assert (path.read_bytes(), info.st_uid, info.st_gid, info.st_mode & 0o7777) == (content, 0, 0, 0o600)
        path.unlink()


def test_dangerous_variable_names_are_refused_when_saved(db):
    package = make_package("env_names", {"a.py": "pass"})
    refused_names = (
        "LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH", "GLIBC_TUNABLES", "PYTHONPATH", "PYTHONSTARTUP", "BASH_ENV",
        "ENV", "IFS", "PATH", "HOME", "TZ", "EXECUTOR_ARGS_FILE", "LC_ALL", "NODE_OPTIONS",
    )  # fmt: skip
    for name in refused_names:
        with pytest.raises(ValidationError) as refused:
            EnvironmentVariable(package=package, name=name, value="x").full_clean()
        assert "name" in refused.value.message_dict, name
    EnvironmentVariable(package=package, name="REPORT_REGION", value="eu").full_clean()  # an ordinary one is fine


def test_ld_preload_from_a_package_never_runs_on_the_host(worker, monkeypatch, tmp_path):
    marker = Path(f"/var/tmp/executor-pwned-{uuid.uuid4().hex}")
    library = build_evil_library(tmp_path, marker)
    package = make_package("preload", {"evil.so": library, "main.py": "import os; print(os.environ.get('LD_PRELOAD'))"})
    # Stored as a package variable before such names were refused (bypassing validation, as an old row would).
    EnvironmentVariable.objects.create(package=package, name="LD_PRELOAD", value="./evil.so")
    EnvironmentVariable.objects.create(package=package, name="REPORT_REGION", value="eu")

    execution = run_on(worker, package, monkeypatch)

    assert not marker.exists(), marker.read_text()  # prlimit / bwrap (root, on the host) never loaded it
    main = execution.steps.get(file_name="main.py")
    assert (main.status, main.stdout) == (StepStatus.COMPLETED, "None\n")
    assert "LD_PRELOAD" in worker.log()  # the worker says why the variable was left out


PLANT = """
import json, os, sys
root = os.path.dirname(os.getcwd())
victim, victim_dir = json.loads(sys.argv[1])["victims"]
state = os.path.join(root, "fx", "consul", "plants.state")
os.remove(state)
os.symlink(victim, state)                                        # the worker reads and then rewrites the state
os.symlink(victim, os.path.join(root, "fx", "argv-next.py.json"))  # where argv[1] used to be written
os.rename(os.path.join(root, "fx", "outbox"), os.path.join(root, "fx", "outbox-old"))
os.symlink(victim_dir, os.path.join(root, "fx", "outbox"))       # the worker empties the outbox after the step
try:
    os.symlink(victim, os.path.join(root, "private", "argv.json"))
except OSError as exc:
    print("private:", exc.strerror)
print("planted")
"""
NEXT = "import json, sys; print(sorted(json.loads(sys.argv[1])['secrets']))"


def test_links_planted_in_the_step_s_directory_are_never_followed_by_the_worker(worker, monkeypatch, host_file):
    victim = host_file(b'{"stolen": "root-only content"}')
    victim_dir = Path(f"/var/tmp/executor-victim-dir-{uuid.uuid4().hex}")
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("keep me")
    package = make_package("plants", {"plant.py": PLANT, "next.py": NEXT})
    add_secret(package=package, name="API_TOKEN", value=SECRET)

    execution = run_on(worker, package, monkeypatch, victims=[str(victim), str(victim_dir)])

    plant, following = execution.steps.order_by("position")
    assert plant.status == StepStatus.COMPLETED, plant.stderr
    assert "private: " in plant.stdout  # the private directory is not the step's to write
    assert "context.state not saved: plants.state is not a regular file" in plant.stderr
    assert "nothing the step sent was read: outbox is not a directory" in plant.stderr
    assert (following.status, following.stdout) == (StepStatus.COMPLETED, "['API_TOKEN']\n")
    assert (victim_dir / "keep.txt").read_text() == "keep me"  # the outbox link was not emptied
    assert "stolen" not in json.dumps(PackageState.objects.filter(package=package).values("data").first())
    shutil.rmtree(victim_dir)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
def test_a_step_cannot_create_user_namespaces_or_use_the_calls_escapes_are_built_on(worker, monkeypatch):
    package = make_package("escapes", {"escape.py": ESCAPES})

    step = run_on(worker, package, monkeypatch).steps.get()

    assert step.status == StepStatus.COMPLETED, step.stderr
    lines = step.stdout.splitlines()
    assert lines[0] == "unshare -r: 1 unshare: unshare failed: Operation not permitted"
    assert lines[1:] == [f"{name} -1 Operation not permitted" for name in (
        "unshare(CLONE_NEWUSER)", "keyctl(GET_KEYRING_ID)", "userfaultfd(USER_MODE_ONLY)", "ptrace(TRACEME)",
        "io_uring_setup", "perf_event_open")]  # fmt: skip


def test_no_secret_is_left_on_the_worker_s_disk_while_a_step_runs(worker, monkeypatch):
    """argv[1] (with the decrypted secrets) is a memory-only file inside the sandbox, never a file on the host."""
    package = make_package("no_trace", {"wait.py": "import time; time.sleep(3)"})
    add_secret(package=package, name="API_TOKEN", value=SECRET)
    execution = start_on(worker, package, monkeypatch)
    found, seen_running = [], False
    for _ in range(100):
        execution.refresh_from_db()
        if execution.status == ExecutionStatus.IN_PROGRESS:
            seen_running = True
            found += _files_holding(SECRET.encode(), f"executor-{execution.short_id}-*/**/*")
        elif seen_running:
            break
        time.sleep(0.05)
    assert seen_running and found == []


def _files_holding(needle: bytes, pattern: str) -> list[str]:
    """The files under /tmp matching `pattern` that contain `needle`. The step may end (and its workspace go) while
    we look: what vanished meanwhile held nothing we could read, so it counts as not found."""
    found = []
    try:
        for path in Path("/tmp").glob(pattern):
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
    except FileNotFoundError:
        pass
    return found
