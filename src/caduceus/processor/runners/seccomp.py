"""The system-call filter of sandboxed local modules, as bwrap's --seccomp wants it.

libseccomp (through pyseccomp, a ctypes binding of the system's libseccomp2) compiles the rules
into a classic-BPF program for the machine's own architecture. Everything is allowed except the
calls that serve to leave or widen a sandbox, which fail with EPERM: mounting, tracing and
reading other processes, the kernel keyring, BPF and perf, new user namespaces and joining
namespaces, loading kernel modules, rebooting and the like. clone3 fails with ENOSYS (its flags
are in memory a filter cannot read), so that the C library falls back to clone, whose flags
the filter checks. A system call of another architecture (32-bit calls on x86_64) kills the
module: the filter's rules would not apply to it.
"""

from __future__ import annotations

import errno
import functools
import os

from caduceus.processor.runners.base import RunnerError

CLONE_NEWUSER = 0x10000000

# Names libseccomp does not know on this architecture are left out (they do not exist there).
BLOCKED = (
    # File systems and mounts: the module's view of the host is what bwrap built.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "quotactl_fd",
    "swapon",
    "swapoff",
    # Other processes: tracing, reading or writing their memory, taking their descriptors.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    # The kernel keyring, BPF, perf and userfaultfd: large kernel surfaces no module needs.
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # Namespaces: a new user namespace would give the module capabilities again.
    "unshare",
    "setns",
    # The machine itself.
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "acct",
    "syslog",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "lookup_dcookie",
    "vhangup",
    "uselib",
    "nfsservctl",
)


@functools.cache
def filter_program() -> bytes:
    """The compiled filter (cached: the rules never change while the processor runs)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: no libseccomp
        raise RunnerError(
            f"the module sandbox needs libseccomp (Debian: libseccomp2) and pyseccomp: {exc}"
        ) from exc
    arch = seccomp.system_arch()
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in BLOCKED:
        if seccomp.resolve_syscall(arch, name) == -1:  # unknown here
            continue
        rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    rules.add_rule(
        seccomp.ERRNO(errno.EPERM),
        "clone",
        seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER),
    )
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    buffer = os.memfd_create("caduceus-seccomp-build", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(buffer), "wb") as sink:
            rules.export_bpf(sink)
        program = os.pread(buffer, os.fstat(buffer).st_size, 0)
    finally:
        os.close(buffer)
    if not program:
        raise RunnerError("libseccomp compiled an empty system-call filter")
    return program


def filter_fd() -> int:
    """A new descriptor holding the compiled filter from its start, for one bwrap to read."""
    program = filter_program()
    fd = os.memfd_create("caduceus-seccomp", os.MFD_CLOEXEC)
    try:
        written = 0
        while written < len(program):
            written += os.write(fd, program[written:])
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd
