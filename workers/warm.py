"""Warm Python steps: each worker slot keeps a sandboxed server that has already imported the runtime's heavy
modules (workers/runtime/zygote.py), and a step is a child forked from it instead of a new interpreter.

The server starts with the cold step's own isolation (workers/isolation.py, workers/sandbox.py): the same prlimit
limits, bubblewrap namespaces, read-only system, seccomp filter and slot uid, no capabilities, no secrets, and the
network only for a server of packages that have it. It binds the slot's area (slot_area()), where this slot's
execution workspaces are made, since a sandbox's mounts are fixed when it starts; the area is mode 711 and
belongs to the worker, so a step reaches its own execution's directories by their random names and cannot list
any other. Each step still gets its own: process (forked from the server's clean state), process group, stdout
and stderr pipes, argv with the secrets (sent by the worker straight to the child, never through the server),
environment, time zone, working directory and CPU-time count. What it leaves behind (processes, /tmp, /dev/shm,
System V IPC) is removed before the next step starts.

A server that is not ready, dead, stopped or answering wrongly is never waited for: the step starts cold, the
worker log says why, and the server is replaced. The script has provably not started until its child says "s";
up to then every failure falls back to a cold start. A server that dies or hangs while its step runs takes the
step down with it (its PID namespace goes): the step fails with that reason.

Not warm (cold, as before): EXECUTOR_WARM_STEPS=off, EXECUTOR_SANDBOX=off, a package with warm steps turned off,
and a package whose variables include one the preloaded libraries read at import (WARM_BREAKING_VARIABLES).
"""

import contextlib
import dataclasses
import functools
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from django.conf import settings

from executor_project import metrics

from . import niceness
from .isolation import RUNTIME_DIR, sandbox_enabled
from .sandbox import (
    HOST_ENV,
    Isolation,
    ProcessResult,
    _descriptors,
    _kill_group,
    _NotStarted,
    _Outcome,
    _Progress,
    _resources,
    _Threads,
    _wait,
    isolated_argv,
)

logger = logging.getLogger(__name__)
ZYGOTE = RUNTIME_DIR / "zygote.py"
# Read by a preloaded library when it is imported (ferris_cli's config module): a step that sets one goes cold.
WARM_BREAKING_VARIABLES = frozenset({"DEFAULT_CONFIG"})
# Per execution, not per server: the server starts without them and each child gets the step's.
_PER_STEP_VARIABLES = frozenset({"HOME", "TMPDIR", "TZ", "EXECUTOR_FX_DIR"})
READY_SECONDS = 60.0  # a server not ready by then (imports hanging) is replaced
FIRST_READY_SECONDS = 10.0  # how long the first step of a slot waits for its new server before starting cold
RESTART_PAUSE_SECONDS = 10.0  # after a server failed, steps start cold this long before another is started
SERVER_CPU_SECONDS = 365 * 24 * 3600  # the server's own limit; each step gets the step's (Request.limits)
MAX_SERVERS = 2  # per worker slot: with and without the network
HANDSHAKE_SECONDS = 5.0  # fork, then the child's hello: longer means the server or the machine is stuck
REPORT_SECONDS = 2.0  # after the child is gone, how long the server has to report its exit status


def enabled() -> bool:
    return settings.EXECUTOR_WARM_STEPS and sandbox_enabled()


def not_warm_because(warm_steps: bool, package_env: dict[str, str]) -> str | None:
    """Why a package's Python steps run cold on this worker, or None when they can run warm."""
    if not enabled():
        return "warm steps are off on this worker"
    if not warm_steps:
        return "the package turned warm steps off"
    if breaking := sorted(WARM_BREAKING_VARIABLES & set(package_env)):
        return f"the package sets {', '.join(breaking)}, which a preloaded library reads when imported"
    return None


def workspace_parent() -> str | None:
    """Where this process makes execution workspaces (workers/runner.py): its slot's area when steps may run
    warm, so that the slot's server can reach them; else the work directory (None: the system's)."""
    return str(slot_area()) if enabled() else settings.EXECUTOR_WORK_DIR


def share_with_server(root: Path) -> None:
    """The server's steps must pass through the workspace root (mode 700, the worker's) to their directories."""
    if enabled():
        os.chmod(root, 0o711)


@functools.cache
def _slot_area(pid: int, work_dir: str | None) -> Path:
    area = Path(tempfile.mkdtemp(prefix=f"executor-slot-{pid}-", dir=work_dir))
    area.chmod(0o711)
    return area


def slot_area() -> Path:
    """This process's area in the work directory (by pid: a forked pool process gets its own, not its parent's)."""
    return _slot_area(os.getpid(), settings.EXECUTOR_WORK_DIR)


@dataclasses.dataclass(frozen=True)
class Request:
    """One step for a server: its argv (argv[1] holds the secrets), environment and working directory."""

    argv: list[str]
    env: dict[str, str]
    package_env: dict[str, str]
    cwd: str
    limits: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # resource name -> [soft, hard]

    def server_environment(self) -> dict[str, str]:
        """The server's environment: the step's without what belongs to one execution."""
        env = {name: value for name, value in self.env.items() if name not in _PER_STEP_VARIABLES}
        return {**env, "HOME": "/tmp", "TMPDIR": "/tmp"}


class Server:
    """One running zygote (workers/runtime/zygote.py) and the worker's end of its control socket."""

    def __init__(self, key: tuple, env: dict[str, str]) -> None:
        self.key, self.isolation, self.ready, self.broken = key, key[0], False, False
        isolation = self.isolation
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._descriptors = contextlib.ExitStack()
        try:
            descriptors = self._descriptors.enter_context(_descriptors(isolation, {}))
            env = {**env, "EXECUTOR_ZYGOTE_FD": str(theirs.fileno()), "EXECUTOR_ZYGOTE_UID": str(isolation.uid),
                   "EXECUTOR_ZYGOTE_PRELOAD": ",".join(settings.EXECUTOR_WARM_PRELOAD)}  # fmt: skip
            argv = [settings.EXECUTOR_SCRIPT_PYTHON, str(ZYGOTE)]
            command = isolated_argv(isolation, argv, cwd="/", env=env, descriptors=descriptors, server=True)
            self.process = subprocess.Popen(
                command, env=HOST_ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True, pass_fds=(*descriptors.for_child(), theirs.fileno()),
            )  # fmt: skip
            niceness.pass_on(self.process.pid)  # its steps stay in its session (zygote.py)
            descriptors.close_child_ends()  # the status pipe's read end stays open: bwrap writes to it at exit
        finally:
            theirs.close()
        self.started = time.monotonic()
        threading.Thread(target=self._log_stderr, daemon=True).start()

    def _log_stderr(self) -> None:
        with self.process.stderr:
            for line in self.process.stderr:
                logger.warning("warm-step server %s: %s", self.process.pid, line.decode(errors="replace").rstrip())

    def usable(self) -> bool:
        """Ready for a step now (never waits: a server still importing, or gone, means a cold start)."""
        if self.broken or self.process.poll() is not None:
            return False
        if not self.ready and select.select([self.control], [], [], 0)[0]:
            self.ready = _receive(self.control).get("op") == "ready"
            self.broken = not self.ready
        if not self.ready and time.monotonic() - self.started > READY_SECONDS:
            self.fail(f"it was not ready after {READY_SECONDS} s")
        return self.ready and not self.broken

    def fail(self, reason: str) -> None:
        """Replace this server (the next step of its kind starts one); what it ran dies with its sandbox."""
        if self.broken:
            return
        logger.warning("warm-step server %s replaced: %s", self.process.pid, reason)
        metrics.inc(metrics.SANDBOX_START_FAILURES, kind="warm")
        self.broken = True
        _failed_at[self.key] = time.monotonic()
        self.stop()

    def stop(self) -> None:
        if self.control.fileno() < 0:
            return  # stopped already
        _kill_group(self.process.pid)
        self.process.wait()
        self.control.close()
        self._descriptors.close()


_servers: dict[tuple, Server] = {}
_failed_at: dict[tuple, float] = {}


def run(request: Request, supervision) -> ProcessResult | None:
    """The step run warm, or None when it must start cold (the reason is in the worker log)."""
    step_isolation = supervision.isolation
    if step_isolation.uid is None or not request.cwd.startswith(f"{slot_area()}/"):
        return None  # an unprivileged worker: its steps cannot leave the server's uid (module docstring)
    # The server's own CPU time adds up over its steps: its limit is its own, each step gets the step's.
    isolation = dataclasses.replace(step_isolation, writable=(str(slot_area()),), cpu_seconds=SERVER_CPU_SECONDS)
    server = _server_for((isolation, tuple(sorted(request.server_environment().items()))), supervision)
    if server is None:
        return None
    request = dataclasses.replace(request, limits=_limits(step_isolation))
    try:
        return _Step(server, request, supervision).run()
    except _NotStarted as exc:
        server.fail(str(exc))
        return None


def stop_servers() -> None:
    """Stop this process's servers and forget their failures: the next step starts afresh. (Servers also die
    with their process: bubblewrap's --die-with-parent.)"""
    while _servers:
        _servers.popitem()[1].stop()
    _failed_at.clear()


def _limits(isolation: Isolation) -> dict[str, list[int]]:
    """The step's resource limits, as prlimit sets them for a cold step (workers/sandbox.py isolated_argv)."""
    return {
        "RLIMIT_AS": [isolation.memory_bytes] * 2,
        "RLIMIT_CPU": [isolation.cpu_seconds, isolation.cpu_seconds + 5],
        "RLIMIT_FSIZE": [isolation.file_size_bytes] * 2,
        "RLIMIT_NOFILE": [isolation.open_files] * 2,
        "RLIMIT_NPROC": [isolation.processes] * 2,
        "RLIMIT_CORE": [0, 0],
    }


def _server_for(key: tuple, supervision) -> Server | None:
    """This slot's ready server for these settings. One is started when there is none, and waited for (as long
    as a cold start would take, about), unless one failed in the last RESTART_PAUSE_SECONDS."""
    server = _servers.get(key)
    if server is not None and server.usable():
        return server
    if server is not None and not server.broken and server.process.poll() is None:
        return None  # still importing: this step starts cold
    if server is not None:
        server.fail(f"it ended with exit status {server.process.returncode}")
        del _servers[key]
    if key in _failed_at and time.monotonic() - _failed_at[key] < RESTART_PAUSE_SECONDS:
        return None
    while len(_servers) >= MAX_SERVERS:  # one per network setting is the rule; more only when settings changed
        _servers.pop(next(iter(_servers))).stop()
    try:
        server = _servers[key] = Server(key, dict(key[1]))
    except OSError as exc:
        logger.warning("could not start a warm-step server: %s", exc)
        metrics.inc(metrics.SANDBOX_START_FAILURES, kind="warm")
        _failed_at[key] = time.monotonic()
        return None
    return server if _ready_soon(server, supervision) else None


def _ready_soon(server: Server, supervision) -> bool:
    """Wait for a new server up to FIRST_READY_SECONDS, ticking like a step (heartbeat, cancel)."""
    deadline = time.monotonic() + FIRST_READY_SECONDS
    while time.monotonic() < deadline and not supervision.cancel.is_set():
        if server.usable():
            return True
        if server.broken or server.process.poll() is not None:
            return False
        select.select([server.control], [], [], 0.1)
        if supervision.on_tick is not None:
            supervision.on_tick()
    return False


class _Exit(threading.Thread):
    """Watches one warm step: the server's report of its exit status, the child's own exit (a pidfd, since the
    child is the server's, not ours) and whether the script started. exited is set when it is over; status is
    the wait status, or None with `trouble` saying why the server could not tell it."""

    def __init__(self, control: socket.socket, channel: socket.socket) -> None:
        super().__init__(daemon=True)
        self.control, self.channel = control, channel
        self.exited, self.given = threading.Event(), threading.Event()
        self.pidfd: int | None = None
        self.status: int | None = None
        self.started_script = False
        self.trouble = ""

    def watch(self, pidfd: int | None) -> None:
        self.pidfd = pidfd
        self.given.set()

    def run(self) -> None:
        self.given.wait()
        if self.pidfd is not None:
            self._follow()
        self.exited.set()

    def _follow(self) -> None:
        child_gone_at = None
        while True:
            waiting = [self.control, self.pidfd] + ([self.channel] if self.channel.fileno() >= 0 else [])
            timeout = None if child_gone_at is None else max(0.0, child_gone_at + REPORT_SECONDS - time.monotonic())
            readable = select.select(waiting, [], [], timeout)[0]
            if self.control in readable:
                self._read_channel()  # an "s" sent before the child's end is there now, even if not read yet
                message = _receive(self.control)
                if message.get("op") == "exited":
                    self.status = message.get("status")
                    return
                self.trouble = "its server died" if not message else f"its server said {message!r}"
                return
            if self.channel in readable:
                self._read_channel()
            if self.pidfd in readable and child_gone_at is None:
                child_gone_at = time.monotonic()
            if child_gone_at is not None and time.monotonic() >= child_gone_at + REPORT_SECONDS:
                self.trouble = "its server stopped responding"
                return

    def _read_channel(self) -> None:
        """What the child said since: "s" when its script starts; the end of the channel after that (or when it
        ended before its script could start)."""
        if self.channel.fileno() < 0:
            return
        try:
            said = self.channel.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            said = b""
        self.started_script = self.started_script or said == b"s"
        if not said:
            self.channel.close()


class _Step:
    """One warm step from the fork request to its result; _NotStarted until the script provably could start."""

    def __init__(self, server: Server, request: Request, supervision) -> None:
        self.server, self.request, self.supervision = server, request, supervision

    def run(self) -> ProcessResult:
        started, watch = time.monotonic(), self.supervision
        channel, childs_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        exit_watch = _Exit(self.server.control, channel)
        with _resources():
            threads = _Threads.start(watch.output_cap_bytes, exit_watch)
        pidfd = None
        try:
            pidfd = self._start(threads, channel, childs_end)
            exit_watch.watch(pidfd)
            progress = _Progress(threads.readers, watch.on_progress)
            deadline = started + watch.timeout_seconds
            ending = _wait(exit_watch.exited, deadline, watch.cancel, progress, watch.on_tick)
            if ending:
                self._stop(pidfd, exit_watch)
        except BaseException:
            exit_watch.watch(pidfd)
            self._stop(pidfd, exit_watch)
            channel.close()
            raise
        finally:
            threads.close_write_ends()
            if pidfd is not None:
                os.close(pidfd)
        return self._result(started, ending, threads, exit_watch)

    def _start(self, threads: _Threads, channel: socket.socket, childs_end: socket.socket) -> int:
        """Fork the child and hand it the request; the pidfd of the child (in the worker's PID namespace)."""
        control = self.server.control
        try:
            socket.send_fds(control, [json.dumps({"op": "fork"}).encode()], [*threads.write_ends, childs_end.fileno()])
        finally:
            childs_end.close()
            threads.close_write_ends()
        if _receive(control, HANDSHAKE_SECONDS).get("op") != "forked":
            raise _NotStarted("the server did not fork")
        pid = _childs_pid(channel, self.server.isolation.uid)
        pidfd = os.pidfd_open(pid)
        body = json.dumps(dataclasses.asdict(self.request)).encode()
        channel.sendall(struct.pack("!I", len(body)) + body)
        return pidfd

    def _stop(self, pidfd: int | None, exit_watch: _Exit) -> None:
        """A timeout or cancel: kill the child (the server then kills what it started); a server that does not
        report within REPORT_SECONDS goes, with everything in its sandbox."""
        if pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if not exit_watch.exited.wait(REPORT_SECONDS + 1.0) or exit_watch.status is None:
            self.server.fail(exit_watch.trouble or "it did not report a stopped step")

    def _result(self, started: float, ending: str | None, threads: _Threads, exit_watch: _Exit) -> ProcessResult:
        exit_watch.channel.close()
        for reader in threads.readers:
            reader.join(timeout=2.0)
        if exit_watch.status is None and not ending:
            self.server.fail(exit_watch.trouble)
            if not exit_watch.started_script:
                raise _NotStarted(f"the step's child ended before its script started ({exit_watch.trouble})")
            outcome = _Outcome(ending=None, exit_code=None, readers=threads.readers)
            result = outcome.result(started)
            note = f"\nexecutor: the warm step's exit status is unknown: {exit_watch.trouble}\n"
            return dataclasses.replace(result, exit_code=-signal.SIGKILL, stderr=result.stderr + note)
        if not ending and not exit_watch.started_script:
            raise _NotStarted("the step's child ended before its script started")
        exit_code = None if exit_watch.status is None else os.waitstatus_to_exitcode(exit_watch.status)
        return _Outcome(ending=ending, exit_code=exit_code, readers=threads.readers).result(started)


def _childs_pid(channel: socket.socket, uid: int) -> int:
    """The child's pid in this (the worker's) PID namespace, from the credentials the kernel attached to its hello,
    which also prove it has become the slot's uid."""
    channel.settimeout(HANDSHAKE_SECONDS)
    try:
        data, ancillary, _flags, _address = channel.recvmsg(1, socket.CMSG_SPACE(12))
    except (TimeoutError, OSError) as exc:
        raise _NotStarted(f"the step's child did not say hello: {exc}") from None
    finally:
        channel.settimeout(None)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and data == b"r":
            pid, sender_uid, _gid = struct.unpack("iII", payload[:12])
            if sender_uid != uid:
                raise _NotStarted(f"the step's child runs as uid {sender_uid}, not {uid}")
            return pid
    raise _NotStarted("the step's child said no proper hello")


def _receive(control: socket.socket, timeout: float | None = None) -> dict:
    """One message from the server; {} when it is gone (or silent past `timeout`)."""
    if timeout is not None and not select.select([control], [], [], timeout)[0]:
        return {}
    try:
        message = control.recv(65536)
        return json.loads(message) if message else {}
    except (OSError, ValueError):
        return {}
