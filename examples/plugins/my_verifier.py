"""A verifier of your own for ``task.kind: data`` (``verifier: my_verifier:check``).

synthloop calls ``check(completion, reference)`` once per generated answer. Return ``True`` /
``False`` (reward 1 / 0) or a number in [0, 1] (it passes from ``pass_threshold`` up). An exception
is not a crash: the candidate gets an ERROR verdict whose detail is the exception's first line, it
is counted apart from the failures, and it is never kept for training.
"""

from __future__ import annotations

import re

_INTEGER = re.compile(r"-?\d+")


def check(completion: str, reference: str) -> bool:
    """The first integer of the completion equals the reference (an integer).

    >>> check(" 12 and more", "12"), check("-3", "3")
    (True, False)
    """
    found = _INTEGER.search(completion)
    if found is None:
        raise ValueError(f"no integer in the answer {completion.strip()[:30]!r}")
    return int(found.group()) == int(reference)


def partial_credit(completion: str, reference: str) -> float:
    """1 for the right number, 0.5 for one off by one, else 0 (rewards in [0, 1] are fine too)."""
    found = _INTEGER.search(completion)
    if found is None:
        raise ValueError("no integer in the answer")
    miss = abs(int(found.group()) - int(reference))
    return 1.0 if miss == 0 else 0.5 if miss == 1 else 0.0
