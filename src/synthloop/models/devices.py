"""Where a model runs and in what precision: ``device: auto | cpu | cuda | mps`` and
``dtype: float32 | bfloat16 | float16`` of the Hugging Face and diffusion plug-ins.

The CPU is the default everywhere (tests, examples); ``auto`` takes CUDA, else Apple's MPS, else the
CPU. A device this machine lacks is a one-line error naming it, not a crash inside torch. float16 on
a CPU is refused: CPU kernels emulate it, about a hundred times slower than bfloat16.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(ValueError):
    """A device or dtype this machine cannot give; the message is one line starting with the setting."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's ``device``; DeviceError (one line) if it is not here.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name not in DEVICES:
        raise DeviceError(f"device: unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device: cuda is not available here (torch {torch.__version__} sees no CUDA GPU); "
                         f"use device: cpu or auto")
    if name == "mps" and not _mps_available():
        raise DeviceError("device: mps is not available here (no Apple GPU backend); use device: cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for a config's ``dtype`` on ``device`` (float16 refused on the CPU).

    >>> resolve_dtype("bfloat16", torch.device("cpu"))
    torch.bfloat16
    """
    if name not in DTYPES:
        raise DeviceError(f"dtype: unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    if name == "float16" and device.type == "cpu":
        raise DeviceError("dtype: float16 on the CPU is about a hundred times slower than bfloat16; "
                         "use dtype: bfloat16 or float32")
    return DTYPES[name]


def autocast(enabled: bool, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """bfloat16 mixed precision on ``device`` when enabled (weights keep their own dtype)."""
    if not enabled:
        return contextlib.nullcontext()
    kind = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(kind, dtype=torch.bfloat16)


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` (sampling on a GPU needs a generator there) seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)
