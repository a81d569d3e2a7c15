"""Fault-injection points for testing crash safety; inert unless a ``SYNTHLOOP_FAULT_*`` variable is set.

The loop and the store call :func:`point` at the moments where a crash matters: after generating or
verifying a part, after a file's temporary copy is on disk but before its rename, before the manifest
is replaced, after training, after a checkpoint is saved, before old files are deleted. Tests set:

``SYNTHLOOP_FAULT_DELAY=SECONDS``
    sleep that long at every point, so that a kill at a random instant lands in these windows;
``SYNTHLOOP_FAULT_TRACE=FILE``
    append ``NAME DETAIL`` to FILE at every point (before the sleep), so a test knows where it killed;
``SYNTHLOOP_FAULT_OSERROR=NAME:N``
    raise ``OSError(EIO)`` the N-th time point NAME is reached in this process (a failing disk);
``SYNTHLOOP_FAULT_NO_FSYNC=1``
    skip fsync, for fast in-process tests only: a killed process loses nothing the kernel already
    holds, but a power cut would (the subprocess kill test keeps fsync on).

Names: ``generate``, ``verify``, ``write``, ``checkpoint``, ``train``, ``evaluate``, ``commit``,
``cleanup``.
"""

from __future__ import annotations

import errno
import os
import time

_reached: dict[str, int] = {}


def fsync_enabled() -> bool:
    return os.environ.get("SYNTHLOOP_FAULT_NO_FSYNC", "") not in ("1", "true")


def point(name: str, detail: str = "") -> None:
    if not any(key.startswith("SYNTHLOOP_FAULT_") for key in os.environ):
        return
    _reached[name] = _reached.get(name, 0) + 1
    trace = os.environ.get("SYNTHLOOP_FAULT_TRACE")
    if trace:
        with open(trace, "a") as handle:
            handle.write(f"{name} {detail}\n")
    failing = os.environ.get("SYNTHLOOP_FAULT_OSERROR", "")
    if failing:
        fail_name, _, count = failing.partition(":")
        if fail_name == name and _reached[name] == int(count or 1):
            raise OSError(errno.EIO, f"injected I/O error at {name}", detail or None)
    delay = float(os.environ.get("SYNTHLOOP_FAULT_DELAY", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def reset() -> None:
    """Forget how often each point was reached (for in-process tests)."""
    _reached.clear()
