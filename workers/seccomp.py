"""The seccomp filter every sandboxed step runs under: the kernel interfaces container escapes are built on.

No Django here. The filter allows everything except the calls below, which fail with EPERM (so a program that
probes for them gets an ordinary error, not a kill):

- new namespaces of any kind (`unshare`, `setns`, `clone` with a CLONE_NEW* flag): a user namespace would give
  the step a uid 0 with capabilities over its own namespaces, which is most of the kernel surface escapes use;
- mounting and changing the root (`mount`, `umount2`, `pivot_root`, `chroot` and the new mount API);
- the kernel keyring, eBPF, `ptrace` and cross-process memory access, `userfaultfd` (a staple of exploits'
  race windows), `perf_event_open`, io_uring (a long list of privilege escalations; runtimes block it too);
- module loading, kexec, reboot, swap, accounting, quotas, the kernel log, raw I/O ports, file handles
  (`open_by_handle_at`, the "shocker" container escape).

`clone3` answers ENOSYS instead: its flags sit in a struct a filter cannot read, and glibc then falls back to
`clone`, whose flags the filter does check. Calls of a foreign architecture (32-bit on x86_64) kill the process:
libseccomp's default for a filter built for the native architecture only.

The filter is built once per process with libseccomp (the pyseccomp binding) and handed to bwrap as BPF bytes.
"""

import errno
import functools
import os

DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "keyctl", "add_key", "request_key", "bpf", "ptrace",
    "process_vm_readv", "process_vm_writev", "userfaultfd", "perf_event_open", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "iopl", "ioperm",
    "lookup_dcookie", "open_by_handle_at", "name_to_handle_at", "vhangup",
)  # fmt: skip
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}  # fmt: skip


@functools.cache
def step_filter() -> bytes:
    """The compiled BPF program (bwrap's --seccomp reads it from a file descriptor)."""
    import pyseccomp as seccomp  # loads libseccomp; only sandboxed workers need it

    deny = seccomp.ERRNO(errno.EPERM)
    syscall_filter = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED:
        syscall_filter.add_rule(deny, name)
    for flag in CLONE_NAMESPACE_FLAGS.values():
        syscall_filter.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    syscall_filter.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with os.fdopen(os.memfd_create("executor-seccomp"), "w+b") as program:
        syscall_filter.export_bpf(program)
        program.seek(0)
        return program.read()
