"""Starting a command as a throwaway uid, reading its output with a cap, and killing what it left.

Why each piece:

* The uid drop (``setgroups([])``, ``setgid``, ``setuid``, done by ``subprocess`` before exec) comes
  first and the limits second (``prlimit`` runs as that uid and execs the command): the kernel does
  not enforce RLIMIT_NPROC for uid 0, so limits set as root do not stop a fork bomb.
* Each run gets a uid of its own (:class:`UidPool`), so RLIMIT_NPROC, counted per uid, is per run,
  and, without namespaces, one sweep (``kill -9 -1`` as that uid) removes anything of the run still
  alive afterwards (in bubblewrap the pid namespace does that).
* Output is read as it comes with a byte cap; ``communicate()`` would buffer a flood whole.
* The process group is killed with SIGKILL while its leader is still a zombie (``waitid`` with
  ``WNOWAIT``), so the group id cannot have been reused by an unrelated process.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from synthloop.sandbox.bwrap import MINIMAL_ENV

UID_BASE = 1_000_000_000  # far above any real account; uids up to 2**32 - 2 are valid
UIDS_PER_PROCESS = 1024
KILL = "/usr/bin/kill"


class UidPool:
    """Unprivileged uids for concurrent runs: ``UID_BASE + (pid mod 65536) * 1024 + slot``.

    The pid term keeps two synthloop processes on one machine apart (two test sessions at once).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[int] = set()

    def acquire(self) -> int:
        with self._lock:
            slot = next(s for s in range(UIDS_PER_PROCESS + 1) if s not in self._busy)
            if slot == UIDS_PER_PROCESS:
                raise RuntimeError(f"more than {UIDS_PER_PROCESS} sandboxed runs at once")
            self._busy.add(slot)
        return UID_BASE + (os.getpid() % 65536) * UIDS_PER_PROCESS + slot

    def release(self, uid: int) -> None:
        with self._lock:
            self._busy.discard((uid - UID_BASE) % UIDS_PER_PROCESS)


#: One pool per process: uids are a machine-wide resource, not a property of one Sandbox object.
UIDS = UidPool()


@dataclass(frozen=True)
class Captured:
    returncode: int | None  # None: killed by us (timeout or overflow) before it exited
    stdout: bytes  # the tail of each stream
    stderr: bytes
    output_bytes: int  # stdout and stderr together, all of it, tail or not
    seconds: float
    timed_out: bool
    overflowed: bool
    status: bytes = b""  # bwrap's JSON status lines, when there were any


def start(argv: Sequence[str], *, uid: int | None, pass_fds: Sequence[int], cwd: str | None = None) -> subprocess.Popen[bytes]:
    """``argv`` in a new process group, as ``uid`` (and gid ``uid``, no groups) when given."""
    drop = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(MINIMAL_ENV), cwd=cwd, pass_fds=tuple(pass_fds),
                            process_group=0, **drop)  # type: ignore[call-overload]


def capture(proc: subprocess.Popen[bytes], *, timeout_s: float, output_bytes: int, status_fd: int | None = None,
            tail_bytes: int = 1 << 16) -> Captured:
    """Read both pipes until EOF, the deadline or the byte cap; then make sure the group is dead.

    Reading also stops once the process has exited and the pipes stay quiet for 0.1 s: without
    namespaces a daemon it left behind may hold them open (the sweep then kills it). What was
    written between that quiet moment and the exit is still read.

    ``status_fd`` is bwrap's ``--json-status-fd``: read as it comes, so that a run to be killed is
    killed at the namespace's init first (see :func:`stop`).
    """
    begin = time.monotonic()
    deadline = begin + timeout_s
    assert proc.stdout is not None and proc.stderr is not None
    out = _Output({proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}, status_fd,
                  output_bytes, tail_bytes)
    timed_out = out.read(proc, deadline)
    exited = not (timed_out or out.overflowed) and _wait_unreaped(proc.pid, deadline)
    timed_out = timed_out or not (exited or out.overflowed)
    if not exited:
        stop(proc, inner_pid(bytes(out.status)))
    kill_group(proc)
    code = proc.wait()
    return Captured(returncode=code if exited else None, stdout=bytes(out.tails[proc.stdout.fileno()]),
                    stderr=bytes(out.tails[proc.stderr.fileno()]), output_bytes=out.total,
                    seconds=time.monotonic() - begin, timed_out=timed_out, overflowed=out.overflowed,
                    status=bytes(out.status))


@dataclass
class _Output:
    """The pipes' tails, bwrap's status lines, and the byte count against the cap."""

    tails: dict[int, bytearray]
    status_fd: int | None
    output_bytes: int
    tail_bytes: int
    status: bytearray = field(default_factory=bytearray)
    total: int = 0
    overflowed: bool = False

    def read(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """Read until EOF, the cap, or the process gone and the pipes quiet; True if the deadline came."""
        with selectors.DefaultSelector() as selector:
            for fd in [*self.tails, *([] if self.status_fd is None else [self.status_fd])]:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)
            while any(fd in selector.get_map() for fd in self.tails) and not self.overflowed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                events = selector.select(min(left, 0.1))
                last = not events and _exited(proc.pid)  # a lingering child may hold the pipes open
                for key in [k for k, _ in events] if not last else list(selector.get_map().values()):
                    if self.take(key.fd, drain=last) == b"":
                        selector.unregister(key.fd)
                if last:
                    return False
        return False

    def take(self, fd: int, *, drain: bool) -> bytes | None:
        """One read of ``fd`` (all it holds now if ``drain``); the last read's result."""
        chunk = _read_ready(fd)
        while chunk:
            if fd == self.status_fd:
                self.status += chunk
            else:
                self.total += len(chunk)
                self.tails[fd] += chunk
                del self.tails[fd][:-self.tail_bytes]
                self.overflowed = self.overflowed or self.total > self.output_bytes
            chunk = _read_ready(fd) if drain and not self.overflowed else None
        return chunk


def _read_ready(fd: int) -> bytes | None:
    """What a non-blocking pipe holds now (b"" at EOF); None when nothing is there yet."""
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None


def inner_pid(status: bytes) -> int | None:
    """The host pid of bwrap's child (the pid namespace's init), from its first status line."""
    match = re.search(rb'"child-pid":\s*(\d+)', status)
    return int(match.group(1)) if match else None


def stop(proc: subprocess.Popen[bytes], inner: int | None, *, grace_s: float = 2.0) -> None:
    """Kill the namespace's init first (which takes every process inside with it) and let bwrap reap
    it: killing bwrap first would orphan the init to the host's pid 1, which in a container may never
    reap it. The pidfd, opened only while that pid is still bwrap's child, cannot hit a reused pid."""
    if inner is not None:
        try:
            pidfd = os.pidfd_open(inner)
        except OSError:
            pidfd = -1
        try:
            if pidfd >= 0 and _parent_of(inner) == proc.pid:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                _wait_unreaped(proc.pid, time.monotonic() + grace_s)
        except OSError:
            pass
        finally:
            if pidfd >= 0:
                os.close(pidfd)


def _parent_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^PPid:\s*(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def _exited(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` has exited, leaving it a zombie; False if the deadline came first."""
    pause = 0.0005
    while True:
        if _exited(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(2 * pause, 0.02)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group leader changed uid; kill the leader at least
        proc.kill()


def sweep(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a setsid daemon leaves the process group).

    ``kill -9 -1`` run as ``uid`` signals exactly the processes that uid owns; never call this for
    uid 0, which would be every process on the machine.
    """
    if uid == 0:
        raise ValueError("refusing to sweep uid 0")
    subprocess.run([KILL, "-9", "-1"], user=uid, group=uid, extra_groups=[], env=dict(MINIMAL_ENV),
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, timeout=10)
