"""What a hostile package brings: a library that runs when loaded, and a script trying the system calls sandbox
escapes are built on. Shared by the sandbox tests of a root worker (test_sandbox.py) and of an unprivileged one
(test_unprivileged_sandbox.py)."""

import shutil
import subprocess
from pathlib import Path

import pytest

EVIL_LIBRARY = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
    FILE *mark = fopen(MARKER, "w");  /* /var/tmp is not in the sandbox: this only works on the host */
    if (mark) { fprintf(mark, "loaded as uid %d\n", getuid()); fclose(mark); }
}
"""


def build_evil_library(directory: Path, marker: Path) -> bytes:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build the attacker's library")
    source, library = directory / "evil.c", directory / "evil.so"
    source.write_text(EVIL_LIBRARY)
    subprocess.run([compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library), str(source)],
                   check=True)  # fmt: skip
    return library.read_bytes()


ESCAPES = r"""
import ctypes, os, subprocess
unshare = subprocess.run(["unshare", "-r", "id"], capture_output=True, text=True)
print("unshare -r:", unshare.returncode, unshare.stderr.strip())
libc = ctypes.CDLL(None, use_errno=True)
# Each of these works (or fails with another error) for an unprivileged process without the filter.
calls = {"unshare(CLONE_NEWUSER)": (272, 0x10000000), "keyctl(GET_KEYRING_ID)": (250, 0, -3, 1),
         "userfaultfd(USER_MODE_ONLY)": (323, 1), "ptrace(TRACEME)": (101, 0, 0, 0, 0),
         "io_uring_setup": (425, 1, 0), "perf_event_open": (298, 0, 0, -1, -1, 0)}
for name, (number, *args) in calls.items():
    result = libc.syscall(number, *args)
    print(name, result, os.strerror(ctypes.get_errno()))
"""
