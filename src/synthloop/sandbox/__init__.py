"""Running untrusted programs (model-written code and its unit tests) where they cannot hurt the host.

:class:`Sandbox` runs a Python program inside bubblewrap namespaces (user, pid, net, mount, ipc, uts)
as an unprivileged uid, under resource limits, a wall-clock timeout and an output cap; see
``docs/sandbox.md`` for what it isolates and what it does not. Only the standard library is used here.
"""

from synthloop.sandbox.limits import Limits
from synthloop.sandbox.runner import ISOLATIONS, RunResult, Sandbox, new_token

__all__ = ["ISOLATIONS", "Limits", "RunResult", "Sandbox", "new_token"]
