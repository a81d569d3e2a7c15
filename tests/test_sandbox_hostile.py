"""Hostile programs in the sandbox, each checked from the host afterwards (see hostile_programs.py)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.hostile_programs import Hostile, hostile_programs

from synthloop.sandbox import Limits, RunResult, Sandbox, new_token
from synthloop.sandbox.process import UID_BASE, UIDS_PER_PROCESS
from synthloop.sandbox.runner import SIGXCPU_EXIT

ROOT = Path(__file__).resolve().parents[1]
MARKER = f"synthloop-hostile-{uuid.uuid4().hex[:12]}"
SECRET = f"canary-secret-{uuid.uuid4().hex}"


def sandbox_works() -> bool:
    return Sandbox(limits=Limits(timeout_s=10)).check().status == "passed"


pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not sandbox_works(),
                                reason="needs root (to drop to throwaway uids) and user namespaces")


def processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, real uid, argv) of every process on the host."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
                yield int(entry.name), uid, (entry / "cmdline").read_bytes()
            except (OSError, StopIteration, ValueError):
                continue


def our_uids() -> range:
    base = UID_BASE + (os.getpid() % 65536) * UIDS_PER_PROCESS
    return range(base, base + UIDS_PER_PROCESS)


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def outcomes(listener: socket.socket) -> dict[str, tuple[Hostile, RunResult]]:
    """Every case run once, in parallel, with a canary variable in the host's environment."""
    os.environ["SYNTHLOOP_CANARY"] = SECRET
    try:
        cases = hostile_programs(marker=MARKER, port=listener.getsockname()[1], repo=str(ROOT), secret=SECRET,
                                 host_pid=os.getpid())
        sandbox = Sandbox(limits=Limits(timeout_s=5.0, memory_mb=256, processes=32, work_mb=16, file_size_mb=8),
                          workers=6)
        tokens = [new_token() for _ in cases]
        programs = [f"{case.source}\nprint({token!r})\n" for case, token in zip(cases, tokens, strict=True)]
        results = sandbox.run_many(programs, tokens=tokens)
    finally:
        del os.environ["SYNTHLOOP_CANARY"]
    return {case.name: (case, result) for case, result in zip(cases, results, strict=True)}


CASES = [case.name for case in hostile_programs(marker="m", port=1, repo="/r", secret="s", host_pid=1)]


def test_there_are_at_least_twenty_hostile_programs() -> None:
    assert len(CASES) >= 20 and len(set(CASES)) == len(CASES)


@pytest.mark.parametrize("name", CASES)
def test_contained(outcomes: dict[str, tuple[Hostile, RunResult]], name: str) -> None:
    case, result = outcomes[name]
    assert result.isolation == "bubblewrap"
    assert result.status in case.statuses, (result.status, result.detail, result.stderr_tail[-500:])
    for path in case.canaries:
        assert not Path(path).exists(), f"{path} was written from inside the sandbox"
    output = result.stdout_tail + result.stderr_tail
    assert SECRET not in output
    for hidden in case.hidden:
        assert hidden not in output
    assert case.stdout_must in result.stdout_tail


def test_no_process_survives(outcomes: dict[str, tuple[Hostile, RunResult]]) -> None:
    survivors = [(pid, uid, argv) for pid, uid, argv in processes()
                 if uid in our_uids() or MARKER.encode() in argv]
    assert survivors == []


def test_the_host_listener_saw_no_connection(outcomes: dict[str, tuple[Hostile, RunResult]],
                                             listener: socket.socket) -> None:
    assert outcomes["connect_host_listener"][1].status == "failed"
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_the_floods_hit_their_caps(outcomes: dict[str, tuple[Hostile, RunResult]]) -> None:
    assert "output over" in outcomes["stdout_flood"][1].detail
    assert outcomes["stdout_flood"][1].output_bytes < 2 * 2**20
    for name in ("disk_flood", "tmp_flood"):
        tail = outcomes[name][1].stderr_tail
        assert "No space left on device" in tail or "File too large" in tail, tail[-300:]


def test_timeouts_are_wall_clock_kills(outcomes: dict[str, tuple[Hostile, RunResult]]) -> None:
    for name in ("infinite_loop", "sleep", "sigterm_ignorer", "fork_bomb"):
        result = outcomes[name][1]
        assert result.exit_code in (None, SIGXCPU_EXIT) and result.seconds < 8, (name, result)


def test_early_exits_are_failures_not_passes(outcomes: dict[str, tuple[Hostile, RunResult]]) -> None:
    for name in ("fake_pass_exit0", "fake_pass_sys_exit"):
        result = outcomes[name][1]
        assert result.exit_code == 0 and "without the pass token" in result.detail


def test_a_segfault_is_a_signal_death(outcomes: dict[str, tuple[Hostile, RunResult]]) -> None:
    assert outcomes["segfault"][1].exit_code == 128 + 11
