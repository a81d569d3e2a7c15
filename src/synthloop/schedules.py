"""Budget schedules: how many samples to select (train on) at each iteration.

A schedule is a function ``iteration -> n_t`` (an ``int >= 1``), like an optax learning-rate
schedule. The families are those of Spend Wisely (Yang et al., 2025, section 4): constant,
polynomial (linear is the case alpha = 1) and exponential, plus an explicit list and the optimal
schedule of the Gaussian warm-up (Theorem 3.1).

Every factory takes the initial size ``n0`` as a float so a planner can rescale a family to use a
given budget; the schedule rounds to the nearest integer and never returns less than 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, model_validator

from synthloop.strict import MAX_ITERATIONS, MAX_SELECTED, Iterations, Strict


@dataclass(frozen=True)
class Schedule:
    """``n_t = schedule(t)``. ``n_iterations`` is set when the family itself has an end (a list)."""

    fn: Callable[[int], float]
    label: str
    n_iterations: int | None = None

    def __call__(self, iteration: int) -> int:
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        if self.n_iterations is not None and iteration >= self.n_iterations:
            raise IndexError(f"schedule {self.label} has only {self.n_iterations} iterations")
        return max(1, round(self.fn(iteration)))


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value}")


def constant(n0: float) -> Schedule:
    """n_t = n0.

    >>> s = constant(64)
    >>> [s(t) for t in range(4)]
    [64, 64, 64, 64]
    """
    _positive("n0", n0)
    return Schedule(lambda t: n0, f"constant(n0={n0:g})")


def linear(n0: float, slope: float | None = None) -> Schedule:
    """n_t = n0 + slope * t; the default slope n0 gives n_t = n0 (1 + t).

    >>> s = linear(10)
    >>> [s(t) for t in range(4)]
    [10, 20, 30, 40]
    >>> [linear(10, slope=5)(t) for t in range(3)]
    [10, 15, 20]
    """
    _positive("n0", n0)
    step = n0 if slope is None else slope
    if not (step >= 0 and math.isfinite(step)):
        raise ValueError(f"slope must be a non-negative finite number, got {step}")
    return Schedule(lambda t: n0 + step * t, f"linear(n0={n0:g}, slope={step:g})")


def polynomial(n0: float, alpha: float) -> Schedule:
    """n_t = n0 (1 + t)^alpha (Spend Wisely's polynomial family).

    >>> s = polynomial(10, alpha=2)
    >>> [s(t) for t in range(4)]
    [10, 40, 90, 160]
    """
    _positive("n0", n0)
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a non-negative finite number, got {alpha}")
    return Schedule(lambda t: n0 * (1 + t) ** alpha, f"polynomial(n0={n0:g}, alpha={alpha:g})")


def exponential(n0: float, growth: float) -> Schedule:
    """n_t = n0 (1 + growth)^t, growth > 0 (Spend Wisely's exponential family, u = growth).

    >>> s = exponential(64, growth=0.5)
    >>> [s(t) for t in range(4)]
    [64, 96, 144, 216]
    """
    _positive("n0", n0)
    _positive("growth", growth)
    return Schedule(
        lambda t: n0 * (1 + growth) ** t, f"exponential(n0={n0:g}, growth={growth:g})"
    )


def explicit(values: Sequence[int]) -> Schedule:
    """n_t = values[t]; the list's length is the number of iterations.

    >>> s = explicit([5, 8, 13])
    >>> [s(t) for t in range(3)], s.n_iterations
    ([5, 8, 13], 3)
    """
    if len(values) == 0:
        raise ValueError("an explicit schedule needs at least one value")
    if any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"explicit schedule values must be integers >= 1, got {list(values)}")
    fixed = tuple(int(v) for v in values)
    return Schedule(lambda t: fixed[t], f"explicit({list(fixed)})", n_iterations=len(fixed))


def gaussian_optimal(n0: float, sigma: float, kappa: float) -> Schedule:
    """n_t = n0 (1 + sigma^2 / kappa^2)^t: the optimal policy of Spend Wisely's Theorem 3.1.

    For generator N(theta, sigma^2) and reward exp(-x^2 / (2 kappa^2)) with maximum-likelihood
    updates, this minimises the variance of theta_T for a fixed total of selected samples.

    >>> s = gaussian_optimal(10, sigma=1.0, kappa=1.0)
    >>> [s(t) for t in range(4)]
    [10, 20, 40, 80]
    """
    _positive("sigma", sigma)
    _positive("kappa", kappa)
    growth = sigma**2 / kappa**2
    inner = exponential(n0, growth)
    return Schedule(
        inner.fn, f"gaussian_optimal(n0={n0:g}, sigma={sigma:g}, kappa={kappa:g})"
    )


# -- config: each kind's YAML model, beside its schedule ---------------------------------------

N0 = Annotated[float, Field(gt=0, le=MAX_SELECTED)] | Literal["auto"]
Make = Callable[[float], Schedule]


class _ScheduleConfig(Strict):
    n0: N0 = "auto"
    iterations: Iterations | None = None

    @model_validator(mode="after")
    def _auto_needs_iterations(self) -> _ScheduleConfig:
        if self.n0 == "auto" and self.iterations is None:
            raise ValueError("n0: 'auto' fits n0 to the budget and needs 'iterations' to be set")
        return self


class ConstantSchedule(_ScheduleConfig):
    """``schedule: {kind: constant, n0: auto, iterations: 8}``"""

    kind: Literal["constant"]

    def factory(self, defaults: Mapping[str, float]) -> Make:
        return constant


class LinearSchedule(_ScheduleConfig):
    """``schedule: {kind: linear, slope: 2.0, n0: 100}`` (slope defaults to n0)"""

    kind: Literal["linear"]
    slope: Annotated[float, Field(ge=0, le=MAX_SELECTED)] | None = None

    def factory(self, defaults: Mapping[str, float]) -> Make:
        return lambda n0: linear(n0, self.slope)


class PolynomialSchedule(_ScheduleConfig):
    """``schedule: {kind: polynomial, alpha: 2, n0: auto, iterations: 6}``"""

    kind: Literal["polynomial"]
    alpha: Annotated[float, Field(ge=0, le=100)]

    def factory(self, defaults: Mapping[str, float]) -> Make:
        return lambda n0: polynomial(n0, self.alpha)


class ExponentialSchedule(_ScheduleConfig):
    """``schedule: {kind: exponential, growth: 0.5, n0: auto, iterations: 6}``"""

    kind: Literal["exponential"]
    growth: Annotated[float, Field(gt=0, le=1000)]

    def factory(self, defaults: Mapping[str, float]) -> Make:
        return lambda n0: exponential(n0, self.growth)


class GaussianOptimalSchedule(_ScheduleConfig):
    """``schedule: {kind: gaussian_optimal}``: sigma and kappa default to the task's."""

    kind: Literal["gaussian_optimal"]
    sigma: Annotated[float, Field(gt=0)] | None = None
    kappa: Annotated[float, Field(gt=0)] | None = None

    def factory(self, defaults: Mapping[str, float]) -> Make:
        sigma = self.sigma or defaults.get("sigma")
        kappa = self.kappa or defaults.get("kappa")
        if sigma is None or kappa is None:
            raise ValueError("schedule: gaussian_optimal needs sigma and kappa (the task has none)")
        return lambda n0: gaussian_optimal(n0, sigma, kappa)


class ExplicitSchedule(Strict):
    """``schedule: {kind: explicit, values: [100, 200, 400]}``"""

    kind: Literal["explicit"]
    values: Annotated[list[Annotated[int, Field(ge=1, le=MAX_SELECTED)]],
                      Field(min_length=1, max_length=MAX_ITERATIONS)]

    def factory(self, defaults: Mapping[str, float]) -> Make:
        return lambda n0: explicit(self.values)


class AdaptiveSchedule(Strict):
    """``schedule: {kind: adaptive, tolerance: 0.5}``: n_t from a contraction model fitted to the
    measured per-sample update statistics (``budget.AdaptivePlanner``, derivation in
    ``docs/adaptive.md``): the pilot ``n0`` (auto: sqrt of the budget in kept samples) is kept while
    the norm test at ``tolerance`` passes (the update norms still measure the contraction), then each
    n_t is the first step of the budget-optimal plan for the fitted contraction. No growth base:
    ``tolerance`` is one scale-free number, the same for every task. ``updates`` says what the
    learner's update is: ``auto`` (the default) takes the family's declaration; ``fixed_steps`` (a
    fixed number of optimizer steps per kept sample, each on a fresh minibatch: every iteration is
    the learner's smallest update, the sizes do not grow) or ``refit`` (an update whose noise falls
    as V / n_t: the rule above) overrides it, for a learner the family cannot vouch for."""

    kind: Literal["adaptive"]
    tolerance: Annotated[float, Field(gt=0, le=10)] = 0.5
    n0: N0 = "auto"
    iterations: Iterations | None = None
    updates: Literal["auto", "fixed_steps", "refit"] = "auto"

    def factory(self, defaults: Mapping[str, float]) -> Make:
        return constant  # the pilot's family; the planner itself is built by ``configs.make_planner``


ScheduleConfig = Annotated[
    ConstantSchedule | LinearSchedule | PolynomialSchedule | ExponentialSchedule | GaussianOptimalSchedule
    | ExplicitSchedule | AdaptiveSchedule,
    Field(discriminator="kind"),
]
