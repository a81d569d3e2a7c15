"""``Strict``: the base of every config model, so every section reads YAML the same strict way.

It lives apart from :mod:`synthloop.configs` so that a component's module can keep its own config
model beside its code (``policies.py``, ``training_set.py``, ...) without importing the config edge.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synthloop.yamlio import shown

# Sanity bounds shared by every section: past these a run cannot finish.
MAX_ITERATIONS = 10_000
MAX_SELECTED = 10**9  # n_t, selected samples in one iteration
MAX_SEED = 2**32 - 1
MAX_COUNT = 10**7  # counts and sizes in a family's config: past ten million nothing finishes

Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Iterations = Annotated[int, Field(ge=1, le=MAX_ITERATIONS)]


class Strict(BaseModel):
    """Base of every config section: unknown keys are refused and values are checked, not coerced.

    No bool for a number, no string for a number, and floats are finite (NaN, ``.inf`` and ``1e309``
    are refused; a field that wants them says ``allow_inf_nan=True``); a YAML int is a valid float.
    YAML has no tuples or paths, so a list is read as a tuple and a string as a path (without control
    characters) for the fields that want those.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_forms(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {key: yaml_form(value, fields[key].annotation) if key in fields else value
                for key, value in data.items()}


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def yaml_form(value: Any, annotation: Any) -> Any:
    """``value`` as the field wants it, where YAML cannot say it: a list as a tuple, a str as a Path."""
    options = [_unannotated(option) for option in _union_options(annotation)]
    if isinstance(value, list) and any(typing.get_origin(o) is tuple for o in options):
        return tuple(value)
    if isinstance(value, str) and Path in options:
        if _CONTROL.search(value):
            raise ValueError(f"a path cannot hold control characters (got {shown(value)})")
        return Path(value)
    return value


def _union_options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _unannotated(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
