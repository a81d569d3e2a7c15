"""A generator whose worker process dies once, mid-part, for the Ray fan-out tests.

It lives in its own module (not in a test file) because Ray actors import it by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthloop.protocols import Generator
from synthloop.records import Candidates, Prompts


@dataclass(frozen=True)
class DiesOnce:
    """``inner``, except that the shard that brings the count of shards (kept in ``calls``) to ``at``
    or more ends its process while ``trigger`` exists: the first to remove ``trigger`` dies."""

    inner: Generator
    calls: Path
    trigger: Path
    at: int

    def max_usage_per_draw(self) -> Mapping[str, float]:
        return self.inner.max_usage_per_draw()

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        with open(self.calls, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        if len(self.calls.read_text().splitlines()) >= self.at:
            try:
                self.trigger.unlink()
            except FileNotFoundError:
                pass
            else:
                os._exit(1)  # the worker dies in the middle of its shard, as a crash would
        return self.inner.generate(model, prompts, rng=rng)


@dataclass(frozen=True)
class AlwaysDies:
    """A generator whose every call ends its process: a shard that can never be done."""

    def max_usage_per_draw(self) -> Mapping[str, float]:
        return {"samples": 1.0}

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        os._exit(1)
