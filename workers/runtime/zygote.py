"""The warm-step server ("zygote"): started by the worker inside a step sandbox, it imports the runtime's heavy
modules once and then forks one child per Python step, which becomes the step (workers/warm.py is the worker's
side and says what each step still gets of its own).

Standard library only, and it never runs a step's code itself: a child is forked from the clean state reached
after the imports, becomes the slot's uid without capabilities, runs one script, and exits; whatever it changes
dies with it. The server is the sandbox's pid 1 and stays root (with the four capabilities bubblewrap leaves),
so no step can signal it or read its memory. Between two steps it kills every process a step left in the
sandbox (orphans come to pid 1), and empties the sandbox's own /tmp, /dev/shm and System V IPC objects, the only
things steps share here.

Protocol on the control socket (fd EXECUTOR_ZYGOTE_FD, SOCK_SEQPACKET, one JSON object per message):
    -> {"op": "ready"} once the imports are done
    <- {"op": "fork"} with three descriptors: the step's stdout and stderr pipes and its private channel
    -> {"op": "forked"}, then {"op": "exited", "status": <wait status>} once the step and its leftovers are gone
       ({"op": "failed"} instead when the process forked ahead for the step had died: nothing started)
The child talks to the worker alone, on the private channel (SOCK_STREAM): it says "r" (the kernel adds its
credentials, so the worker learns its host pid), reads the request (argv with the run's secrets, environment,
working directory), says "s" just before the script starts, and closes it. The server never sees a request.
"""

# Everything a step's process uses is imported here, once, not in each step.
import atexit
import builtins
import ctypes
import gc
import importlib
import importlib.machinery
import json
import os
import random
import resource
import signal
import socket
import struct
import sys
import threading
import time
import types

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
IPC_RMID = 0
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_libc = ctypes.CDLL(None, use_errno=True)
with open("/proc/sys/kernel/cap_last_cap") as _file:
    CAP_LAST_CAP = int(_file.read())
STEP_UID = -1  # the slot's uid, which every step becomes (the server itself stays root, so no step can signal it)


def main() -> None:
    global STEP_UID
    STEP_UID = int(os.environ.pop("EXECUTOR_ZYGOTE_UID"))
    control = socket.socket(fileno=int(os.environ.pop("EXECUTOR_ZYGOTE_FD")))
    sys.path.pop(0)  # this file's directory; a child puts its script's directory there instead
    _preload(os.environ.pop("EXECUTOR_ZYGOTE_PRELOAD", "").split(","))
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # and no step could read this process's memory or descriptors
    gc.collect()
    gc.freeze()  # children then share the imported objects' pages instead of copying them when the GC runs
    _send(control, op="ready")
    spare = None
    while True:
        spare = spare or _Spare(control)
        message, descriptors, _flags, _address = socket.recv_fds(control, 4096, 3)
        if not message:
            return  # the worker is gone
        if json.loads(message).get("op") == "fork" and len(descriptors) == 3:
            _serve_one_step(control, spare, descriptors)
            spare = None
        else:
            for fd in descriptors:
                os.close(fd)


def _preload(modules: list[str]) -> None:
    """The FX adapter's patches first (a later import of requests or kafka is then already patched), then the
    modules named by the worker. One that fails to import is left to the steps, which import it themselves."""
    import executor_fx

    executor_fx.install_patches()
    for name in filter(None, (module.strip() for module in modules)):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import error: the steps will see it themselves
            print(f"zygote: could not preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


class _Spare:
    """The next step's process, forked once the previous step is cleaned up and waiting for its descriptors: the
    fork is done before the step is asked for, not while it waits."""

    def __init__(self, control: socket.socket) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.inner, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            control.close()
            self.inner.close()
            _wait_for_a_step(theirs)  # never returns
        theirs.close()

    def start(self, descriptors: list[int]) -> bool:
        """Hand it the step's descriptors; False if it is gone (it then exits, or has)."""
        try:
            socket.send_fds(self.inner, [b"step"], descriptors)
            return True
        except OSError:
            return False
        finally:
            self.inner.close()


def _serve_one_step(control: socket.socket, spare: _Spare, descriptors: list[int]) -> None:
    started = spare.start(descriptors)
    for fd in descriptors:
        os.close(fd)
    _send(control, op="forked" if started else "failed")
    _pid, status = os.waitpid(spare.pid, 0)
    _clean_up()
    if started:
        _send(control, op="exited", status=status)


def _wait_for_a_step(inner: socket.socket) -> None:
    """The spare: seed its own random state now, then wait for its step. It stays root until then (so that
    between two steps nothing runs as the slot's uid: a leftover is always a step's)."""
    code = 70
    try:
        random.seed()  # not the state every child inherits from the server
        _message, descriptors, _flags, _address = socket.recv_fds(inner, 16, 3)
        inner.close()
        if len(descriptors) == 3:
            _drop_privileges()
            _become_step(*descriptors)  # never returns
        code = 0  # the server is gone
    except BaseException as exc:  # noqa: BLE001 - the child must end here whatever happened
        print(f"zygote: a step's process could not get ready: {type(exc).__name__}: {exc}", file=sys.stderr)
    _exit(code)


def _clean_up() -> None:
    """Nothing of one step reaches the next: its leftover processes, and what it left in the sandbox's shared
    places. Done as the step's uid (the effective uid only, for a moment), which may signal and remove exactly what
    its steps made; kill(-1) then reaches every process of this PID namespace but its init and this one."""
    os.seteuid(STEP_UID)
    try:
        while True:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        for directory in ("/tmp", "/dev/shm"):
            _empty(directory)
        _remove_ipc_objects()
    finally:
        os.seteuid(0)


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK


def _empty(directory: str) -> None:
    """Remove everything in `directory`, following no link, whatever modes a step left on its directories."""
    try:
        fd = os.open(directory, _DIRECTORY)
    except OSError:
        return
    _remove_entries(fd)


def _remove_entries(fd: int) -> None:
    try:
        for name in os.listdir(fd):
            _remove(fd, name)
    finally:
        os.close(fd)


def _remove(parent: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=parent)
        return
    except IsADirectoryError:
        pass
    except OSError:
        return
    try:
        os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=False)
    except (OSError, NotImplementedError):
        pass
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=parent)
    except OSError:
        return
    _remove_entries(fd)
    try:
        os.rmdir(name, dir_fd=parent)
    except OSError:
        pass


def _remove_ipc_objects() -> None:
    """System V shared memory, semaphores and message queues live in the sandbox's IPC namespace, not a process."""
    removers = {"shm": _libc.shmctl, "sem": None, "msg": _libc.msgctl}
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                ids = [int(line.split()[1]) for line in table.readlines()[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            continue
        for ipc_id in ids:
            if remove is None:
                _libc.semctl(ipc_id, 0, IPC_RMID)
            else:
                remove(ipc_id, IPC_RMID, None)


def _become_step(stdout: int, stderr: int, channel_fd: int) -> None:
    """In the forked child: take the step's pipes and request, then run its script as __main__ and exit."""
    code = 70
    try:
        # Its own process group, so the worker's timeout kills the step with everything it started; in the server's
        # session, which has no controlling terminal and the worker's CPU priority (workers/niceness.py).
        os.setpgid(0, 0)
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the step may read its own /proc/self, as a cold one can
        null = os.open("/dev/null", os.O_RDONLY)
        for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        channel = socket.socket(fileno=channel_fd)
        channel.sendall(b"r")  # the kernel adds this process's credentials: the worker learns its host pid
        request = _read_request(channel)
        _enter(request)
        channel.sendall(b"s")
        channel.close()
        code = _run_script(request["argv"])
    except BaseException as exc:  # noqa: BLE001 - the child must end here whatever happened
        print(f"executor: the warm step could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        _exit(code)


def _drop_privileges() -> None:
    """Become the slot's uid with no capability left, as setpriv does for a cold step: bounding set emptied
    (while CAP_SETPCAP is still there), no supplementary groups, real/effective/saved uid and gid the slot's
    (which clears the permitted and effective sets), inheritable and ambient sets emptied. no_new_privs and the
    seccomp filter are bubblewrap's, inherited. Checked afterwards: a step with any capability never starts."""
    for capability in range(CAP_LAST_CAP + 1):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"could not drop capability {capability} from the bounding set")
    os.setgroups([])
    os.setresgid(STEP_UID, STEP_UID, STEP_UID)
    os.setresuid(STEP_UID, STEP_UID, STEP_UID)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
        raise OSError(ctypes.get_errno(), "could not empty the inheritable capabilities")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    held = [name for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(status[name], 16)]
    if held or os.getuid() != STEP_UID or status["NoNewPrivs"].strip() != "1" or status["Seccomp"].strip() != "2":
        raise PermissionError(f"the step would not be isolated: {held} uid {os.getuid()}")


def _read_request(channel: socket.socket) -> dict:
    (size,) = struct.unpack("!I", _read_exactly(channel, 4))
    return json.loads(_read_exactly(channel, size))


def _read_exactly(channel: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = channel.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError("the worker closed the channel")
        data += chunk
    return bytes(data)


def _enter(request: dict) -> None:
    """What a cold start gives the script: its resource limits, environment (the package's variables never
    override the executor's, as executor_fx does for a cold step), time zone, working directory and sys.path[0]."""
    for name, (soft, hard) in request["limits"].items():  # only ever lower than the server's own
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in request.get("package_env", {}).items():
        os.environ.setdefault(name, value)
    time.tzset()
    os.chdir(request["cwd"])
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None  # found again from TMPDIR
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))


def _run_script(argv: list[str]) -> int:
    """As `python <script>` would: a new __main__ module, the exit code of SystemExit, the traceback through
    sys.excepthook without this function's frame; then non-daemon threads joined and atexit handlers run."""
    path = os.path.abspath(argv[0])
    main_module = types.ModuleType("__main__")
    main_module.__dict__.update(
        __file__=path, __builtins__=builtins, __cached__=None, __spec__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
    )  # fmt: skip
    sys.modules["__main__"] = main_module
    code = 0
    try:
        with open(path, "rb") as source:
            compiled = compile(source.read(), path, "exec", dont_inherit=True)
        exec(compiled, main_module.__dict__)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - reported as the interpreter would
        exc.__traceback__ = exc.__traceback__.tb_next or exc.__traceback__  # from the script's own frame on
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = _exit_code(exc)
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _exit(code: int) -> None:
    """os._exit: the interpreter's own shutdown would run this process's (the server's) finalizers again."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed or broken stream: nothing left to say
            pass
    os._exit(code)


def _send(control: socket.socket, **message) -> None:
    control.send(json.dumps(message).encode())


if __name__ == "__main__":
    main()
