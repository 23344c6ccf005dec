"""Workspaces of runs no worker owns any more are removed: at worker start and by the reaper.

A worker that is killed leaves its execution's directory behind (workers/workspace.py): the package's files, its
state and outbox, and with EXECUTOR_SANDBOX=off the argument file with the decrypted secrets. The directory's
name says whose it is:

    executor-<execution id>-<database>-<lease digest>-<random>

The lease part is a digest of the lease token, not the token: the name is in the step's HOME and TMPDIR, and a
step has no business knowing the token that fences its worker's writes.

A directory is live while an in-progress execution with that id holds a lease of that digest in this database; the
claim is committed before the directory is made, and the directory is renamed away before the run leaves that state,
so a live run's directory is never taken for a dead one, whichever worker sharing the directory runs it. The
database part (a hash of where this installation's database is) keeps installations that share a temporary
directory (test suites do) from judging each other's directories by a database that does not know them.

A finished run's workspace is renamed to `executor-done-<pid>-<random>` and removed by a thread of that process
(workers/workspace_trash.py); the sweep removes such a directory only once that process is gone.

Directories named before names carried a lease (`executor-<8 hex>-<random>`) say too little: they are removed
once they are older than EXECUTOR_MAX_EXECUTION_SECONDS and no in-progress execution's id starts with them.

Removal never follows a link: the directory is taken only if it is a real directory of this worker's own user,
and everything below it is opened relative to its parent's descriptor with O_NOFOLLOW | O_DIRECTORY (a link or a
FIFO a step left in a directory's place fails that open, it is neither followed nor blocked on) or unlinked
without being opened. shutil.rmtree is descriptor-based on Linux too, but opens directories without O_DIRECTORY
or O_NONBLOCK, so a FIFO swapped in by a step still running under a fenced worker would block it forever.
"""

import hashlib
import logging
import os
import re
import secrets
import stat
import tempfile
import time
import uuid
from collections.abc import Iterable

from django.conf import settings
from django.db import connection

from executions.models import Execution, ExecutionStatus

logger = logging.getLogger(__name__)
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_RANDOM = r"[a-z0-9_]{8}"  # what tempfile appends
_DIGEST = r"[0-9a-f]{16}"  # lease_digest()
_LEASED = re.compile(rf"executor-(?P<execution>{_UUID})-(?P<database>[0-9a-f]{{8}})-(?P<lease>{_DIGEST})-{_RANDOM}")
_LEGACY = re.compile(rf"executor-(?P<short_id>[0-9a-f]{{8}})-{_RANDOM}")
_DISCARDED = re.compile(r"executor-done-(?P<pid>[0-9]+)-[0-9a-f]{16}")  # workers/workspace_trash.py
_SLOT_AREA = re.compile(rf"executor-slot-(?P<pid>[0-9]+)-{_RANDOM}")  # workers/warm.py slot_area()
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def directory_prefix(lease) -> str:
    """tempfile's prefix for the workspace of the execution `lease` (workers/lease.py) holds (workers/runner.py)."""
    return f"executor-{uuid.UUID(str(lease.execution_id))}-{database_tag()}-{lease_digest(lease.token)}-"


def lease_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def database_tag() -> str:
    where = connection.settings_dict
    return hashlib.sha256(f"{where['HOST']}:{where['PORT']}/{where['NAME']}".encode()).hexdigest()[:8]


def work_dir() -> str:
    return settings.EXECUTOR_WORK_DIR or tempfile.gettempdir()


def discarded_name() -> str:
    """A name in the work directory for a finished run's workspace, until this process has removed it."""
    return f"executor-done-{os.getpid()}-{secrets.token_hex(8)}"


def sweep(directory: str | None = None) -> int:
    """Remove the workspaces in `directory` (default: the work directory) and in its slot areas (workers/warm.py)
    whose runs are over, and the slot areas left empty by processes that are gone; how many workspaces."""
    directory = directory or work_dir()
    removed = _sweep_workspaces(directory)
    for name in _own_named(directory, _SLOT_AREA):
        removed += _sweep_workspaces(os.path.join(directory, name))
        _remove_if_abandoned(directory, name)
    return removed + _sweep_discarded(directory)


def _own_named(directory: str, pattern: re.Pattern) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [name for name in names if pattern.fullmatch(name) and _is_own_directory(directory, name)]


def _sweep_discarded(directory: str) -> int:
    """Finished runs' workspaces that the process which was removing them left behind when it ended."""
    gone = [name for name in _own_named(directory, _DISCARDED) if not _process_exists(_DISCARDED.fullmatch(name))]
    if not gone:
        return 0
    parent = os.open(directory, _DIRECTORY)
    try:
        return sum(_removed(parent, name) for name in gone)
    finally:
        os.close(parent)


def _process_exists(name: re.Match) -> bool:
    """Whether the process of the pid in the name exists (a new process with a reused pid counts as it)."""
    try:
        os.kill(int(name["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _is_own_directory(directory: str, name: str) -> bool:
    try:
        info = os.stat(os.path.join(directory, name), follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def _remove_if_abandoned(directory: str, name: str) -> None:
    """An empty slot area whose process is gone (a live one, or a new process with its pid, keeps it)."""
    if _process_exists(_SLOT_AREA.fullmatch(name)):
        return
    try:
        os.rmdir(os.path.join(directory, name))
    except OSError:
        pass  # not empty: a workspace of a run still going, or one that could not be removed


def _sweep_workspaces(directory: str) -> int:
    try:
        parent = os.open(directory, _DIRECTORY)
    except OSError as exc:
        logger.error("cannot sweep the work directory %s: %s", directory, exc)
        return 0
    try:
        candidates = _own_directories(parent)  # listed BEFORE the ledger is read: see the module docstring
        dead = [name for name in _dead(candidates) if _removed(parent, name)]
    finally:
        os.close(parent)
    if dead:
        logger.warning("removed %s workspaces of runs that ended without their worker: %s", len(dead), dead)
    return len(dead)


def sweep_at_start(**kwargs) -> None:
    """worker_ready, in the worker's main process: what an earlier worker on this host left behind."""
    try:
        sweep()
    except Exception:  # the reaper sweeps again; a start-up must not fail for this
        logger.exception("could not sweep the work directory at start-up")
    finally:
        connection.close()  # the main process does not keep this connection around


def _own_directories(parent: int) -> dict[str, os.stat_result]:
    """Workspace-named entries that are real directories of this process's user (never a link)."""
    found = {}
    for name in os.listdir(parent):
        if not name.startswith("executor-") or not (_LEASED.fullmatch(name) or _LEGACY.fullmatch(name)):
            continue
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            found[name] = info
    return found


def _dead(candidates: dict[str, os.stat_result]) -> list[str]:
    leased = {name: match for name in candidates if (match := _LEASED.fullmatch(name))}
    legacy = [name for name in candidates if name not in leased]
    own = {name: match for name, match in leased.items() if match["database"] == database_tag()}
    return _dead_leased(own) + _dead_legacy(legacy, candidates)


def _dead_leased(names: dict[str, re.Match]) -> list[str]:
    if not names:
        return []
    ids = {match["execution"] for match in names.values()}
    live = {
        (str(execution_id), lease_digest(lease))
        for execution_id, lease in Execution.objects.filter(pk__in=ids, status=ExecutionStatus.IN_PROGRESS)
        .values_list("pk", "lease_owner")
    }  # fmt: skip
    return [name for name, match in names.items() if (match["execution"], match["lease"]) not in live]


def _dead_legacy(names: Iterable[str], candidates: dict[str, os.stat_result]) -> list[str]:
    cutoff = time.time() - settings.EXECUTOR_MAX_EXECUTION_SECONDS
    old = [name for name in names if candidates[name].st_mtime < cutoff]
    if not old:
        return []
    in_progress = Execution.objects.filter(status=ExecutionStatus.IN_PROGRESS)
    running = [str(pk) for pk in in_progress.values_list("pk", flat=True)]
    return [name for name in old if not any(pk.startswith(_LEGACY.fullmatch(name)["short_id"]) for pk in running)]


def _removed(parent: int, name: str) -> bool:
    try:
        remove_tree(parent, name)
    except OSError as exc:
        logger.error("could not remove the abandoned workspace %s: %s", name, exc)
        return False
    except RecursionError:  # a step nested directories deeper than Python recurses
        logger.error("could not remove the abandoned workspace %s: its directories are nested too deep", name)
        return False
    return True


def remove_tree(parent: int, name: str) -> None:
    """Remove `name` in the directory `parent` and everything below it, following no link (module docstring)."""
    try:
        os.unlink(name, dir_fd=parent)  # anything but a directory: a link goes, never what it points to
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    fd = _open_directory(parent, name)
    try:
        for entry in os.listdir(fd):
            remove_tree(fd, entry)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _open_directory(parent: int, name: str) -> int:
    """Open a directory to empty it. A step may have left its own directories unreadable (chmod 000): an
    unprivileged worker owns them and makes them its own again; root needs no such help."""
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=parent)
    except PermissionError:
        _make_accessible(parent, name)
        fd = os.open(name, _DIRECTORY, dir_fd=parent)
    try:
        os.fchmod(fd, 0o700)  # entries are unlinked from it
    except PermissionError:
        pass  # not ours; root removes it anyway
    return fd


def _make_accessible(parent: int, name: str) -> None:
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.chmod(f"/proc/self/fd/{fd}", 0o700)  # the directory itself: an O_PATH descriptor follows no link
    finally:
        os.close(fd)
