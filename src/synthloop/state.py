"""State that survives a stop: the one protocol every stateful component of the loop implements.

The learner, the prompt policy, the selector, the training-set policy and anything else that carries
state across iterations save it into a folder of their own inside an iteration's checkpoint
(``iter-NNNN/checkpoint/<name>/``) and load it back from there on resume. A component restored with
``load`` must behave exactly as the one that called ``save``: same next output for the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """A component whose state is checkpointed with every committed iteration."""

    def save(self, directory: Path) -> None:
        """Write the full state into ``directory`` (which exists and is empty)."""
        ...

    def load(self, directory: Path) -> None:
        """Restore exactly the state ``save`` wrote into ``directory``."""
        ...
