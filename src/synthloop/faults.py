"""Fault injection for the crash-safety tests: a hook the run store is given, inert by default.

A :class:`Faults` object is passed to ``RunStore(root, faults=...)``; the store, and the loop through
``Journal.point``, call :meth:`Faults.point` at the moments where a crash matters: after generating or
verifying a part, after a file's temporary copy is on disk but before its rename, in the middle of
appending a record to a part journal, before a commit, after training, after a checkpoint is saved,
before old files are deleted, and right after the run directory's lock is taken. Library code never
reads the environment for this; the command line builds the object from these variables
(:meth:`Faults.from_environment`), so subprocess tests can set them:

``SYNTHLOOP_FAULT_DELAY=SECONDS``
    sleep that long at every point, so that a kill at a random instant lands in these windows;
``SYNTHLOOP_FAULT_TRACE=FILE``
    append ``NAME DETAIL`` to FILE at every point (before the sleep), so a test knows where it killed;
``SYNTHLOOP_FAULT_OSERROR=NAME:N[:ERRNO]``
    raise ``OSError`` (``EIO`` unless an errno name such as ``ENOSPC`` is given) the N-th time point
    NAME is reached in this process (a failing disk);
``SYNTHLOOP_FAULT_WAIT=NAME[@N]:FILE``
    at the N-th point NAME (the first by default), wait until FILE exists (the concurrency tests hold
    a writer there; the Ctrl-C tests hold a run mid-way, so that it cannot finish before the signal);
``SYNTHLOOP_FAULT_NO_FSYNC=1``
    skip fsync (a store setting, read by :func:`fsync_from_environment`): a killed process loses
    nothing the kernel already holds, but a power cut would.

Names: ``generate``, ``verify``, ``write``, ``append``, ``checkpoint``, ``label``, ``train``, ``evaluate``,
``commit``, ``cleanup``, ``locked``.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "SYNTHLOOP_FAULT_"


@dataclass
class Faults:
    """Where and how to fail; ``Faults()`` does nothing. Counts points reached by this object."""

    delay: float = 0.0
    trace: Path | None = None
    oserror: tuple[str, int, int] | None = None  # (point, occurrence, errno)
    wait: tuple[str, Path, int] | None = None  # (point, file whose existence releases it, occurrence)
    reached: Counter[str] = field(default_factory=Counter, repr=False)

    @property
    def active(self) -> bool:
        return self.delay > 0 or self.trace is not None or self.oserror is not None or self.wait is not None

    def point(self, name: str, detail: str = "") -> None:
        if not self.active:
            return
        self.reached[name] += 1
        if self.trace is not None:
            with open(self.trace, "a") as handle:
                handle.write(f"{name} {detail}\n")
        if self.oserror is not None:
            fail_name, count, code = self.oserror
            if fail_name == name and self.reached[name] == count:
                raise OSError(code, f"injected I/O error at {name}", detail or None)
        if self.wait is not None and self.wait[0] == name and self.reached[name] == self.wait[2]:
            while not self.wait[1].exists():
                time.sleep(0.005)
        if self.delay > 0:
            time.sleep(self.delay)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Faults:
        """The faults the ``SYNTHLOOP_FAULT_*`` variables ask for (``os.environ`` by default), for
        entry points only: the command line, a test's script."""
        environ = os.environ if environ is None else environ
        oserror = None
        if environ.get(PREFIX + "OSERROR"):
            name, _, rest = environ[PREFIX + "OSERROR"].partition(":")
            count, _, code = rest.partition(":")
            oserror = (name, int(count or 1), getattr(errno, code) if code else errno.EIO)
        wait = None
        if environ.get(PREFIX + "WAIT"):
            name, _, path = environ[PREFIX + "WAIT"].partition(":")
            name, _, occurrence = name.partition("@")
            wait = (name, Path(path), int(occurrence or 1))
        trace = environ.get(PREFIX + "TRACE")
        return cls(delay=float(environ.get(PREFIX + "DELAY", "0") or 0),
                    trace=Path(trace) if trace else None, oserror=oserror, wait=wait)


def fsync_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the store should fsync: yes unless ``SYNTHLOOP_FAULT_NO_FSYNC`` is set."""
    environ = os.environ if environ is None else environ
    return environ.get(PREFIX + "NO_FSYNC", "") not in ("1", "true")
