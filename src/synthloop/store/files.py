"""File primitives of the run store: atomic writes, fsync, sha256, checksummed journals, the lock.

Nothing here knows what a run is; the errors name the files they are about.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from synthloop.faults import Faults

TMP_NAME = re.compile(r"^\..+\.tmp-\d+$")  # what atomic_write_bytes leaves if killed mid-write
LOCK = ".lock"
INERT = Faults()


class RunDirectoryError(RuntimeError):
    """A run directory is missing, incomplete or inconsistent; the message names the file."""


class IntegrityError(RunDirectoryError):
    """A file of a run failed its check against the manifest (missing, truncated or altered)."""

    def __init__(self, root: Path, path: Path, problem: str) -> None:
        self.path = path
        self.problem = f"{path} {problem}"
        super().__init__(f"{self.problem}; `synthloop check {root}` lists every damaged file, "
                         f"`synthloop repair {root}` rolls back to the last intact iteration")


class RunLockedError(RunDirectoryError):
    """Another process is writing to the run directory."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: Path, *, fsync: bool) -> None:
    if not fsync:
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: Path, *, fsync: bool) -> None:
    """Create ``directory`` and its missing parents, each made durable in its own parent."""
    missing = []
    while not directory.exists():  # a file in the way fails the mkdir below: "Not a directory"
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent, fsync=fsync)


def named(error: OSError, path: Path) -> OSError:
    """The same error, naming ``path`` (the file meant, not a temporary name)."""
    return OSError(error.errno, error.strerror or str(error), str(path))


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True, faults: Faults = INERT) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``, never a part.

    On failure (a full disk) the temporary file is removed and the error names ``path``.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        ensure_dir(path.parent, fsync=fsync)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        faults.point("write", str(path))
        os.replace(tmp, path)
        fsync_dir(path.parent, fsync=fsync)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise named(error, path) from None


def fsync_tree(directory: Path, *, fsync: bool) -> None:
    """Make files a plug-in wrote with ordinary ``open`` (a checkpoint) durable, then their folders."""
    if not fsync:
        return
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in sorted({p.parent for p in directory.rglob("*")} | {directory}, reverse=True):
        fsync_dir(folder, fsync=fsync)


# -- append-only journals: one checksummed record per line ---------------------------------------


def append_record(path: Path, payload: bytes, *, fsync: bool = True, faults: Faults = INERT) -> None:
    """Append ``SHA256 PAYLOAD\\n`` to ``path``. A kill mid-append leaves a torn last line, which
    :func:`read_records` drops; any other error takes the partial record back off and names ``path``."""
    line = record_line(payload)
    new = not path.exists()
    if new:
        ensure_dir(path.parent, fsync=fsync)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = os.fstat(fd).st_size
    try:
        half = len(line) // 2  # two writes, so the kill test can land between them
        _write_all(fd, line[:half])
        faults.point("append", str(path))
        _write_all(fd, line[half:])
        if fsync:
            os.fsync(fd)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise named(error, path) from None
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent, fsync=fsync)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass(frozen=True)
class Records:
    """The intact records of a journal and where they end (a torn last line lies past ``end``).

    ``damage`` says what is wrong with the first complete line that fails its checksum, if any:
    ``payloads`` then holds the records before it.
    """

    payloads: list[bytes]
    end: int
    torn: bool
    damage: str | None = None


def read_records(path: Path) -> Records:
    """Every complete record of a journal, each checked against its sha256.

    Text after the last newline is a record torn by a kill mid-append: it is reported, not read. A
    complete line whose checksum fails is damage: reading stops there and ``damage`` says so.
    """
    data = path.read_bytes()
    payloads: list[bytes] = []
    position = 0
    while True:
        end = data.find(b"\n", position)
        if end == -1:
            return Records(payloads, position, position < len(data))
        digest, space, payload = data[position:end].partition(b" ")
        if not space or sha256_bytes(payload).encode() != digest:
            return Records(payloads, position, False,
                           f"is corrupted (record {len(payloads) + 1} does not match its sha256)")
        payloads.append(payload)
        position = end + 1


def record_line(payload: bytes) -> bytes:
    if b"\n" in payload:
        raise ValueError("a journal record is one line")
    return sha256_bytes(payload).encode() + b" " + payload + b"\n"


def truncate_to(path: Path, length: int, *, fsync: bool) -> None:
    """Cut a torn last record off a journal (before anything is appended after it)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


# -- one writer per run directory ----------------------------------------------------------------


@dataclass
class _Held:
    fd: int
    users: int


# flock locks belong to an open file, so a second open in this process would conflict with the
# first: the process keeps one per run directory and counts its users (the OS lock is per process).
_HELD: dict[tuple[int, int], _Held] = {}


def lock_directory(root: Path, *, faults: Faults = INERT) -> Callable[[], None]:
    """Take the exclusive lock of a run directory for this process; return what releases it.

    A second process gets :class:`RunLockedError` naming the holder's pid. The lock is an OS lock
    (``flock`` on ``root/.lock``): it goes with the process, however the process ends.
    """
    path = root / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    if key in _HELD:
        os.close(fd)
        _HELD[key].users += 1
        return lambda: _release(key)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(f"{root} is in use by process {_holder(path)} (one writer per run directory): "
                             "wait for it to end; inspect, check and report need no lock") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = _Held(fd, 1)
    faults.point("locked", str(root))
    return lambda: _release(key)


def _release(key: tuple[int, int]) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held.users -= 1
    if held.users == 0:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(held.fd, 0)  # no stale pid for the next writer's rivals to read
        os.close(held.fd)  # closing the only descriptor releases the lock


def _holder(path: Path) -> str:
    """The pid the holder wrote into the lock file (right after taking the lock: until then the file
    is empty, or names a killed holder, so wait for a live one)."""
    deadline = time.monotonic() + 2.0
    while True:
        text = path.read_text().strip() if path.exists() else ""
        if (text.isdigit() and _alive(int(text))) or time.monotonic() > deadline:
            return text or "(unknown)"
        time.sleep(0.005)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
