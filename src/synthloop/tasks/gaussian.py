"""The Gaussian warm-up of Spend Wisely (Yang et al., 2025, section 3), where everything is exact.

Generator N(theta, sigma^2 I_d); reward R(x) = exp(-||x||^2 / (2 kappa^2)); update by maximum
likelihood (the mean of the kept draws) or by one gradient step on the negative log-likelihood
(section 4). Performance r(theta) = E_x[R(x)] and the expected final reward E[r(theta_T)] of any
schedule have closed forms (derivation in ``docs/gaussian.md``), so simulation can be checked against
theory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from synthloop.diagnostics.stage import View
from synthloop.records import Candidates, Prompts, Scores, Usage, ones_usage


@dataclass(frozen=True)
class GaussianModel:
    """The generator's parameters: draws are N(theta, sigma^2 I)."""

    theta: npt.NDArray[np.float64]
    sigma: float


@dataclass(frozen=True)
class GaussianProblem:
    """The setting: dimension from ``theta0``, generator spread ``sigma``, reward width ``kappa``."""

    theta0: tuple[float, ...]
    sigma: float = 1.0
    kappa: float = 1.0

    def __post_init__(self) -> None:
        if len(self.theta0) == 0:
            raise ValueError("theta0 needs at least one coordinate")
        if not (self.sigma > 0 and self.kappa > 0):
            raise ValueError(f"sigma and kappa must be > 0, got {self.sigma}, {self.kappa}")

    @property
    def dim(self) -> int:
        return len(self.theta0)

    @property
    def rho(self) -> float:
        """Mean of accepted draws is rho * theta: rho = kappa^2 / (sigma^2 + kappa^2)."""
        return self.kappa**2 / (self.sigma**2 + self.kappa**2)

    @property
    def accepted_variance(self) -> float:
        """Per-coordinate variance of an accepted draw: s^2 = sigma^2 kappa^2 / (sigma^2 + kappa^2)."""
        return self.sigma**2 * self.kappa**2 / (self.sigma**2 + self.kappa**2)

    @property
    def optimal_reward(self) -> float:
        """r* = (kappa / sqrt(sigma^2 + kappa^2))^d, reached at theta = 0."""
        return float((self.kappa / np.sqrt(self.sigma**2 + self.kappa**2)) ** self.dim)

    def reward_of(self, theta: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """r(theta) = r* exp(-||theta||^2 / (2 (sigma^2 + kappa^2))); theta may be [..., d]."""
        a = self.sigma**2 + self.kappa**2
        return self.optimal_reward * np.exp(-np.sum(np.square(theta), axis=-1) / (2 * a))

    def expected_final_reward(self, n_selected: Sequence[int], *, step: float = 1.0) -> float:
        """E[r(theta_T)] after T iterations that keep n_selected[t] draws each.

        ``step`` is lambda = eta / sigma^2 of the gradient update theta += lambda (mean - theta);
        lambda = 1 is maximum likelihood. With c = 1 - lambda (1 - rho), theta_T ~ N(m, v I) where
        m = c^T theta_0 and v = lambda^2 s^2 sum_t c^(2(T-1-t)) / n_t, so
        E[r(theta_T)] = (kappa / sqrt(a + v))^d exp(-||m||^2 / (2 (a + v))), a = sigma^2 + kappa^2.
        """
        counts = np.asarray(n_selected, dtype=np.float64)
        if np.any(counts < 1):
            raise ValueError("every iteration must keep at least one draw")
        c = 1.0 - step * (1.0 - self.rho)
        total = len(counts)
        powers = c ** (2.0 * (total - 1 - np.arange(total)))
        v = step**2 * self.accepted_variance * float(np.sum(powers / counts))
        m2 = c ** (2 * total) * float(np.sum(np.square(self.theta0)))
        a = self.sigma**2 + self.kappa**2
        return float((self.kappa / np.sqrt(a + v)) ** self.dim * np.exp(-m2 / (2 * (a + v))))


@dataclass(frozen=True)
class GaussianGenerator:
    """x ~ N(theta, sigma^2 I), vectorised."""

    def max_usage_per_draw(self) -> dict[str, float]:
        return {"samples": 1.0}

    def generate(self, model: GaussianModel, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        n = len(prompts)
        x = model.theta + model.sigma * rng.standard_normal((n, model.theta.shape[0]))
        return Candidates(samples={"x": x}, prompt_index=prompts.index, usage=ones_usage(n, samples=1))


@dataclass(frozen=True)
class GaussianVerifier:
    """R(x) = exp(-||x||^2 / (2 kappa^2)); verdict PASS where R(x) >= 1/2 (never ERROR)."""

    kappa: float

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        x = candidates.samples["x"]
        reward = np.exp(-np.einsum("ij,ij->i", x, x) / (2 * self.kappa**2))
        return Scores.from_rewards(reward)


class GaussianLearner:
    """theta <- theta + step (mean(kept) - theta): maximum likelihood at step 1, else section 4's
    one gradient step with lambda = eta / sigma^2. An iteration that kept nothing leaves theta."""

    def __init__(self, problem: GaussianProblem, *, step: float = 1.0) -> None:
        if not 0 < step <= 2:
            raise ValueError(f"step must be in (0, 2] for the update to be stable, got {step}")
        self.problem = problem
        self.step = step
        self.theta_ = np.asarray(problem.theta0, dtype=np.float64)
        self.statistics_: dict[str, float] = {}
        self.previous_: np.ndarray | None = None  # the last mean update, for the next one's inner product

    @property
    def model(self) -> GaussianModel:
        return GaussianModel(theta=self.theta_.copy(), sigma=self.problem.sigma)

    def training_usage(self, candidates: Candidates) -> Usage:
        return ones_usage(len(candidates), samples=1)

    def update(self, selected: Candidates, prompts: Prompts, *, rng: np.random.Generator) -> dict[str, float]:
        if len(selected) == 0:
            return {"moved": 0.0}
        x = selected.samples["x"]
        target = x.mean(axis=0)
        previous = self.theta_
        self.theta_ = previous + self.step * (target - previous)
        moved = self.theta_ - previous
        # per-sample updates step (x_i - theta): their summed variance and the squared norm of their
        # mean, the statistics the adaptive schedule's norm test reads; and its inner product with the
        # previous update, from which the schedule regresses the contraction (budget.regressed_contraction)
        self.statistics_ = {"update_norm2": float(moved @ moved)}
        if self.previous_ is not None:
            self.statistics_["update_dot_previous"] = float(moved @ self.previous_)
        self.previous_ = moved
        if len(x) > 1:
            self.statistics_["update_variance"] = self.step**2 * float(x.var(axis=0, ddof=1).sum())
        return {"moved": float(np.linalg.norm(moved))}

    def update_statistics(self) -> dict[str, float]:
        """The last update's per-sample statistics, for the adaptive schedule's norm test."""
        return dict(self.statistics_)

    def save(self, directory: Path) -> None:
        state: dict[str, object] = {"theta": self.theta_.tolist()}
        if self.previous_ is not None:
            state["previous_update"] = self.previous_.tolist()
        (directory / "theta.json").write_text(json.dumps(state))

    def load(self, directory: Path) -> None:
        state = json.loads((directory / "theta.json").read_text())
        self.theta_ = np.asarray(state["theta"])
        previous = state.get("previous_update")  # absent in checkpoints written before it was kept
        self.previous_ = None if previous is None else np.asarray(previous, dtype=np.float64)


class GaussianTask:
    """The warm-up as a task: unconditional prompts, exact evaluation (no sampling error)."""

    def __init__(self, problem: GaussianProblem) -> None:
        self.problem = problem

    @property
    def name(self) -> str:
        return f"gaussian-d{self.problem.dim}"

    @property
    def verifier(self) -> GaussianVerifier:
        return GaussianVerifier(kappa=self.problem.kappa)

    @property
    def primary_metric(self) -> str:
        return "gap"

    @property
    def higher_is_better(self) -> bool:
        return False

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return Prompts.unconditional(n)

    def evaluate(self, model: GaussianModel, *, rng: np.random.Generator) -> dict[str, float]:
        reward = float(self.problem.reward_of(model.theta))
        return {
            "reward": reward,
            "gap": self.problem.optimal_reward - reward,
            "distance": float(np.linalg.norm(model.theta)),
        }

    def diagnostic_view(self, candidates: Candidates, prompts: Prompts) -> View:
        return View(features=np.asarray(candidates.samples["x"], dtype=np.float64), space="raw x")

    def diagnostic_reference(self, n: int, *, rng: np.random.Generator) -> tuple[View, View]:
        """Anchor: what the initial model keeps, N(rho theta0, s^2 I); reference: what the best
        model keeps, N(0, s^2 I) (both exact: accepted draws of N(theta, sigma^2) are Gaussian)."""
        p = self.problem
        s = np.sqrt(p.accepted_variance)
        anchor = p.rho * np.asarray(p.theta0) + s * rng.standard_normal((n, p.dim))
        return View(anchor, space="raw x"), View(s * rng.standard_normal((n, p.dim)), space="raw x")

    def expected_acceptance(self, model: GaussianModel) -> float:
        """The acceptance rate of Algorithm 1 at ``model`` is exactly r(theta)."""
        return float(self.problem.reward_of(model.theta))
