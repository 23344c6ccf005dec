"""Run one command as an isolated child process and capture what it prints.

No Django here: this module knows processes, not executions. Every step gets: an argv list (no shell), an
environment built by the caller from nothing, stdin closed, its own process group, a wall-clock timeout that
kills that whole group, output capped per stream; and, given an Isolation, prlimit resource limits, a
bubblewrap sandbox and a seccomp filter (workers/isolation.py says what is inside, workers/seccomp.py what the
filter refuses).

What runs outside the sandbox (prlimit, bwrap) runs as the worker, often root, so it never sees anything the
step controls: it starts with HOST_ENV, and the step's environment is set by bwrap for the sandboxed program
alone. Private files (argv[1] with the secrets, an SQL step's connection) reach the step as memory-only files
bound read-only inside the sandbox (bwrap --ro-bind-data): they never touch the disk, and the step cannot
replace them with anything the worker would then follow.
"""

import contextlib
import errno
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from executor_lib import safe_files

from . import niceness

logger = logging.getLogger(__name__)
_CHUNK = 64 * 1024
# After the main process exits, give descendants still holding the pipes this long before killing them.
_DRAIN_SECONDS = 2.0
# How often a waiting step looks at its cancel flag.
_CANCEL_CHECK_SECONDS = 0.1
# How often the output so far is handed to on_progress (live output).
PROGRESS_SECONDS = 1.0
# A step whose process could not start (the script never ran) is started again after these pauses: under heavy
# load fork, clone or a thread fail for a moment (EAGAIN), which is not the script's doing.
START_RETRY_SECONDS = (0.5, 1.0, 2.0)
# The whole environment of the host-side helpers: nothing of the step's (LD_PRELOAD, GCONV_PATH, ... would run
# code in them as the worker's user, outside the sandbox).
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class ProcessResult:
    exit_code: int | None  # None when the process was killed for running too long
    stdout: str  # the first output_cap_bytes, decoded
    stderr: str
    timed_out: bool
    duration_ms: int
    cancelled: bool = False  # stopped because someone cancelled the execution
    stdout_dropped: int = 0  # bytes printed beyond the cap and not kept
    stderr_dropped: int = 0
    sandbox_error: str = ""  # the sandbox could not start (the script never ran): bwrap's or prlimit's reason


@dataclass(frozen=True)
class Isolation:
    """bubblewrap and rlimit settings for one step (built by workers/isolation.py)."""

    bwrap: str
    read_only: tuple[str, ...]  # bound read-only at the same path (missing ones are skipped)
    writable: tuple[str, ...]  # bound read-write at the same path
    network: bool
    tmp_size_bytes: int
    memory_bytes: int
    cpu_seconds: int
    file_size_bytes: int
    open_files: int
    processes: int  # RLIMIT_NPROC: counted per host uid, so it only holds for an unprivileged uid
    uid: int | None = None  # host uid/gid the step runs as when the worker is root; None: a user namespace
    seccomp: bytes = field(default=b"", repr=False)  # a BPF program (workers/seccomp.py); empty: none


@dataclass
class _Descriptors:
    """What bwrap reads from file descriptors: the seccomp program, the private files, and the pipe it reports
    the sandboxed program's exit code on. This process closes its copies of the child's ends once bwrap has them."""

    seccomp: int | None = None
    files: dict[str, int] = field(default_factory=dict)  # path inside the sandbox -> memfd
    status_read: int | None = None
    status_write: int | None = None

    def for_child(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.seccomp, *self.files.values(), self.status_write) if fd is not None)

    def close_child_ends(self) -> None:
        for fd in self.for_child():
            os.close(fd)
        self.seccomp, self.files, self.status_write = None, {}, None

    def status(self) -> bytes:
        """What bwrap wrote on its status pipe (--json-status-fd): "child-pid" once it has made the sandbox's first
        process (before setting the sandbox up, so it proves nothing about the program), "exit-code" only for a
        program it set up and started. Read after bwrap exited, so everything it wrote is in the pipe."""
        os.set_blocking(self.status_read, False)
        try:
            return os.read(self.status_read, 65536)
        except BlockingIOError:
            return b""


@contextlib.contextmanager
def _descriptors(isolation: Isolation, private_files: dict[str, bytes]) -> Iterator[_Descriptors]:
    descriptors = _Descriptors()
    try:
        with _resources():
            if isolation.seccomp:
                descriptors.seccomp = _memory_file("seccomp", isolation.seccomp)
            for path, content in private_files.items():
                descriptors.files[path] = _memory_file(PurePosixPath(path).name, content)
            descriptors.status_read, descriptors.status_write = os.pipe()
        yield descriptors
    finally:
        descriptors.close_child_ends()
        if descriptors.status_read is not None:
            os.close(descriptors.status_read)


def _memory_file(name: str, content: bytes) -> int:
    fd = os.memfd_create(f"executor-{name}")
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def isolated_argv(
    isolation: Isolation,
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    descriptors: _Descriptors,
    server: bool = False,
) -> list[str]:
    """argv wrapped in prlimit (resource limits) and bwrap (namespaces, a minimal read-only filesystem, the
    seccomp filter, the step's environment for the sandboxed program only). server=True for the warm-step server
    (workers/runtime/zygote.py): it stays root with the few capabilities it needs to make each step's process the
    slot's uid itself, and it is the sandbox's pid 1, so its steps have the parent a cold step has.

    Nothing secret goes on this command line, which `ps` shows: `env` must hold none (secrets come as private
    files)."""
    limits = [
        "prlimit", f"--as={isolation.memory_bytes}",
        # Soft limit below the hard one: the step gets SIGXCPU (reported as a CPU limit), not a bare SIGKILL.
        f"--cpu={isolation.cpu_seconds}:{isolation.cpu_seconds + 5}",
        f"--fsize={isolation.file_size_bytes}", f"--nofile={isolation.open_files}",
        f"--nproc={isolation.processes}", "--core=0", "--",
    ]  # fmt: skip
    sandbox = [
        isolation.bwrap, "--die-with-parent", *_identity_flags(isolation), "--hostname", "executor-step",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(isolation.tmp_size_bytes), "--perms", "1777", "--tmpfs", "/tmp",
        "--json-status-fd", str(descriptors.status_write), "--clearenv",
    ]  # fmt: skip
    for name, value in env.items():
        sandbox += ["--setenv", name, value]
    if isolation.network:
        sandbox.append("--share-net")
    if descriptors.seccomp is not None:
        sandbox += ["--seccomp", str(descriptors.seccomp)]
    for directory in _parents_of(isolation.read_only + isolation.writable + tuple(descriptors.files)):
        sandbox += ["--perms", "0755", "--dir", directory]
    for path in isolation.read_only:  # after the /tmp tmpfs, which would hide anything bound below it
        sandbox += ["--ro-bind-try", path, path]
    for path in isolation.writable:
        sandbox += ["--bind", path, path]
    for path, fd in descriptors.files.items():  # readable by the step's uid, in this sandbox only
        sandbox += ["--perms", "0444", "--ro-bind-data", str(fd), path]
    if server:
        return [*limits, *sandbox, "--as-pid-1", "--chdir", cwd, "--", *argv]
    return [*limits, *sandbox, "--chdir", cwd, "--", *_drop_to_uid(isolation), *argv]


def _parents_of(paths: tuple[str, ...]) -> list[str]:
    """The directories above the bound paths, outermost first. bwrap would create them as 0700 (the step's
    uid could not pass through to, say, an interpreter under /root/.pyenv); they hold nothing but the path."""
    parents = {str(parent) for path in paths for parent in PurePosixPath(path).parents}
    return sorted(parents - {"/", "/tmp"}, key=lambda parent: (parent.count("/"), parent))


def _identity_flags(isolation: Isolation) -> list[str]:
    """Who the step is. A root worker sets the sandbox up without a user namespace (whose uid would map back to
    host root, exempt from RLIMIT_NPROC) and keeps only what setpriv needs to become the slot's own unprivileged
    uid (SETPCAP to empty the bounding set); searching directories lets bwrap enter the workspace, which
    belongs to that uid. An unprivileged worker gets a user namespace and runs the step as nobody inside it."""
    if isolation.uid is None:
        return ["--unshare-all", "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534"]
    return [
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try",
        "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
        "--cap-add", "CAP_DAC_READ_SEARCH", "--cap-add", "CAP_SETPCAP",
    ]  # fmt: skip


def _drop_to_uid(isolation: Isolation) -> list[str]:
    """Inside the sandbox, as the last thing before the script: become the slot's uid with no capabilities left
    (bounding set emptied, no_new_privs, so nothing can gain them back)."""
    if isolation.uid is None:
        return []
    uid = str(isolation.uid)
    return [
        "/usr/bin/setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--inh-caps=-all",
        "--bounding-set=-all", "--no-new-privs", "--",
    ]  # fmt: skip


def truncation_marker(dropped: int, cap: int) -> str:
    """The visible note that ends a capped stream (empty when nothing was dropped)."""
    return f"\n[output truncated: {dropped} more bytes not kept, limit {cap} bytes]\n" if dropped else ""


class _CappedReader(threading.Thread):
    """Drains a pipe to the end (so the child never blocks on a full pipe), keeping only the first `cap` bytes."""

    def __init__(self, pipe, cap: int) -> None:
        super().__init__(daemon=True)
        self.pipe, self.cap = pipe, cap
        self.kept = bytearray()
        self.dropped = 0
        self._lock = threading.Lock()  # text() may be called from the waiting thread while this one appends

    def run(self) -> None:
        with self.pipe:
            while chunk := self.pipe.read1(_CHUNK):
                with self._lock:
                    room = self.cap - len(self.kept)
                    self.kept += chunk[:room]
                    self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        with self._lock:
            return self.kept.decode("utf-8", errors="replace")


def run_process(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    timeout_seconds: float,
    output_cap_bytes: int,
    cancel: threading.Event | None = None,
    on_progress: Callable[[str, str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    isolation: Isolation | None = None,
    private_files: dict[str, bytes] | None = None,
) -> ProcessResult:
    """Run argv to completion, until `timeout_seconds`, or until `cancel` is set; then make sure nothing it
    started is left behind, whatever fails on the way. While it runs, `on_progress(stdout_so_far,
    stderr_so_far)` is called from this thread about every PROGRESS_SECONDS when the output changed (live
    output), and `on_tick()` about every 0.1 s (heartbeats, cancel polling); an exception from either stops the
    process and propagates.

    A process that provably never started the script (see _Attempt) is started again after each pause of
    START_RETRY_SECONDS, ticking meanwhile; then `sandbox_error` says why it could not start. One that may have
    started it is never started again.

    `private_files` (absolute path -> content) are there for the step to read: inside the sandbox as memory-only
    files; without one (EXECUTOR_SANDBOX=off) written at those paths, which must be in a directory only the
    worker can write, and removed afterwards (the runtime removes them as soon as it has read them)."""
    started = time.monotonic()
    cancel = cancel or threading.Event()
    attempt = _Attempt(argv, cwd, env, timeout_seconds, output_cap_bytes, cancel, on_progress, on_tick, isolation)
    with _files_on_disk(private_files or {}) if isolation is None else contextlib.nullcontext():
        for pause in (*START_RETRY_SECONDS, None):
            outcome = attempt.run(private_files or {})
            if outcome.sandbox_error is None:
                return outcome.result(started)
            if pause is None or not _paused(pause, cancel, on_tick):
                break
            logger.warning("the step's sandbox could not start (%s): trying again in %s s", outcome.sandbox_error,
                           pause)  # fmt: skip
    return outcome.result(started, cancelled=cancel.is_set())


def _paused(seconds: float, cancel: threading.Event, on_tick) -> bool:
    """Wait between two attempts as the step's own wait does (ticking); False if cancelled meanwhile."""
    deadline = time.monotonic() + seconds
    while not cancel.wait(timeout=min(_CANCEL_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))):
        if on_tick is not None:
            on_tick()
        if time.monotonic() >= deadline:
            return not cancel.is_set()
    return False


class _NotStarted(Exception):
    """The step's process was not started (so the script cannot have run); the message says why, for the person."""


@dataclass
class _Outcome:
    ending: str | None = None  # "timeout" or "cancel" when it was stopped
    exit_code: int | None = None
    readers: list["_CappedReader"] = field(default_factory=list)
    sandbox_error: str | None = None  # the script never ran, for this reason

    def result(self, started: float, cancelled: bool = False) -> ProcessResult:
        stdout, stderr = self.readers or (None, None)
        return ProcessResult(
            exit_code=None if self.ending or self.sandbox_error is not None else self.exit_code,
            stdout=stdout.text() if stdout else "",
            stderr=stderr.text() if stderr else "",
            timed_out=self.ending == "timeout",
            cancelled=self.ending == "cancel" or cancelled,
            duration_ms=round((time.monotonic() - started) * 1000),
            stdout_dropped=stdout.dropped if stdout else 0,
            stderr_dropped=stderr.dropped if stderr else 0,
            sandbox_error=self.sandbox_error or "",
        )


@dataclass(frozen=True)
class _Attempt:
    """One start of the step's process. The script provably never ran when: the worker could not get what the
    process needs (threads, pipes, memory files: EAGAIN, ENOMEM, too many open files), Popen failed for lack of
    resources (EAGAIN: fork; ENOMEM), or bwrap (or prlimit before it) ended by itself with an error and without
    reporting the sandboxed program's exit code (bwrap's "Can't fork", a failed mount, ...). A bwrap killed by a
    signal, a step stopped for its timeout or a cancel, and every exit code are the script's."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    timeout_seconds: float
    output_cap_bytes: int
    cancel: threading.Event
    on_progress: Callable[[str, str], None] | None
    on_tick: Callable[[], None] | None
    isolation: Isolation | None

    def run(self, private_files: dict[str, bytes]) -> _Outcome:
        try:
            if self.isolation is None:
                return self._supervised(self.argv, self.env, None)
            with _descriptors(self.isolation, private_files) as descriptors:
                command = isolated_argv(self.isolation, self.argv, cwd=self.cwd, env=self.env, descriptors=descriptors)
                outcome = self._supervised(command, HOST_ENV, descriptors)
                if not outcome.ending:
                    outcome.sandbox_error = _not_started(outcome, descriptors.status())
                return outcome
        except _NotStarted as exc:
            return _Outcome(sandbox_error=str(exc))

    def _supervised(self, command: list[str], env: dict[str, str], descriptors: "_Descriptors | None") -> _Outcome:
        ending, proc, readers = _run(command, self.cwd, env, descriptors, self.timeout_seconds, self.output_cap_bytes,
                                     self.cancel, self.on_progress, self.on_tick)  # fmt: skip
        return _Outcome(ending=ending, exit_code=proc.returncode, readers=readers)


# Errors that say the worker (or the machine) is short of something for a moment, not that the step is wrong.
_SHORT_OF_RESOURCES = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


@contextlib.contextmanager
def _resources() -> Iterator[None]:
    """Lack of resources while preparing a start (memory files, pipes, fork) means it did not start."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _SHORT_OF_RESOURCES:
            raise
        raise _NotStarted(f"could not start the step's process: {os.strerror(exc.errno)}") from None


def _run(command, cwd, env, descriptors, timeout_seconds, output_cap_bytes, cancel, on_progress, on_tick):
    """Start the process and supervise it. The threads that read its output and wait for its exit are started
    before it, so a worker that cannot start threads fails before the script could run (_NotStarted). Everything
    after Popen is inside the try: if anything fails, the whole process group is killed and reaped before the
    error propagates."""
    with _resources():
        threads = _Threads.start(output_cap_bytes)
        try:
            with _forked_if(descriptors is None):
                proc = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=threads.write_ends[0],
                    stderr=threads.write_ends[1],
                    start_new_session=True,  # its own process group, so one signal reaches every descendant
                    close_fds=True,
                    pass_fds=descriptors.for_child() if descriptors else (),
                )
        except BaseException:
            threads.abandon()
            raise
    try:
        niceness.pass_on(proc.pid)
        threads.close_write_ends()  # the child has its copies: the pipes end when the last of its processes exits
        if descriptors:
            descriptors.close_child_ends()  # bwrap has its copies; the status pipe then ends when bwrap does
        threads.exit.watch(proc)
        progress = _Progress(threads.readers, on_progress)
        ending = _wait(threads.exit.exited, time.monotonic() + timeout_seconds, cancel, progress, on_tick)
    except BaseException:
        threads.close_write_ends()
        threads.exit.watch(proc)
        _kill_group(proc.pid)
        proc.wait()
        raise
    _kill_group(proc.pid)
    proc.wait()
    for reader in threads.readers:
        reader.join(timeout=_DRAIN_SECONDS)
    return ending, proc, threads.readers


@contextlib.contextmanager
def _forked_if(needed: bool) -> Iterator[None]:
    """Between fork and setsid the new process is still in the worker's process group, so a signal sent to that
    group (a supervisor's SIGTERM, a Ctrl-C) reaches it too. After vfork, CPython's child has every handler reset
    to the default first, and dies of it; after fork it keeps the worker's handlers until exec, and lives. With
    the sandbox such a death is recognised (_not_started: bwrap never reported anything) and the start is tried
    again, so the cheaper vfork stays; without one it could not be told from the script's own death, so fork
    (Python's documented switch, subprocess._USE_VFORK; only this thread spawns in a pool process)."""
    if not needed:
        yield
        return
    previous, subprocess._USE_VFORK = subprocess._USE_VFORK, False
    try:
        yield
    finally:
        subprocess._USE_VFORK = previous


class _ExitWaiter(threading.Thread):
    """Waits for the process in a blocking wait: Popen.wait(timeout) polls with sleeps of up to 50 ms, which would
    add that much latency to every step. Started before the process exists; watch(None) ends it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.proc: subprocess.Popen | None = None
        self.given = threading.Event()
        self.exited = threading.Event()

    def run(self) -> None:
        self.given.wait()
        if self.proc is not None:
            self.proc.wait()
        self.exited.set()

    def watch(self, proc: subprocess.Popen | None) -> None:
        if not self.given.is_set():
            self.proc = proc
            self.given.set()


@dataclass
class _Threads:
    """The step's output pipes with their readers, and its exit waiter, all running before the process starts."""

    readers: list["_CappedReader"]
    exit: threading.Thread
    write_ends: list[int]

    @classmethod
    def start(cls, output_cap_bytes: int, exit_waiter: threading.Thread | None = None) -> "_Threads":
        """exit_waiter: one with _ExitWaiter's exited and watch() for a process that is not this one's child
        (workers/warm.py); by default an _ExitWaiter."""
        threads = cls([], exit_waiter or _ExitWaiter(), [])
        try:
            for _ in ("stdout", "stderr"):
                read_end, write_end = os.pipe()
                threads.readers.append(_CappedReader(os.fdopen(read_end, "rb"), output_cap_bytes))
                threads.write_ends.append(write_end)
        except OSError:
            threads.abandon()
            raise
        try:
            for thread in (*threads.readers, threads.exit):
                thread.start()
        except RuntimeError:  # "can't start new thread"
            threads.abandon()
            raise _NotStarted("the worker could not start a thread to supervise the step") from None
        return threads

    def close_write_ends(self) -> None:
        while self.write_ends:
            os.close(self.write_ends.pop())

    def abandon(self) -> None:
        """No process came: the readers see the end of their pipes, the waiter nothing to wait for."""
        self.close_write_ends()
        self.exit.watch(None)
        for reader in self.readers:
            if not reader.is_alive():
                reader.pipe.close()


def _not_started(outcome: _Outcome, status: bytes) -> str | None:
    """Why the sandbox provably never started the program, or None. Either bwrap (or prlimit before it) ended by
    itself with an error and reported no exit code of the program: its last line on stderr says why. Or it was
    killed by a signal before it reported anything, so before it had made the sandbox's first process: typically
    a signal sent to the worker's process group (a supervisor's SIGTERM, a Ctrl-C) that caught the new process
    between fork and setsid, before it left that group (_forked_if)."""
    if b'"exit-code"' in status:
        return None
    if outcome.exit_code > 0:
        lines = [line.strip() for line in outcome.readers[1].text().splitlines() if line.strip()]
        return lines[-1][:500] if lines else "no reason given"
    if outcome.exit_code < 0 and not status:
        return f"it was stopped by {signal.Signals(-outcome.exit_code).name} before it started"
    return None


@contextlib.contextmanager
def _files_on_disk(files: dict[str, bytes]) -> Iterator[None]:
    """Without a sandbox: each private file created afresh in its (worker-only) directory, removed after."""
    for path, content in files.items():
        with safe_files.open_directory(str(PurePosixPath(path).parent)) as directory:
            safe_files.write_new(directory, PurePosixPath(path).name, content)
    try:
        yield
    finally:
        for path in files:
            with safe_files.open_directory(str(PurePosixPath(path).parent)) as directory:
                safe_files.remove(directory, PurePosixPath(path).name)


class _Progress:
    """Reports the output so far to a callback, at most every PROGRESS_SECONDS and only when it changed."""

    def __init__(self, readers: list[_CappedReader], callback: Callable[[str, str], None] | None) -> None:
        self.readers, self.callback = readers, callback
        self.next_report = time.monotonic() + PROGRESS_SECONDS
        self.last: tuple[str, str] = ("", "")

    def tick(self) -> None:
        if self.callback is None or time.monotonic() < self.next_report:
            return
        self.next_report = time.monotonic() + PROGRESS_SECONDS
        current = (self.readers[0].text(), self.readers[1].text())
        if current != self.last:
            self.last = current
            self.callback(*current)


def _wait(
    exited: threading.Event, deadline: float, cancel: threading.Event, progress: _Progress, on_tick
) -> str | None:
    """Wait for the process; "timeout" or "cancel" when it had to be stopped instead, None when it exited."""
    while not exited.wait(timeout=min(_CANCEL_CHECK_SECONDS, max(0.0, deadline - time.monotonic()))):
        if on_tick is not None:
            on_tick()
        if cancel.is_set():
            return "cancel"
        if time.monotonic() >= deadline:
            return "timeout"
        progress.tick()
    return None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is already gone
