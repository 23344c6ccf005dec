"""A finished run's workspace is put out of reach at once and removed in the background.

Removing a directory costs milliseconds on some filesystems (ext4 mounted with `discard`: 2-3 ms per rmdir where
this was measured, about 20 ms for one workspace, twice a warm step's whole run), and a slot that removed its
workspace itself would wait that long before recording the run's end and taking its next run. So the slot only
makes the workspace its own (mode 700: the step's uid, which the slot's next run shares, can no longer pass
through it) and renames it out of the slot's area to `executor-done-<pid>-<random>` in the work directory: two
quick calls. A thread of this process then removes it, following no link (workspace_sweep.remove_tree). What a
process leaves there when it ends is removed by the sweep once that pid is gone (workers/workspace_sweep.py).
"""

import contextlib
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from . import workspace_sweep

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_queues: dict[int, queue.SimpleQueue] = {}  # by pid: a forked pool process starts its own thread and queue


@contextlib.contextmanager
def workspace_root(prefix: str, parent: str | None) -> Iterator[Path]:
    """A new, empty directory of the worker's own (mode 700) for one run; discarded when the block ends."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield root
    finally:
        discard(root)


def discard(root: Path) -> None:
    directory = workspace_sweep.work_dir()
    name = workspace_sweep.discarded_name()
    try:
        os.chmod(root, 0o700)
        os.rename(root, os.path.join(directory, name))
    except OSError as exc:  # e.g. the work directory moved to another filesystem: remove it here and now
        logger.warning("workspace %s could not be set aside (%s): removing it now", root, exc)
        _remove(str(root.parent), root.name)
        return
    _queue().put((directory, name))


def _queue() -> queue.SimpleQueue:
    with _lock:
        pending = _queues.get(os.getpid())
        if pending is None:
            pending = _queues[os.getpid()] = queue.SimpleQueue()
            threading.Thread(target=_remove_forever, args=(pending,), name="workspace-trash", daemon=True).start()
        return pending


def _remove_forever(pending: queue.SimpleQueue) -> None:
    while True:
        _remove(*pending.get())


def _remove(directory: str, name: str) -> None:
    try:
        parent = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            workspace_sweep.remove_tree(parent, name)
        finally:
            os.close(parent)
    except (OSError, RecursionError) as exc:  # left for the sweep, once this process is gone
        logger.error("could not remove the workspace %s in %s: %s", name, directory, exc)
