"""What the built-in tasks' metrics mean and where they can lie, for the table and the plots.

A confidence interval of a mean over few seeds (two give a Student-t factor of 12.7) easily
reaches past what the metric can be: a negative lower bound for a gap that is never negative, an
accuracy above 1. The interval of a mean of values in [a, b] can be cut to [a, b] without losing
any coverage (the mean lies there), so tables and plots clamp it to the metric's range.

Ranges and notes go by the metric's name, as the tasks report them (``tasks/gaussian.py``,
``tasks/math.py``, ``tasks/digits.py``): a name not listed has no range and no note.
"""

from __future__ import annotations

import math
import re

UNBOUNDED = (-math.inf, math.inf)

#: metric name (a full-match regular expression) -> the range its values lie in.
RANGES: tuple[tuple[str, tuple[float, float]], ...] = (
    (r"gap|distance|psnr_sd|.*tokens|.*loss", (0.0, math.inf)),
    (r"accuracy(/.*)?|.*_rate|reward|pass_rate", (0.0, 1.0)),
)

#: metric name -> what it measures, one clause, for the captions under the plots.
NOTES: dict[str, str] = {
    "gap": "the optimal expected reward minus the model's expected reward: 0 at the optimum, never negative",
    "reward": "the model's expected reward exp(-||x||^2 / 2), at most 1",
    "distance": "the distance from the model's mean to the optimum",
    "accuracy": "the share of held-out problems the model answers correctly, in [0, 1]",
    "error_rate": "the share of held-out answers the verifier could not judge (ERROR verdicts)",
    "psnr": "the peak signal-to-noise ratio of denoised held-out images, in dB",
}


def metric_range(name: str) -> tuple[float, float]:
    """The interval ``name``'s values lie in (``UNBOUNDED`` if the name is not known).

    >>> metric_range("gap"), metric_range("accuracy/add3"), metric_range("psnr")
    ((0.0, inf), (0.0, 1.0), (-inf, inf))
    """
    return next((bounds for pattern, bounds in RANGES if re.fullmatch(pattern, name)), UNBOUNDED)


def clamp_interval(low: float, high: float, name: str) -> tuple[float, float]:
    """The interval ``[low, high]`` cut to the range of metric ``name`` (NaN ends stay NaN).

    >>> clamp_interval(-0.05, 0.12, "gap"), clamp_interval(0.4, 1.3, "accuracy")
    ((0.0, 0.12), (0.4, 1.0))
    """
    lowest, highest = metric_range(name)
    return (low if math.isnan(low) else min(max(low, lowest), highest),
            high if math.isnan(high) else max(min(high, highest), lowest))


def metric_note(name: str) -> str | None:
    """What metric ``name`` measures, if it is one of the built-in tasks' (``accuracy/add3`` is an accuracy).

    >>> metric_note("accuracy/add3")
    "the share of held-out problems the model answers correctly, in [0, 1] (level 'add3')"
    """
    base, _, level = name.partition("/")
    note = NOTES.get(base)
    return None if note is None else note + (f" (level {level!r})" if level else "")
