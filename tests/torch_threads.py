"""One torch thread for a test module: import ``one_thread`` into it (an autouse fixture).

Tiny models are all small matmuls and convolutions: one thread beats two (OpenMP threads spin and,
on a busy machine, wait on each other at every operation).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
