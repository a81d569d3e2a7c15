"""What the loop spends: a cost model, a ledger that enforces the total, and a planner.

The cost of a run is C = sum_t (c_g N_t + c_v V_t + c_t n_t) (Spend Wisely, section 2, with the
verification term added): N_t draws generated, V_t candidates verified, n_t selected samples trained
on. Each price may be per sample or per any other quantity the plug-ins measure (tokens, UNet
forward passes, FLOPs, seconds), so the budget is in whatever unit the user names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import numpy.typing as npt

from synthloop.records import IterationRecord, Usage
from synthloop.schedules import Schedule, constant
from synthloop.strict import MAX_ITERATIONS

STAGES = ("generate", "verify", "score", "label", "judge", "train", "diagnose")  # stages components declare
TOLERANCE = 1e-12  # relative slack for float summation order; anything larger is a real overspend
MEASURED = "seconds"  # the one quantity the loop measures itself, for every stage


class BudgetExceededError(RuntimeError):
    """A charge would take the run past its total budget (a bug in the caller: it must check first)."""


STAGE_SEPARATOR = ":"  # a generator reports "verify:samples" for the checks it runs itself (STaR)


def by_stage(usage: Mapping[str, float], default: str) -> dict[str, dict[str, float]]:
    """Split usage by the stage it is charged to: quantities named ``stage:quantity`` go to that
    stage, the others to ``default``.

    >>> by_stage({"tokens": 9.0, "verify:samples": 2.0}, "generate")
    {'generate': {'tokens': 9.0}, 'verify': {'samples': 2.0}}
    """
    split: dict[str, dict[str, float]] = {default: {}}
    for name, amount in usage.items():
        stage, _, quantity = name.rpartition(STAGE_SEPARATOR)
        split.setdefault(stage or default, {})[quantity] = amount
    return split


def check_priced(prices: Mapping[str, Mapping[str, float]], declared: Mapping[str, Mapping[str, float]]) -> None:
    """Every priced stage and quantity is one some component reports (``declared``: stage ->
    quantity -> usage bound per item); raise ``ValueError`` naming the first that is not.

    >>> check_priced({"generate": {"tokens": 1.0}}, {"generate": {"samples": 1.0}})
    Traceback (most recent call last):
    ...
    ValueError: budget.costs.generate.tokens: priced, but the generate stage reports only samples, seconds
    """
    for stage, rates in prices.items():
        if stage not in declared:
            raise ValueError(f"budget.costs.{stage}: no component of this run reports a {stage!r} stage; "
                             f"stages here: {', '.join(declared)}")
        for quantity, price in rates.items():
            if price > 0 and quantity != MEASURED and quantity not in declared[stage]:
                reported = ", ".join([*declared[stage], MEASURED])
                raise ValueError(f"budget.costs.{stage}.{quantity}: priced, but the {stage} stage reports "
                                 f"only {reported}")


@dataclass(frozen=True)
class CostModel:
    """Prices per stage: ``prices[stage][quantity]`` in budget units per unit of that quantity.

    >>> costs = CostModel(unit="samples", prices={"generate": {"samples": 0.1}, "train": {"samples": 1.0}})
    >>> costs.total("generate", {"samples": 1000.0})
    100.0
    """

    unit: str
    prices: Mapping[str, Mapping[str, float]]

    def __post_init__(self) -> None:
        for stage, rates in self.prices.items():
            for quantity, price in rates.items():
                if not (price >= 0 and math.isfinite(price)):
                    raise ValueError(f"price of {stage}/{quantity} must be >= 0, got {price}")

    def quantities(self, stage: str) -> list[str]:
        return [q for q, p in self.prices.get(stage, {}).items() if p > 0]

    def per_item(self, stage: str, usage: Usage, n: int) -> npt.NDArray[np.float64]:
        """Cost of each of ``n`` items whose per-item usage is ``usage``."""
        cost = np.zeros(n, dtype=np.float64)
        for quantity in self.quantities(stage):
            if quantity == "seconds":
                continue  # time is measured per batch, not per item; see ``total``
            if quantity not in usage:
                raise KeyError(
                    f"the cost model prices {stage} by {quantity!r}, but the {stage} stage reports "
                    f"only {sorted(usage) or 'nothing'}"
                )
            cost += self.prices[stage][quantity] * usage[quantity]
        return cost

    def total(self, stage: str, totals: Mapping[str, float]) -> float:
        """Cost of a stage from summed quantities (seconds included)."""
        return float(sum(self.prices[stage][q] * totals.get(q, 0.0) for q in self.quantities(stage)))

    def price(self, stage: str, quantity: str) -> float:
        return float(self.prices.get(stage, {}).get(quantity, 0.0))

    def per_unit(self, stage: str, usage_per_item: Mapping[str, float]) -> float:
        """Cost of one item whose usage is ``usage_per_item`` (seconds not priced per item)."""
        return float(
            sum(
                self.prices[stage][q] * usage_per_item.get(q, 0.0)
                for q in self.quantities(stage)
                if q != "seconds"
            )
        )


@dataclass
class LedgerRow:
    iteration: int
    stage: str
    items: int
    cost: float
    seconds: float
    quantities: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Ledger:
    """Measured spending per iteration and stage; refuses any charge past ``total``."""

    total: float
    costs: CostModel
    rows: list[LedgerRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._spent = math.fsum(row.cost for row in self.rows)
        self._seconds: dict[str, list[float]] = {}  # stage -> [seconds, items] over the run
        for row in self.rows:
            self._count(row)

    def _count(self, row: LedgerRow) -> None:
        totals = self._seconds.setdefault(row.stage, [0.0, 0.0])
        totals[0] += row.seconds
        totals[1] += row.items

    def seconds_cost_per_item(self, stage: str) -> float:
        """The measured time one item of ``stage`` has cost so far, in budget units (0 where the
        stage is not priced in seconds): what sizes the next part of a budget in seconds."""
        price = self.costs.price(stage, MEASURED)
        seconds, items = self._seconds.get(stage, (0.0, 0.0))
        return price * seconds / items if price > 0 and items > 0 else 0.0

    def rows_of(self, iteration: int) -> list[LedgerRow]:
        return [row for row in self.rows if row.iteration == iteration]

    @property
    def spent(self) -> float:
        return self._spent

    @property
    def remaining(self) -> float:
        return max(0.0, self.total - self.spent)

    def charge(
        self,
        iteration: int,
        stage: str,
        *,
        items: int,
        quantities: Mapping[str, float],
        seconds: float,
        note: str = "",
    ) -> float:
        """Record a stage's measured usage; return its cost.

        Time is known only once the work is done, so the part of a cost priced in seconds may take
        the run past its total (by at most that one charge: the loop then stops); any other
        overspend is a bug in the caller, which must check first, and raises.
        """
        missing = [q for q in self.costs.quantities(stage) if q != MEASURED and q not in quantities]
        if missing:
            raise ValueError(f"the cost model prices {stage} by {missing[0]!r}, but the {stage} stage "
                             f"reports only {sorted(quantities) or 'nothing'}")
        priced_ahead = self.costs.total(stage, {**quantities, MEASURED: 0.0})
        cost = self.costs.total(stage, {**quantities, MEASURED: seconds})
        if priced_ahead > 0 and self.spent + priced_ahead > self.total * (1 + TOLERANCE) + 1e-9:
            raise BudgetExceededError(
                f"iteration {iteration} {stage}: cost {cost:.6g} exceeds the remaining budget "
                f"{self.remaining:.6g} {self.costs.unit}"
            )
        if self.spent + cost > self.total * (1 + TOLERANCE) + 1e-9:
            note = note or "overrun: measured seconds"
        row = LedgerRow(iteration, stage, items, cost, seconds, dict(quantities), note)
        self.rows.append(row)
        self._count(row)
        self._spent += cost
        return cost

    def restore(self, rows: Iterable[LedgerRow]) -> None:
        """Append rows charged before a stop (read back from the run directory)."""
        for row in rows:
            self.rows.append(row)
            self._count(row)
            self._spent += row.cost


@dataclass(frozen=True)
class PlannedIteration:
    iteration: int
    n_selected: int
    expected_generated: float
    expected_cost: float
    cumulative_cost: float
    cut: bool = False  # n_selected was reduced from the schedule's value to fit the budget


@dataclass(frozen=True)
class UnitCosts:
    """Expected cost of one draw (generate + verify) and of training one selected sample."""

    per_draw: float
    per_selected: float

    def per_kept(self, draws_per_selected: float) -> float:
        return draws_per_selected * self.per_draw + self.per_selected


def plan(
    schedule: Schedule,
    *,
    budget: float,
    unit_costs: UnitCosts,
    acceptance_rate: float,
    max_iterations: int | None = None,
    start: int = 0,
) -> list[PlannedIteration]:
    """Per-iteration plan of n_t, expected N_t = n_t / a and cumulative cost, within ``budget``.

    Iterations continue until the budget, the schedule's own length or ``max_iterations`` ends them;
    the last iteration is cut to what the remaining budget affords.

    >>> from synthloop.schedules import constant
    >>> p = plan(constant(10), budget=35, unit_costs=UnitCosts(0.0, 1.0), acceptance_rate=0.5)
    >>> [(i.n_selected, i.cut) for i in p]
    [(10, False), (10, False), (10, False), (5, True)]
    """
    if not 0 < acceptance_rate <= 1:
        raise ValueError(f"acceptance_rate must be in (0, 1], got {acceptance_rate}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    per_kept = unit_costs.per_kept(1.0 / acceptance_rate)
    if per_kept <= 0:
        raise ValueError("every stage is free: a budget cannot bound this run (price some stage)")
    end = _end(schedule, max_iterations)
    rows: list[PlannedIteration] = []
    cumulative = 0.0
    t = start
    while end is None or t < end:
        n = schedule(t)
        cut = False
        if cumulative + n * per_kept > budget * (1 + TOLERANCE):
            n, cut = math.floor((budget - cumulative) / per_kept * (1 + TOLERANCE)), True
            if n < 1:
                break
        cost = n * per_kept
        cumulative += cost
        rows.append(PlannedIteration(t, n, n / acceptance_rate, cost, cumulative, cut))
        if cut:
            break
        t += 1
    return rows


def _end(schedule: Schedule, max_iterations: int | None) -> int | None:
    ends = [e for e in (schedule.n_iterations, max_iterations) if e is not None]
    return min(ends) if ends else None


def fit_n0(
    make: Callable[[float], Schedule],
    *,
    budget: float,
    unit_costs: UnitCosts,
    acceptance_rate: float,
    n_iterations: int,
) -> float:
    """The largest n0 whose schedule runs ``n_iterations`` full iterations within ``budget``.

    The schedule is scaled, not cut, so the family keeps its shape. Rounding and ``n_t >= 1`` make
    cost a step function of n0, so the root is found by bisection.
    """
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    per_kept = unit_costs.per_kept(1.0 / acceptance_rate)

    def cost(n0: float) -> float:
        s = make(n0)
        return math.fsum(per_kept * s(t) for t in range(n_iterations))

    if cost(1e-9) > budget:
        raise ValueError(
            f"the budget {budget:g} cannot pay for {n_iterations} iterations of even one sample each"
        )
    unit_shape = make(1.0)
    shape_sum = sum(unit_shape.fn(t) for t in range(n_iterations))
    lo, hi = 1e-9, 2.0 * budget / (per_kept * shape_sum) + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
        if hi - lo < 1e-9 * hi:
            break
    return lo


@dataclass(frozen=True)
class Planner:
    """Turns a schedule family and a budget into a plan, and re-fits it as a run measures.

    ``make(n0)`` builds the family's schedule. With ``n_iterations`` set, n0 is fitted so the plan
    uses the whole budget in that many iterations; otherwise ``n0`` is used as given and the run
    lasts until the budget is spent (or ``max_iterations``).
    """

    make: Callable[[float], Schedule]
    budget: float
    unit_costs: UnitCosts
    acceptance_rate: float
    n0: float | None = None
    n_iterations: int | None = None
    max_iterations: int | None = None

    def schedule(self) -> Schedule:
        return self._schedule

    @cached_property
    def _schedule(self) -> Schedule:
        if self.n_iterations is None:
            if self.n0 is None:
                raise ValueError("give n0, or n_iterations so that n0 can be fitted to the budget")
            return self.make(self.n0)
        n0 = fit_n0(
            self.make,
            budget=self.budget,
            unit_costs=self.unit_costs,
            acceptance_rate=self.acceptance_rate,
            n_iterations=self.n_iterations,
        )
        return self.make(n0)

    def plan(self) -> list[PlannedIteration]:
        end = self.n_iterations if self.n_iterations is not None else self.max_iterations
        return plan(
            self.schedule(),
            budget=self.budget,
            unit_costs=self.unit_costs,
            acceptance_rate=self.acceptance_rate,
            max_iterations=end,
        )

    def observe(self, record: IterationRecord) -> None:
        """A fixed family learns nothing from a record beyond acceptance and unit costs (``refit``)."""

    def refit(
        self, *, next_iteration: int, spent: float, acceptance_rate: float, unit_costs: UnitCosts | None = None
    ) -> list[PlannedIteration]:
        """The plan for iterations ``next_iteration..`` given what is spent and measured so far.

        With a fixed number of iterations, the remaining schedule is rescaled to use the remaining
        budget; otherwise the same schedule runs until the remaining budget is spent.
        """
        measured = replace(
            self,
            acceptance_rate=min(1.0, max(acceptance_rate, 1e-6)),
            unit_costs=unit_costs or self.unit_costs,
        )
        remaining = max(0.0, self.budget - spent)
        base = measured.schedule() if self.n_iterations is None else self.schedule()
        end = self.n_iterations if self.n_iterations is not None else self.max_iterations
        if self.n_iterations is not None and next_iteration < self.n_iterations:
            base = _rescaled_tail(base, measured, remaining, next_iteration, self.n_iterations)
        rows = plan(
            base,
            budget=remaining,
            unit_costs=measured.unit_costs,
            acceptance_rate=measured.acceptance_rate,
            max_iterations=end,
            start=next_iteration,
        )
        return [replace(r, cumulative_cost=r.cumulative_cost + spent) for r in rows]


def _rescaled_tail(
    base: Schedule, measured: Planner, remaining: float, start: int, end: int
) -> Schedule:
    per_kept = measured.unit_costs.per_kept(1.0 / measured.acceptance_rate)
    planned = sum(base.fn(t) for t in range(start, end))
    if planned <= 0:
        return base

    def fits(scale: float) -> bool:
        tail = _scaled(base, scale)
        return per_kept * sum(tail(t) for t in range(start, end)) <= remaining * (1 + TOLERANCE)

    # Rounding makes cost a step function of the scale: take the largest scale that fits.
    lo, hi = 0.0, remaining / (per_kept * planned)
    if fits(hi):
        return _scaled(base, hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return _scaled(base, lo)


def _scaled(base: Schedule, scale: float) -> Schedule:
    return Schedule(lambda t: scale * base.fn(t), f"{base.label} x{scale:.3g}")


# -- the adaptive schedule: n_t from measured statistics, one scale-free tolerance -----------------

UPDATE_VARIANCE, UPDATE_NORM2 = "update_variance", "update_norm2"  # keys of a record's update_statistics
UPDATE_DOT = "update_dot_previous"  # optional: <mean update, previous mean update>


def norm_test_size(variance: float, norm2: float, tolerance: float) -> float:
    """The sample size the norm test asks for: Var / (theta^2 ||g||^2) (Byrd, Chin, Nocedal, Wu 2012).

    ``variance`` is the summed per-coordinate variance of the per-sample updates, ``norm2`` the
    squared norm of their mean; then the sampling error of the mean update is at most ``tolerance``
    times its length. No signal (``norm2 == 0``) asks for infinitely many.

    >>> norm_test_size(4.0, 1.0, 0.5)
    16.0
    >>> norm_test_size(1.0, 0.0, 0.5)
    inf
    """
    if not (variance >= 0 and norm2 >= 0 and tolerance > 0):
        raise ValueError(f"need variance >= 0, norm2 >= 0, tolerance > 0; got {variance}, {norm2}, {tolerance}")
    return math.inf if norm2 == 0 else variance / (tolerance**2 * norm2)


def acceptance_lower_bound(accepted: int, drawn: int, z: float = 1.96) -> float:
    """Wilson score lower bound on an acceptance rate: planning draws with it rarely under-plans.

    >>> round(acceptance_lower_bound(50, 100), 3)
    0.404
    """
    if drawn <= 0:
        raise ValueError("no draws to bound an acceptance rate with")
    p, n = accepted / drawn, drawn
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max((centre - spread) / (1 + z * z / n), 1e-6)


@dataclass(frozen=True)
class Measured:
    """What the adaptive planner keeps of one iteration (its whole state, one entry per iteration)."""

    n_selected: int
    variance: float | None
    norm2: float | None
    accepted: int
    generated: int
    dot: float | None = None  # inner product with the previous iteration's mean update, when reported


@dataclass
class AdaptivePlanner:
    """n_t from a contraction model fitted to the measured update statistics, one tolerance.

    Rule (derivation in ``docs/adaptive.md``), from the records' ``update_variance`` V,
    ``update_norm2`` y = ||mean update||^2 and, optionally, ``update_dot_previous`` only:
      *learning*: the pilot size ``n0`` is kept while the last iteration passed the norm test at
      ``tolerance`` (sampling error of the mean update below ``tolerance`` times its length: the
      update norms still measure the contraction, not noise), and for at least three iterations;
      *then*: the per-iteration contraction rho and the initial squared error P0 are fitted by
      maximum likelihood to the learning iterations (``fit_contraction``); where the records carry
      ``update_dot_previous`` (<g_t, g_{t-1}>), rho is instead regressed on every pair of successive
      updates so far (``regressed_contraction``, first-order informative at any growth); the current squared
      error P_t is predicted forward, and n_t is the first step of the budget-optimal remaining plan
      for that model (``remaining_plan``: n_t = V / (rho (1 - rho) P_t) away from the budget's end);
      if the norms' fit finds no contraction (rho at the top of its grid), the regressed rho is used
      with P0 refitted at it, or, without inner products, the pilot size is kept;
      draws are planned with a Wilson lower bound on the measured acceptance rate; no iteration is
      planned below ``min_size``, the smallest update the learner makes and measures (a family's
      ``smallest_update``: the contraction model assumes every iteration moves the model, and one
      that fills no optimizer step moves nothing and reports nothing; at least 2); an iteration that
      would leave less than ``min_size`` kept samples takes the rest of the budget.
    *Fixed steps* (``fixed_steps``: the learner takes a fixed number of optimizer steps per kept
    sample, one pass, each step on fresh samples, as the digits learner does): under the model in
    ``docs/adaptive.md`` a larger iteration lowers no update's noise, it only trains longer on data
    an older model made, and the contraction per optimizer step is largest at one step per
    iteration. So n_t is fixed at ``min_size`` (the learner's step), the statistics are not read
    and this reduces to the constant schedule of one step: only the end differs (the rest of the
    budget joins the last iteration instead of making one that trains nothing; with
    ``max_iterations`` the rest is spread evenly over the iterations left, the least growth the
    bound allows). The number of iterations depends on the measured acceptance rate.
    Iteration 0's pilot defaults to ceil(sqrt(budget / cost per kept sample)). State = one
    ``Measured`` per observed iteration, rebuilt by ``observe`` from committed records on resume
    (or saved with ``to_json``), so a resumed run plans exactly what an uninterrupted one would.
    """

    budget: float
    unit_costs: UnitCosts
    acceptance_rate: float
    tolerance: float = 0.5
    n0: float | None = None
    max_iterations: int | None = None
    z: float = 1.96
    min_size: int = 2
    fixed_steps: bool = False
    observed: dict[int, Measured] = field(default_factory=dict)
    adapts = True

    def __post_init__(self) -> None:
        if not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a positive finite number, got {self.tolerance}")
        if self.min_size < 2:
            raise ValueError(f"min_size must be at least 2 (an iteration's mean update needs two samples), "
                             f"got {self.min_size}")
        if self.unit_costs.per_kept(1.0 / max(self.acceptance_rate, 1e-6)) <= 0:
            raise ValueError("every stage is free: a budget cannot bound this run (price some stage)")

    @property
    def pilot(self) -> int:
        if self.fixed_steps:
            return self.min_size
        per_kept = self.unit_costs.per_kept(1.0 / self.acceptance_rate)
        return max(self.min_size,
                   round(self.n0 if self.n0 is not None else math.ceil(math.sqrt(self.budget / per_kept))))

    def schedule(self) -> Schedule:
        """The known prefix as a schedule: the pilot (later sizes are not known before the run)."""
        pilot = constant(self.pilot)
        if self.fixed_steps:
            return Schedule(pilot.fn, f"adaptive(fixed steps, {self.min_size} an iteration)", n_iterations=1)
        return Schedule(pilot.fn, f"adaptive(tolerance={self.tolerance:g}, pilot={self.pilot})", n_iterations=1)

    def describe(self) -> str:
        if self.fixed_steps:
            return (f"adaptive, fixed-steps learner: n_t is fixed at its smallest update, {self.min_size} kept "
                    "samples (a larger one lowers no update's noise and trains longer on staler data: the constant "
                    "schedule of one step), the last iteration taking the budget's rest")
        return (f"adaptive: the pilot size {self.pilot} is kept while the norm test (tolerance "
                f"{self.tolerance:g}) passes on the measured update statistics; then each n_t is the first step "
                "of the budget-optimal plan for the contraction fitted to them, with the budget left and a "
                "lower confidence bound on the measured acceptance rate"
                + (f"; never below {self.min_size} kept samples, the smallest update the learner makes and "
                   "measures" if self.min_size > 2 else ""))

    def plan(self) -> list[PlannedIteration]:
        """The first iteration; for a fixed-steps learner, the whole plan at the expected acceptance
        (at most ``MAX_ITERATIONS`` + 1 rows)."""
        rows = self.refit(next_iteration=0, spent=0.0, acceptance_rate=self.acceptance_rate)
        if not self.fixed_steps:
            return rows
        while rows and len(rows) <= MAX_ITERATIONS and (more := self.refit(
                next_iteration=len(rows), spent=rows[-1].cumulative_cost, acceptance_rate=self.acceptance_rate)):
            rows.extend(more)
        return rows

    def observe(self, record: IterationRecord) -> None:
        train = record.update_statistics
        self.observed[record.iteration] = Measured(
            record.n_selected, _finite(train.get(UPDATE_VARIANCE)), _finite(train.get(UPDATE_NORM2)),
            record.n_accepted, record.n_generated, _finite(train.get(UPDATE_DOT)))

    def refit(
        self, *, next_iteration: int, spent: float, acceptance_rate: float, unit_costs: UnitCosts | None = None
    ) -> list[PlannedIteration]:
        """The next iteration only: later sizes depend on what it will measure."""
        if self.max_iterations is not None and next_iteration >= self.max_iterations:
            return []
        last = self.observed.get(next_iteration - 1)
        rate = acceptance_rate
        if last is not None and last.generated > 0:
            rate = min(rate, acceptance_lower_bound(last.accepted, last.generated, self.z))
        per_kept = (unit_costs or self.unit_costs).per_kept(1.0 / min(1.0, max(rate, 1e-6)))
        remaining = max(0.0, self.budget - spent)
        affordable = math.floor(remaining / per_kept * (1 + TOLERANCE))
        wanted = self._wanted(next_iteration, affordable)
        final = self.max_iterations is not None and next_iteration == self.max_iterations - 1
        n, cut = int(min(wanted, affordable)), wanted > affordable
        if final or affordable - n < self.min_size:
            n = affordable  # what would be left could not make an iteration: spend the rest now
        if n < 1:
            return []
        return [PlannedIteration(next_iteration, n, n / rate, n * per_kept, spent + n * per_kept, cut)]

    def _history(self, upto: int) -> list[Measured]:
        """The observed iterations before ``upto`` that carry usable statistics, in order. One without
        (a learner that took no step, such as the digits learner before a batch fills) moved nothing,
        so the contraction model skips it."""
        out = []
        for t in range(upto):
            m = self.observed.get(t)
            if m is not None and _usable(m):
                out.append(m)
        return out

    def _wanted(self, t: int, affordable: int) -> float:
        if self.fixed_steps:
            left = None if self.max_iterations is None else self.max_iterations - t
            return float(self.min_size if not left else max(self.min_size, math.ceil(affordable / left)))
        history = self._history(t)
        if not history:
            last = self.observed.get(t - 1)  # no statistics yet: keep the size (the constant schedule)
            return float(self.pilot if last is None else max(last.n_selected, self.pilot))
        learned = _learning_length(history, self.tolerance)
        if learned is None:
            return float(self.pilot)
        ns, vs, ys = (np.array([getattr(m, k) for m in history], dtype=np.float64)
                      for k in ("n_selected", "variance", "norm2"))
        rho, p0 = fit_contraction(ns[:learned], vs[:learned], ys[:learned])
        flat = rho >= RHO_GRID[-1]  # the norms showed no contraction
        pairs = self._pairs(t)
        if pairs:  # the inner products measure rho at any growth
            rho = regressed_contraction(*pairs)
            if flat:  # the norms' P0 was one of rho ~ 1: P0's maximum likelihood at the regressed rho
                _, p0 = fit_contraction(ns[:learned], vs[:learned], ys[:learned], rhos=np.array([rho]))
        elif flat:
            return float(self.pilot)  # no contraction seen and no inner products: no model, stay constant
        error = predicted_error(rho, p0, ns, vs)
        return max(float(self.min_size), round(remaining_plan(rho, error, float(vs[-1]), float(affordable))))

    def _pairs(self, upto: int) -> tuple[npt.NDArray[np.float64], ...] | None:
        """(dot_t, y_{t-1}, c_t, c_{t-1}) for each observed iteration before ``upto`` that reported its
        inner product with an observed previous update (c = V / n, the mean update's noise)."""
        rows = []
        for t in range(1, upto):
            m, before = self.observed.get(t), self.observed.get(t - 1)
            if m is None or before is None or m.dot is None or not _usable(m) or not _usable(before):
                continue
            assert m.variance is not None and before.variance is not None and before.norm2 is not None
            rows.append((m.dot, before.norm2, m.variance / m.n_selected, before.variance / before.n_selected))
        return tuple(np.array(col, dtype=np.float64) for col in zip(*rows, strict=True)) if rows else None

    def to_json(self) -> dict[str, object]:
        return {"tolerance": self.tolerance, "observed": {str(t): vars(m) for t, m in self.observed.items()}}

    def load_json(self, payload: Mapping[str, object]) -> None:
        observed = payload["observed"]
        assert isinstance(observed, Mapping)
        self.observed = {int(t): Measured(**m) for t, m in observed.items()}


def _usable(m: Measured) -> bool:
    return m.variance is not None and m.norm2 is not None and m.n_selected >= 2 and m.variance > 0


def _learning_length(history: list[Measured], tolerance: float, least: int = 3) -> int | None:
    """How many iterations the learning phase took: it ends after the first iteration (from the
    ``least``-th on) that fails the norm test; None while it goes on."""
    for t, m in enumerate(history):
        assert m.norm2 is not None and m.variance is not None
        if t + 1 >= least and m.norm2 * m.n_selected < m.variance / tolerance**2:
            return t + 1
    return None


RHO_GRID = np.linspace(0.01, 0.99, 99)  # contraction candidates
LOG_P0_GRID = np.linspace(-12.0, 12.0, 97)  # initial squared error, relative to the largest norm2


def fit_contraction(ns: npt.NDArray[np.float64], vs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64],
                    rhos: npt.NDArray[np.float64] = RHO_GRID) -> tuple[float, float]:
    """Maximum-likelihood (rho, P0) of the model e_{t+1} = rho e_t + noise of total variance V_t/n_t.

    Under it the mean update is g_t = (rho - 1) e_t + noise, so E||g_t||^2 = (1 - rho)^2 P_t + V_t/n_t
    with P_{t+1} = rho^2 P_t + V_t/n_t, P_0 = ||e_0||^2. Each y_t is taken as E||g_t||^2 times a
    chi-square over its degrees of freedom (a gamma law of fixed shape), whose log-likelihood is
    -(log mu_t + y_t / mu_t) up to the shape, which does not move the maximum; the maximum is found
    on a grid (deterministic, so a resumed run fits exactly what an uninterrupted one did).
    ``rhos``: the contraction candidates; a single value gives P0's maximum likelihood at that rho.

    >>> rng = np.random.default_rng(0)
    >>> ns = np.full(8, 200.0); vs = np.full(8, 2.0); e = np.array([3.0, 3.0]); ys = []
    >>> for n in ns:
    ...     new = 0.5 * e + rng.normal(0, 1 / np.sqrt(n), 2); ys.append(float((new - e) @ (new - e))); e = new
    >>> rho, p0 = fit_contraction(ns, vs, np.array(ys))
    >>> bool(0.4 < rho < 0.6), bool(10 < p0 < 30)
    (True, True)
    """
    steps = len(ns)
    c = vs / ns
    q = np.zeros((len(rhos), steps + 1))  # noise part of P_t for each rho
    for t in range(steps):
        q[:, t + 1] = rhos**2 * q[:, t] + c[t]
    decay = rhos[:, None] ** (2 * np.arange(steps))  # [rho, t]
    p0 = max(float(ys.max()), 1e-300) * np.exp(LOG_P0_GRID)  # [p0]
    p = decay[:, None, :] * p0[None, :, None] + q[:, None, :steps]  # [rho, p0, t]
    mu = (1 - rhos)[:, None, None] ** 2 * p + c
    deviance = np.sum(np.log(mu) + ys / mu, axis=-1)
    i, j = np.unravel_index(int(np.argmin(deviance)), deviance.shape)
    return float(rhos[i]), float(p0[j])


def regressed_contraction(dots: npt.NDArray[np.float64], before: npt.NDArray[np.float64],
                          noise: npt.NDArray[np.float64], noise_before: npt.NDArray[np.float64]) -> float:
    """rho from the successive mean updates, a first-order statistic informative at every growth.

    Under the model, g_t = (rho - 1) e_t + xi_t and e_t = e_{t-1} + g_{t-1}, so
    g_t = rho g_{t-1} + xi_t - xi_{t-1}: a regression of each update on the previous one whose noise
    is correlated with the regressor by E<xi_{t-1}, g_{t-1}> = c_{t-1}. Hence
    E[<g_t, g_{t-1}> + c_{t-1}] = rho E||g_{t-1}||^2 exactly, and each pair is weighted by the inverse
    of its residual variance per coordinate, c_t + c_{t-1}. The norms alone carry no first-order
    information on rho near the optimal growth (``docs/adaptive.md``); these inner products do.
    Clipped to the fit's grid range.

    >>> rng = np.random.default_rng(1); e = np.array([3.0, 3.0]); g_prev = None; rows = []
    >>> for _ in range(30):
    ...     new = 0.7 * e + rng.normal(0, 0.1, 2); g = new - e; e = new
    ...     if g_prev is not None: rows.append((g @ g_prev, g_prev @ g_prev, 0.02, 0.02))
    ...     g_prev = g
    >>> round(regressed_contraction(*map(np.array, zip(*rows))), 1)
    0.7
    """
    weight = 1.0 / (noise + noise_before)
    rho = float(np.sum(weight * (dots + noise_before)) / max(float(np.sum(weight * before)), 1e-300))
    return min(max(rho, float(RHO_GRID[0])), float(RHO_GRID[-2]))


def predicted_error(rho: float, p0: float, ns: npt.NDArray[np.float64], vs: npt.NDArray[np.float64]) -> float:
    """E||e_t||^2 after the iterations observed: P_{t+1} = rho^2 P_t + V_t / n_t from P_0 = p0.

    >>> predicted_error(0.5, 4.0, np.array([10.0]), np.array([1.0]))
    1.1
    """
    p = p0
    for n, v in zip(ns, vs, strict=True):
        p = rho**2 * p + v / n
    return float(p)


def remaining_plan(rho: float, error: float, variance: float, remaining: float) -> float:
    """The first n of the plan that minimises E||e_end||^2 with ``remaining`` kept samples left.

    With k iterations left, E||e_end||^2 = rho^(2k) P + V sum_j w_j^2 / n_j, w_j = rho^(k-1-j); under
    sum n_j = R the best split is n_j proportional to w_j (Cauchy-Schwarz: growth 1/rho, Spend
    Wisely's Theorem 3.1), worth rho^(2k) P + V ((1 - rho^k) / (1 - rho))^2 / R. The best k trades
    bias against noise; the first step is R (1 - rho) rho^(k-1) / (1 - rho^k), which for a continuous
    k is V / (rho (1 - rho) P): the norm test with tolerance^2 = rho / (1 - rho).

    >>> remaining_plan(0.5, 1e-9, 1.0, 100.0)  # no error left to remove: one last iteration
    100.0
    >>> round(remaining_plan(0.5, 1.0, 1.0, 1e6))  # far from the end: about V / (rho (1 - rho) P) = 4
    4
    """
    if remaining <= 0:
        return 0.0
    k = np.arange(1, 5001, dtype=np.float64)
    power = rho**k
    value = power**2 * error + variance * ((1 - power) / (1 - rho)) ** 2 / remaining
    best = float(k[int(np.argmin(value))])
    return min(remaining, remaining * (1 - rho) * rho ** (best - 1) / (1 - rho**best))


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


AnyPlanner = Planner | AdaptivePlanner  # what ``loop.run`` accepts
