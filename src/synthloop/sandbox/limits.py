"""The resource limits of one sandboxed run, and the ``prlimit`` arguments that apply them."""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one program may use. Every limit binds the whole process tree, not just its first process.

    ``processes`` is RLIMIT_NPROC, counted per uid by the kernel: each run gets a uid of its own, so
    a fork bomb in one run cannot starve the others. ``memory_mb`` is the address space of each
    process (RLIMIT_AS), ``work_mb`` the size of the writable work folder (a tmpfs, so it is memory
    too), ``output_bytes`` what stdout and stderr may carry together before the run is killed.
    """

    timeout_s: float = 10.0  # wall clock, then SIGKILL of the whole process group
    cpu_s: int | None = None  # RLIMIT_CPU per process; None: the timeout rounded up, plus one
    memory_mb: int = 512
    processes: int = 32
    file_size_mb: int = 16  # RLIMIT_FSIZE: the largest file a process may write
    open_files: int = 64
    work_mb: int = 64
    output_bytes: int = MIB

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        for name in ("memory_mb", "processes", "file_size_mb", "open_files", "work_mb", "output_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"cpu_s must be at least 1 second, got {self.cpu_s!r}")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1

    def prlimit_args(self) -> list[str]:
        """``prlimit`` options (util-linux): soft:hard pairs; the hard CPU limit one second later
        (SIGXCPU first, then SIGKILL for a program that ignores it), and no core files."""
        cpu = self.cpu_seconds
        return [f"--cpu={cpu}:{cpu + 1}", f"--as={self.memory_mb * MIB}", f"--nproc={self.processes}",
                f"--fsize={self.file_size_mb * MIB}", f"--nofile={self.open_files}", "--core=0"]
