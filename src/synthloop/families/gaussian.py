"""The Gaussian task family (``task.kind: gaussian``): its config, planning usage and wiring.

No ML framework anywhere: the task, generator and learner are NumPy (``synthloop.tasks.gaussian``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from synthloop.configs import ConfigError, RunConfig, Strict, make_selector, validate_section
from synthloop.tasks.gaussian import GaussianGenerator, GaussianLearner, GaussianProblem, GaussianTask

if TYPE_CHECKING:
    from synthloop.loop import Components


MAX_DIM = 1000  # a chunk of draws is chunk_size x dim floats (65,536 x 1,000 is half a gigabyte)


class GaussianTaskConfig(Strict):
    kind: Literal["gaussian"]
    theta0: Annotated[list[float], Field(min_length=1, max_length=MAX_DIM)]
    dim: Annotated[int, Field(ge=1, le=MAX_DIM)] | None = None  # with a one-number theta0, repeat it dim times
    sigma: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    kappa: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0

    @model_validator(mode="after")
    def _dim_matches(self) -> GaussianTaskConfig:
        if self.dim is not None and len(self.theta0) not in (1, self.dim):
            raise ValueError(f"theta0 has {len(self.theta0)} coordinates but dim is {self.dim}")
        return self

    def theta(self) -> tuple[float, ...]:
        if self.dim is not None and len(self.theta0) == 1:
            return tuple(self.theta0 * self.dim)
        return tuple(self.theta0)


class GaussianLearnerConfig(Strict):
    kind: Literal["mle", "gradient"] = "mle"
    step: Annotated[float, Field(gt=0, le=2)] = 1.0  # lambda = eta / sigma^2 (gradient only)


@dataclass(frozen=True)
class GaussianSettings:
    task: GaussianTaskConfig
    learner: GaussianLearnerConfig


class GaussianFamily:
    def validate(self, config: RunConfig) -> GaussianSettings:
        task = validate_section(config.task, GaussianTaskConfig, "task")
        learner = validate_section(config.learner, GaussianLearnerConfig, "learner")
        for section in ("model", "generator"):
            if getattr(config, section) is not None:
                raise ConfigError(f"{section}: the gaussian task takes no {section} section")
        if learner.kind == "mle" and learner.step != 1.0:
            raise ConfigError("learner.step: only the gradient learner takes a step (mle is step 1)")
        return GaussianSettings(task=task, learner=learner)

    def usage_per_draw(self, settings: GaussianSettings) -> Mapping[str, float]:
        return {"samples": 1.0}

    def usage_per_example(self, settings: GaussianSettings) -> Mapping[str, float]:
        return {"samples": 1.0}

    def schedule_defaults(self, settings: GaussianSettings) -> dict[str, float]:
        return {"sigma": settings.task.sigma, "kappa": settings.task.kappa}

    def build(self, config: RunConfig, settings: GaussianSettings) -> Components:
        from synthloop.loop import Components

        problem = GaussianProblem(
            theta0=settings.task.theta(), sigma=settings.task.sigma, kappa=settings.task.kappa
        )
        return Components(
            task=GaussianTask(problem),
            generator=GaussianGenerator(),
            selector=make_selector(config.selector),
            learner=GaussianLearner(problem, step=settings.learner.step),
        )


FAMILY = GaussianFamily()
