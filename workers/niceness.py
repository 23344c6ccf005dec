"""A worker's niceness holds for its steps, and for the worker itself, however their sessions are scheduled.

`make run` starts the worker at niceness 19 so that a backlog of steps never slows the web, and a worker passes its
niceness on to every process it starts. But each step runs in a session of its own (workers/sandbox.py: its own
process group, no controlling terminal), and so may the worker (`make run` gives every service one). Where Linux
schedules sessions as groups ("autogroup", its default for processes outside a CPU cgroup: a worker started from
a shell, `make run`, a plain VM), the CPU is shared between sessions by each session's own nice value, 0 unless
set, whatever its processes' niceness. A niced worker and its steps then competed with the web server as equals:
measured with two busy loops on one core, the one niced to 19 in a session of its own took half of it. Giving
those sessions the worker's niceness (/proc/<pid>/autogroup) restores what the niceness was for. Inside a CPU
cgroup (Docker, systemd services) autogroup does not apply and the niceness works by itself; the file is then
written harmlessly.
"""

import logging
import os

logger = logging.getLogger(__name__)


def pass_on(pid: int) -> None:
    """Give the session led by our child `pid` (it called setsid before exec, so it leads one) this thread's
    niceness, which the child inherited."""
    _set_session(pid, os.getpriority(os.PRIO_PROCESS, 0))


def apply_to_own_session(**kwargs) -> None:
    """worker_init: a niced worker that leads its session (as `make run` starts it) gives the session its
    niceness. One that does not lead it leaves it alone: it belongs to whoever started the worker (a shell)."""
    if os.getsid(0) == os.getpid():
        _set_session(os.getpid(), os.getpriority(os.PRIO_PROCESS, 0))


def _set_session(pid: int, niceness: int) -> None:
    """Best effort: without autogroup support there is no such file, and a process without CAP_SYS_ADMIN may be
    refused (EAGAIN) when such changes come more often than the kernel's 10 a second."""
    if niceness <= 0:
        return  # nothing to give up; a negative value would need a privilege a step must not borrow
    try:
        with open(f"/proc/{pid}/autogroup", "w") as autogroup:
            autogroup.write(str(niceness))
    except OSError as exc:
        logger.debug("session %s keeps its scheduling group's priority: %s", pid, exc)
