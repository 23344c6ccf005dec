"""File operations in directories a step can write to, done so that nothing the step planted is followed.

No Django here. A step owns its directories and may leave a symbolic link, a FIFO, a hard link or a huge file
where the worker expects its own file. The worker (often root) therefore never uses a path there: it opens each
directory with O_NOFOLLOW from a descriptor it trusts, creates files with O_CREAT | O_EXCL | O_NOFOLLOW after
unlinking whatever had the name, reads only regular files (O_NOFOLLOW | O_NONBLOCK, then fstat) up to a limit,
and changes owners through the open descriptor, never by name.
"""

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFile(Exception):
    """What the step left is not a plain file or directory of its own (or is too large); the message says what."""


@contextlib.contextmanager
def open_directory(path: str, *names: str) -> Iterator[int]:
    """A descriptor of `path`/`names[0]`/`names[1]`/..., each name opened without following a link.

    `path` itself must be one the worker made and the step cannot replace (the workspace's root)."""
    fd = os.open(path, _DIRECTORY)
    try:
        for name in names:
            try:
                child = os.open(name, _DIRECTORY, dir_fd=fd)
            except OSError as exc:
                raise UnsafeFile(f"{name} is not a directory ({exc.strerror})") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def write_new(dir_fd: int, name: str, data: bytes, *, mode: int = 0o600, owner: int | None = None) -> None:
    """Replace `name` in the directory with a new file holding `data`: whatever had the name (a link, a FIFO)
    is unlinked first, and the new file is created exclusively, so nothing else is ever written through."""
    remove(dir_fd, name)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, owner, owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _open_regular(dir_fd: int, name: str) -> int | None:
    """A descriptor of the regular file `name` (its caller closes it), or None if there is none. UnsafeFile for a
    link, a FIFO (opened without blocking), a device or a directory."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise UnsafeFile(f"{name} is not a regular file ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile(f"{name} is not a regular file")
    return fd


def read_regular(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The bytes of the regular file `name`, or None if there is none. UnsafeFile for a link, a FIFO, a device,
    a directory or a file larger than `limit` bytes: the caller says so instead of using it."""
    fd = _open_regular(dir_fd, name)
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
        if info.st_size > limit:
            raise UnsafeFile(f"{name} is {info.st_size} bytes; the limit is {limit} bytes")
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew after fstat
                raise UnsafeFile(f"{name} grew past the limit of {limit} bytes while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def identity(dir_fd: int, name: str) -> tuple[int, int] | None:
    """(inode, size) of whatever has the name, a link not followed; None if nothing has it. One lstat: for a
    caller that polls a file and reads it only when this changed."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size


def read_regular_from(dir_fd: int, name: str, offset: int, limit: int) -> tuple[bytes, int] | None:
    """The bytes of the regular file `name` from `offset` up to byte `limit` (never past it), and the file's size
    then; None if there is none. For a file the step appends to while the worker follows it: one over `limit`
    is read up to the limit, not refused. UnsafeFile for a link, a FIFO, a device or a directory."""
    fd = _open_regular(dir_fd, name)
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
        chunks, position = [], offset
        while position < limit and (chunk := os.pread(fd, min(1 << 20, limit - position), position)):
            chunks.append(chunk)
            position += len(chunk)
        return b"".join(chunks), info.st_size
    finally:
        os.close(fd)


def remove(dir_fd: int, name: str) -> None:
    """Remove `name` from the directory, whatever it is; a link is removed, never what it points to."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: does not follow links inside either


def empty_directory(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        remove(dir_fd, name)
