"""A small seccomp filter (classic BPF, built here) that bubblewrap installs before the program starts.

The namespaces already take away mounts, the network and other users' processes; this filter closes
what a same-uid process may still do inside: ``ptrace`` of the namespace's init (bwrap), reading or
writing another process's memory, and kernel interfaces with a record of exploits (``bpf``,
``userfaultfd``, ``perf_event_open``, io_uring, keyrings). Those calls fail with EPERM. System calls
of another ABI (32-bit ``int 0x80`` or x32 on x86_64) kill the process: a filter keyed on x86_64
numbers would not see them.

Only x86_64 and aarch64 are known; elsewhere :func:`seccomp_filter` returns None and the sandbox
runs without the filter.
"""

from __future__ import annotations

import errno
import platform
import struct

# struct seccomp_data: nr at offset 0, arch at offset 4
LD_ABS_W, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
RET_EPERM = 0x00050000 | errno.EPERM
X32_BIT = 0x40000000

DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "bpf", "userfaultfd", "perf_event_open",
          "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
          "unshare", "setns", "mount", "kexec_load")
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321,
                            "userfaultfd": 323, "perf_event_open": 298, "keyctl": 250, "add_key": 248,
                            "request_key": 249, "io_uring_setup": 425, "io_uring_enter": 426,
                            "io_uring_register": 427, "unshare": 272, "setns": 308, "mount": 165,
                            "kexec_load": 246}),
    "aarch64": (0xC00000B7, {"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "bpf": 280,
                             "userfaultfd": 282, "perf_event_open": 241, "keyctl": 219, "add_key": 217,
                             "request_key": 218, "io_uring_setup": 425, "io_uring_enter": 426,
                             "io_uring_register": 427, "unshare": 97, "setns": 268, "mount": 40,
                             "kexec_load": 104}),
}


def _op(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter`` bytes, for ``bwrap --seccomp FD``.

    >>> program = seccomp_filter("x86_64")
    >>> program is not None and len(program) % 8 == 0
    True
    >>> seccomp_filter("sparc") is None
    True
    """
    arch = ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, numbers = arch
    denied = [numbers[name] for name in DENIED]
    n = len(denied)
    ops = [_op(LD_ABS_W, 0, 0, 4), _op(JEQ, 1, 0, audit_arch), _op(RET, 0, 0, RET_KILL_PROCESS),
           _op(LD_ABS_W, 0, 0, 0), _op(JGE, 0, 1, X32_BIT), _op(RET, 0, 0, RET_KILL_PROCESS)]
    # one test per denied call: jump forward to the EPERM return at the end, else fall through
    ops += [_op(JEQ, n - i, 0, nr) for i, nr in enumerate(denied)]
    ops += [_op(RET, 0, 0, RET_ALLOW), _op(RET, 0, 0, RET_EPERM)]
    return b"".join(ops)
