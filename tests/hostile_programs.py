"""Hostile programs for the sandbox tests: each tries one way out, and says what must hold after.

Every program is a plain Python source; the test appends the pass token print (as the HumanEval
harness does), runs it in the sandbox and checks from the host: the status, that no canary path
appeared, that nothing with the case's marker survives, that the loopback listener saw nothing and
that no host variable leaked into the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hostile:
    name: str
    source: str
    statuses: frozenset[str]  # acceptable statuses (never "error": the sandbox did start)
    canaries: tuple[str, ...] = ()  # host paths that must not exist afterwards
    stdout_must: str = ""  # a string the output must show (the attack ran and was refused)
    hidden: tuple[str, ...] = field(default_factory=tuple)  # strings that must not appear in the output


FAILED = frozenset({"failed"})
PASSED = frozenset({"passed"})
TIMEOUT = frozenset({"timeout"})


def write_attempt(path: str) -> str:
    return f"open({path!r}, 'w').write('escaped')\n"


def hostile_programs(*, marker: str, port: int, repo: str, secret: str, host_pid: int) -> list[Hostile]:
    """The cases; ``marker`` names their files and processes, ``port`` is the host listener,
    ``repo`` the repository folder, ``secret`` a canary value set in the host's environment,
    ``host_pid`` the test process (the one that started the sandbox)."""
    canary = {where: f"{where.rstrip('/')}/{marker}-{where.strip('/').replace('/', '-') or 'root'}"
              for where in ("/root", "/etc", "/usr", "/tmp", repo)}
    # /tmp inside is the work folder: writing there works, and the host's /tmp must not change
    writes = [Hostile(f"write_{name}", write_attempt(path), PASSED if name == "host_tmp" else FAILED,
                      canaries=(path,))
              for name, path in zip(("root", "etc", "usr", "host_tmp", "repository"), canary.values(), strict=True)]
    return [
        Hostile("infinite_loop", "while True:\n    pass\n", TIMEOUT),
        Hostile("sleep", "import time\ntime.sleep(120)\n", TIMEOUT),
        Hostile("sigterm_ignorer", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)\n", TIMEOUT),
        Hostile("memory_bomb", "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))\n",
                frozenset({"memory"})),
        Hostile("memory_bomb_at_once", "blocks = [0] * 10**10\n", frozenset({"memory"})),
        Hostile("fork_bomb", FORK_BOMB.format(marker=marker), TIMEOUT),
        Hostile("thread_bomb", THREAD_BOMB, frozenset({"failed", "memory"}), stdout_must="threads:"),
        *writes,
        Hostile("read_shadow", "print(open('/etc/shadow').read())\n", FAILED, hidden=("root:",)),
        Hostile("read_ssh", "import os\nfor p in ('/root/.ssh', os.path.expanduser('~/.ssh')):\n"
                "    print(os.listdir(p))\n", FAILED),
        Hostile("read_environment", READ_ENVIRONMENT, PASSED, stdout_must="environ-read", hidden=(secret,)),
        Hostile("connect_host_listener", f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 2)\n",
                FAILED),
        Hostile("disk_flood", "with open('/sandbox/flood', 'wb') as f:\n    while True:\n"
                "        f.write(bytes(2**20))\n", FAILED),
        Hostile("tmp_flood", "i = 0\nwhile True:\n    open(f'/tmp/flood-{i}', 'wb').write(bytes(2**20))\n"
                "    i += 1\n", FAILED),
        Hostile("kill_parent", KILL_PARENT.format(host_pid=host_pid), PASSED,
                stdout_must=f"refused {host_pid} 3\nrefused -1 3"),
        Hostile("shell_subprocess", SHELL.format(canary=canary["/root"]), PASSED, canaries=(canary["/root"],),
                stdout_must="shell-ran"),
        Hostile("double_fork_daemon", DAEMON.format(marker=marker, path=canary["/tmp"]), PASSED,
                canaries=(canary["/tmp"],)),
        Hostile("fake_pass_exit0", "import os\nos._exit(0)\nassert False\n", FAILED),
        Hostile("fake_pass_sys_exit", "import sys\nsys.exit(0)\nassert False\n", FAILED),
        Hostile("stdout_flood", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", FAILED),
        Hostile("ptrace_mount_unshare", PRIVILEGED, PASSED, stdout_must="refused: ptrace mount unshare"),
        Hostile("fd_exhaustion", FD_EXHAUSTION, PASSED, stdout_must="descriptors stopped at"),
        Hostile("segfault", "import ctypes\nctypes.string_at(0)\n", FAILED),
    ]


FORK_BOMB = """\
import os, time
# each child keeps forking; argv of the children is the interpreter's, so also spawn marked sleepers
while True:
    try:
        if os.fork() == 0:
            os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 60; : {marker}'])
    except OSError:
        time.sleep(0.001)
"""

KILL_PARENT = """\
import os, signal
for pid in ({host_pid}, -1):  # the host process that started us, then everything we may signal
    try:
        os.kill(pid, signal.SIGKILL)
        print('killed', pid)
    except OSError as e:
        print('refused', pid, e.errno)
"""

THREAD_BOMB = """\
import threading, time
threads = []
try:
    while True:
        t = threading.Thread(target=time.sleep, args=(60,), daemon=True)
        t.start()
        threads.append(t)
finally:
    print('threads:', len(threads), flush=True)
"""

READ_ENVIRONMENT = """\
import os
print(dict(os.environ))
for pid in os.listdir('/proc'):
    if pid.isdigit():
        try:
            print(pid, open(f'/proc/{pid}/environ', 'rb').read())
        except OSError as e:
            print(pid, e)
print('environ-read')
"""

SHELL = """\
import subprocess
out = subprocess.run(['/bin/sh', '-c', 'echo shell-ran; id; echo x > {canary}; ls /'], capture_output=True, text=True)
print(out.stdout, out.stderr)
"""

DAEMON = """\
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 3; echo late > {path}; sleep 60; : {marker}'])
    os._exit(0)
time.sleep(0.2)
print('daemon started')
"""

PRIVILEGED = """\
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
refused = []
if libc.ptrace(16, 1, 0, 0) != 0:  # PTRACE_ATTACH to the namespace's init
    refused.append('ptrace')
if libc.mount(b'tmpfs', b'/usr', b'tmpfs', 0, None) != 0:
    refused.append('mount')
if subprocess.run(['/usr/bin/unshare', '--user', '--map-root-user', 'true'], capture_output=True).returncode != 0:
    refused.append('unshare')
print('refused:', ' '.join(refused))
assert refused == ['ptrace', 'mount', 'unshare'], refused
"""

FD_EXHAUSTION = """\
files = []
try:
    while True:
        files.append(open('/dev/null'))
except OSError as e:
    print('descriptors stopped at', len(files), e)
assert len(files) < 64
"""
