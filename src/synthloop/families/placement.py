"""The ``device`` and ``dtype`` settings every model section of the torch families shares."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from synthloop.strict import Strict


class Placement(Strict):
    """Where the model runs and the dtype of its weights (``synthloop.models.devices``).

    ``auto`` picks CUDA, else MPS, else the CPU when the model is built; a device that is not there
    is an error then. Mixed precision (bf16 autocast) is the generator's and learner's ``bf16``.
    """

    device: Literal["auto", "cpu", "cuda", "mps"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _no_float16_on_cpu(self) -> Placement:
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype: float16 on the CPU is about a hundred times slower than bfloat16; "
                             "use bfloat16 or float32")
        return self
