"""The same attacks against the sandbox as a worker that is not root runs it (the Docker image's uid 10001): bwrap
makes a user namespace and the step is nobody inside it. workers/sandbox.py needs nothing but the standard
library, so Debian's own Python drives it here as that uid (the project's virtualenv lives under /root, which uid
10001 cannot enter); the seccomp program is built here and handed over as bytes."""

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.security.attacks import ESCAPES, build_evil_library
from workers.isolation import SELF_TEST, bwrap_binary
from workers.seccomp import step_filter

SYSTEM_PYTHON = "/usr/bin/python3"
WORKER_UID = 10001
DRIVER = """
import dataclasses, json, sys
sys.path.insert(0, sys.argv[1])
from workers.sandbox import Isolation, run_process
spec = json.loads(sys.argv[2])
isolation = Isolation(bwrap=spec["bwrap"], read_only=(), writable=(spec["dir"],), network=False,
                      tmp_size_bytes=10**7, memory_bytes=2**31, cpu_seconds=30, file_size_bytes=10**8,
                      open_files=64, processes=64, uid=None, seccomp=bytes.fromhex(spec["seccomp"]))
files = {path: content.encode() for path, content in spec["files"].items()}
result = run_process(spec["argv"], cwd=spec["dir"], env=spec["env"], timeout_seconds=20, output_cap_bytes=65536,
                     isolation=isolation, private_files=files)
print(json.dumps(dataclasses.asdict(result)))
"""
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root (to become uid 10001) and Debian's python3",
)


@pytest.fixture
def workspace():
    directory = tempfile.mkdtemp(prefix="executor-unprivileged-")
    os.chown(directory, WORKER_UID, WORKER_UID)
    yield Path(directory)
    shutil.rmtree(directory)


def run_as_unprivileged_worker(workspace: Path, argv: list[str], env: dict, files: dict[str, str] | None = None):
    spec = {"bwrap": bwrap_binary(), "dir": str(workspace), "seccomp": step_filter().hex(), "argv": argv,
            "env": {"PATH": "/usr/bin:/bin", **env}, "files": files or {}}  # fmt: skip
    completed = subprocess.run(
        [SYSTEM_PYTHON, "-c", DRIVER, str(settings.BASE_DIR), json.dumps(spec)], user=WORKER_UID, group=WORKER_UID,
        extra_groups=[], capture_output=True, text=True, timeout=60, cwd=workspace, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
def test_an_unprivileged_worker_s_step_cannot_create_user_namespaces_either(workspace):
    result = run_as_unprivileged_worker(
        workspace, [SYSTEM_PYTHON, "-c", "import os; print(os.getuid())\n" + ESCAPES], {}
    )

    lines = result["stdout"].splitlines()
    assert (result["exit_code"], result["sandbox_error"], lines[0]) == (0, "", "65534")
    assert lines[1] == "unshare -r: 1 unshare: unshare failed: Operation not permitted"
    assert all(line.endswith("-1 Operation not permitted") for line in lines[2:]) and len(lines) == 8


def test_a_step_s_environment_never_reaches_the_unprivileged_worker_s_own_helpers(workspace):
    marker = Path(f"/var/tmp/executor-pwned-{uuid.uuid4().hex}")  # writable by uid 10001 on the host only
    library = workspace / "evil.so"
    library.write_bytes(build_evil_library(Path(tempfile.mkdtemp()), marker))
    os.chown(library, WORKER_UID, WORKER_UID)

    result = run_as_unprivileged_worker(
        workspace, ["/bin/sh", "-c", "cat \"$1\"; echo \" $REGION\"", "sh", f"{workspace}-private/argv.json"],
        {"LD_PRELOAD": str(library), "REGION": "eu"}, files={f"{workspace}-private/argv.json": "secret args"},
    )  # fmt: skip

    assert not marker.exists(), marker.read_text()  # prlimit and bwrap, uid 10001 on the host, never loaded it
    assert (result["exit_code"], result["stdout"]) == (0, "secret args eu\n")  # the step itself got both
    assert not Path(f"{workspace}-private").exists()  # the private file never touched the host's disk


def test_the_worker_s_self_test_passes_in_the_unprivileged_mode(workspace):
    """The image's worker (uid 10001) runs the same self-test before its first step: it must not refuse steps."""
    private = f"{workspace}-private/check"

    result = run_as_unprivileged_worker(workspace, [SYSTEM_PYTHON, "-I", "-c", SELF_TEST, private], {},
                                        files={private: "private"})  # fmt: skip

    assert (result["exit_code"], result["stdout"]) == (0, "sandbox ok\n"), result["stderr"]
