"""The sandbox as a worker that is not root runs it (the Docker image's uid 10001): a user namespace, nobody inside,
and the process limit still holds. workers/sandbox.py needs nothing but the standard library, so Debian's own
Python drives it here as that uid (the project's virtualenv lives under /root, which uid 10001 cannot enter)."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from workers.isolation import bwrap_binary

SYSTEM_PYTHON = "/usr/bin/python3"
WORKER_UID = 10001
DRIVER = """
import dataclasses, json, sys
sys.path.insert(0, sys.argv[1])
from workers.sandbox import Isolation, run_process
spec = json.loads(sys.argv[2])
code = (
    "import os\\nprint(os.getuid())\\nchildren = 0\\n"
    "try:\\n    while True:\\n        if os.fork() == 0:\\n            __import__('time').sleep(30)\\n"
    "        children += 1\\n"
    "except OSError as exc:\\n    print(children, exc.errno)\\n"
)
isolation = Isolation(bwrap=spec["bwrap"], read_only=(), writable=(spec["dir"],), network=False,
                      tmp_size_bytes=10**7, memory_bytes=2**31, cpu_seconds=30, file_size_bytes=10**8,
                      open_files=64, processes=spec["processes"], uid=None)
result = run_process([sys.executable, "-c", code], cwd=spec["dir"], env={"PATH": "/usr/bin"}, timeout_seconds=20,
                     output_cap_bytes=4096, isolation=isolation)
print(json.dumps(dataclasses.asdict(result)))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists(), reason="needs root and Debian's python3")
def test_an_unprivileged_worker_s_steps_are_nobody_and_a_fork_bomb_stops_at_the_process_limit():
    workspace = tempfile.mkdtemp(prefix="executor-unprivileged-")
    os.chown(workspace, WORKER_UID, WORKER_UID)
    spec = {"bwrap": bwrap_binary(), "dir": workspace, "processes": 40}
    try:
        completed = subprocess.run(
            [SYSTEM_PYTHON, "-c", DRIVER, str(settings.BASE_DIR), json.dumps(spec)],
            user=WORKER_UID, group=WORKER_UID, extra_groups=[], capture_output=True, text=True, timeout=60,
            cwd=workspace,
        )  # fmt: skip
    finally:
        shutil.rmtree(workspace)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    uid, stopped = result["stdout"].splitlines()
    children, errno = map(int, stopped.split())
    assert (result["exit_code"], uid, errno) == (0, "65534", 11)  # 11: EAGAIN
    assert children < 40
