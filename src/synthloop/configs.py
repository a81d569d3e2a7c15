"""Run configs: YAML -> validated pydantic models -> plain objects for the loop.

The core sections (schedule, selector, budget, loop, eval, compare) are validated here. The
``task``, ``model``, ``generator`` and ``learner`` sections belong to a task family (Gaussian,
digits denoising, reasoning-gym math...): each family validates them with its own models in its
``*_config.py`` module, which imports no ML framework, so a bad config fails before anything loads.

A bad config raises :class:`ConfigError` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthloop import schedules
from synthloop.budget import STAGES, CostModel, Planner, UnitCosts, check_priced
from synthloop.loop import LoopSettings
from synthloop.policies import PromptPolicyConfig, UniformConfig, WeightedConfig
from synthloop.select import (
    Passed,
    RewardProportional,
    RewardProportionalWithoutReplacement,
    Threshold,
    TopK,
)
from synthloop.training_set import ThisIterationConfig, TrainingSetConfig

#: task kind -> module whose ``FAMILY`` object validates and builds that kind's components.
FAMILIES: dict[str, str] = {
    "gaussian": "synthloop.families.gaussian",
    "digits-denoise": "synthloop.families.digits",
    "math": "synthloop.families.math",
}

QUANTITIES = ("samples", "tokens", "prompt_tokens", "completion_tokens", "forward_passes", "flops", "seconds")


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Section(BaseModel):
    """A family-owned section: ``kind`` plus whatever the family's own model accepts."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# -- schedules ---------------------------------------------------------------------------------

N0 = Annotated[float, Field(gt=0, allow_inf_nan=False)] | Literal["auto"]


class _ScheduleBase(Strict):
    n0: N0 = "auto"
    iterations: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _auto_needs_iterations(self) -> _ScheduleBase:
        if self.n0 == "auto" and self.iterations is None and getattr(self, "kind", "") != "explicit":
            raise ValueError("n0: 'auto' fits n0 to the budget and needs 'iterations' to be set")
        return self


class ConstantSchedule(_ScheduleBase):
    kind: Literal["constant"]


class LinearSchedule(_ScheduleBase):
    kind: Literal["linear"]
    slope: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class PolynomialSchedule(_ScheduleBase):
    kind: Literal["polynomial"]
    alpha: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ExponentialSchedule(_ScheduleBase):
    kind: Literal["exponential"]
    growth: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class GaussianOptimalSchedule(_ScheduleBase):
    kind: Literal["gaussian_optimal"]
    sigma: Annotated[float, Field(gt=0)] | None = None  # default: the task's
    kappa: Annotated[float, Field(gt=0)] | None = None


class ExplicitSchedule(Strict):
    kind: Literal["explicit"]
    values: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]


ScheduleConfig = Annotated[
    ConstantSchedule
    | LinearSchedule
    | PolynomialSchedule
    | ExponentialSchedule
    | GaussianOptimalSchedule
    | ExplicitSchedule,
    Field(discriminator="kind"),
]


# -- selectors ---------------------------------------------------------------------------------


class RewardProportionalSelector(Strict):
    kind: Literal["reward_proportional"]


class ThresholdSelector(Strict):
    kind: Literal["threshold"]
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5


class PassedSelector(Strict):
    kind: Literal["passed"]


class TopKSelector(Strict):
    kind: Literal["top_k"]


class WithoutReplacementSelector(Strict):
    kind: Literal["reward_proportional_without_replacement"]


SelectorConfig = Annotated[
    RewardProportionalSelector
    | ThresholdSelector
    | PassedSelector
    | TopKSelector
    | WithoutReplacementSelector,
    Field(discriminator="kind"),
]


# -- budget, loop, eval, compare ---------------------------------------------------------------

Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class BudgetConfig(Strict):
    total: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    unit: str = "samples"
    costs: dict[str, Price | dict[str, Price]] = Field(
        default_factory=lambda: dict[str, float | dict[str, float]](generate=0.0, verify=0.0, train=1.0)
    )
    expected_acceptance: Annotated[float, Field(gt=0, le=1)] = 0.5

    @field_validator("costs")
    @classmethod
    def _known_stages(cls, costs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(costs) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; allowed: {', '.join(STAGES)}")
        for stage, price in costs.items():
            if isinstance(price, dict):
                bad = sorted(set(price) - set(QUANTITIES))
                if bad:
                    raise ValueError(f"{stage}: unknown quantity {bad[0]!r}; allowed: {', '.join(QUANTITIES)}")
        return costs

    def cost_model(self) -> CostModel:
        per = self.unit if self.unit in QUANTITIES else "samples"
        prices = {
            stage: dict(price) if isinstance(price, dict) else {per: float(price)}
            for stage, price in self.costs.items()
        }
        return CostModel(unit=self.unit, prices=prices)


class LoopConfig(Strict):
    mode: Literal["accept", "select"] | None = None  # None: streaming if the selector's kind streams
    oversample: Annotated[float, Field(ge=1)] = 2.0
    chunk_size: Annotated[int, Field(ge=1)] = 65536
    store_candidates: Literal["all", "selected", "none"] = "all"
    max_iterations: Annotated[int, Field(ge=1)] | None = None
    max_draws_per_selected: Annotated[float, Field(gt=1)] = 10_000.0
    keep_checkpoints: Annotated[int, Field(ge=1)] = 3


class EvalConfig(Strict):
    every: Annotated[int, Field(ge=1)] = 1


class CompareConfig(Strict):
    schedules: Annotated[dict[str, ScheduleConfig], Field(min_length=1)]
    seeds: Annotated[int, Field(ge=1)] = 3


class RunConfig(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    seed: Annotated[int, Field(ge=0)] = 0
    task: Section
    model: Section | None = None
    generator: Section | None = None
    learner: Section | None = None
    selector: SelectorConfig = RewardProportionalSelector(kind="reward_proportional")
    prompt_policy: PromptPolicyConfig = UniformConfig(kind="uniform")
    training_set: TrainingSetConfig = ThisIterationConfig(kind="this_iteration")
    schedule: ScheduleConfig
    budget: BudgetConfig
    loop: LoopConfig = LoopConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig | None = None

    @model_validator(mode="after")
    def _mode_fits_selector(self) -> RunConfig:
        if self.loop.mode == "accept" and not make_selector(self.selector).streaming:
            raise ValueError(f"loop.mode: 'accept' needs a streaming selector, and {self.selector.kind!r} must "
                             "see all N_t candidates at once (use mode 'select', or leave mode unset)")
        return self

    @property
    def streams(self) -> bool:
        """Whether iterations stream (Algorithm 1) or draw N_t = oversample * n_t first."""
        return self.loop.mode != "select" and make_selector(self.selector).streaming


# -- families ----------------------------------------------------------------------------------


class Family(Protocol):
    """What a task family's ``*_config.py`` module exposes as ``FAMILY``."""

    def validate(self, config: RunConfig) -> Any:
        """Check the family-owned sections (raise ConfigError); cheap, no ML framework."""
        ...

    def usage_per_draw(self, settings: Any) -> Mapping[str, float]:
        """Expected usage of generating one draw, for planning (the ledger charges measured usage)."""
        ...

    def usage_per_example(self, settings: Any) -> Mapping[str, float]:
        """Expected usage of training on one kept example, for planning."""
        ...

    def build(self, config: RunConfig, settings: Any) -> Any:
        """The loop's Components (imports the family's heavy dependencies)."""
        ...

    def schedule_defaults(self, settings: Any) -> dict[str, float]:
        """Parameters a schedule may take from the task (sigma, kappa for gaussian_optimal)."""
        ...


def family_for(config: RunConfig) -> Family:
    kind = config.task.kind
    if kind not in FAMILIES:
        raise ConfigError(f"task.kind: unknown kind {kind!r}; allowed: {', '.join(sorted(FAMILIES))}")
    family: Family = importlib.import_module(FAMILIES[kind]).FAMILY
    return family


def validate_section(section: Section | None, model: type[BaseModel], where: str) -> Any:
    """Validate a family-owned section with the family's pydantic model, errors prefixed by ``where``."""
    data = {} if section is None else {"kind": section.kind, **section.params()}
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, prefix=where)) from None


def validate_kind(section: Section | None, models: Mapping[str, type[BaseModel]], where: str) -> Any:
    """Validate a section whose ``kind`` picks its model from ``models`` (kind -> pydantic model)."""
    allowed = ", ".join(repr(kind) for kind in models)
    if section is None:
        raise ConfigError(f"{where}: required section is missing; kind: one of {allowed}")
    if section.kind not in models:
        raise ConfigError(f"{where}.kind: unknown kind {section.kind!r}; allowed: {allowed}")
    return validate_section(section, models[section.kind], where)


def format_validation_error(error: ValidationError, *, prefix: str = "") -> str:
    first = error.errors()[0]
    location = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling and the section's allowed keys)"
    elif first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] == "union_tag_invalid":
        context = first.get("ctx", {})
        location = f"{location}.kind" if location else "kind"
        message = f"unknown kind {context.get('tag')!r}; allowed: {context.get('expected_tags')}"
        first = {**first, "type": "missing"}  # the kind is already shown
    elif first["type"] == "literal_error":
        message = message.replace("Input should be", "allowed:")
    given = first.get("input")
    shown = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(given, dict) else f" (got {given!r})"
    more = f" [and {len(error.errors()) - 1} more]" if len(error.errors()) > 1 else ""
    return f"{location or 'config'}: {message}{shown}{more}"


def parse_config(data: Any, *, source: str = "config") -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of sections, got {type(data).__name__}")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
    family_for(config).validate(config)
    return config


def load_config(path: Path) -> RunConfig:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(data, source=str(path))


# -- from config to loop objects ---------------------------------------------------------------


def make_selector(config: SelectorConfig) -> Any:
    if isinstance(config, ThresholdSelector):
        return Threshold(threshold=config.threshold)
    return {
        "reward_proportional": RewardProportional,
        "passed": Passed,
        "top_k": TopK,
        "reward_proportional_without_replacement": RewardProportionalWithoutReplacement,
    }[config.kind]()


def schedule_factory(config: ScheduleConfig, defaults: Mapping[str, float]) -> Any:
    """``make(n0) -> Schedule`` for the configured family."""
    if isinstance(config, ConstantSchedule):
        return schedules.constant
    if isinstance(config, LinearSchedule):
        slope = config.slope
        return lambda n0: schedules.linear(n0, slope)
    if isinstance(config, PolynomialSchedule):
        return lambda n0: schedules.polynomial(n0, config.alpha)
    if isinstance(config, ExponentialSchedule):
        return lambda n0: schedules.exponential(n0, config.growth)
    if isinstance(config, GaussianOptimalSchedule):
        sigma = config.sigma or defaults.get("sigma")
        kappa = config.kappa or defaults.get("kappa")
        if sigma is None or kappa is None:
            raise ConfigError("schedule: gaussian_optimal needs sigma and kappa (the task has none)")
        return lambda n0: schedules.gaussian_optimal(n0, sigma, kappa)
    values = config.values
    return lambda n0: schedules.explicit(values)


def make_planner(config: RunConfig, schedule: ScheduleConfig | None = None) -> Planner:
    """The planner for ``config`` (or for another schedule at the same budget, in a comparison)."""
    schedule = schedule or config.schedule
    family = family_for(config)
    settings = family.validate(config)
    costs = config.budget.cost_model()
    declared = declared_usage(config, family, settings)
    try:
        check_priced(costs.prices, declared)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    unit_costs = UnitCosts(
        per_draw=sum(costs.per_unit(stage, usage) for stage, usage in declared.items() if stage != "train"),
        per_selected=costs.per_unit("train", declared["train"]),
    )
    acceptance = config.budget.expected_acceptance if config.streams else 1.0 / config.loop.oversample
    make = schedule_factory(schedule, family.schedule_defaults(settings))
    n0: float | None
    if isinstance(schedule, ExplicitSchedule):
        n0, n_iterations, max_iterations = 1.0, None, config.loop.max_iterations
    elif schedule.n0 == "auto":
        n0, n_iterations, max_iterations = None, schedule.iterations, None
    else:
        n0, n_iterations = float(schedule.n0), None
        max_iterations = _min_or_none(config.loop.max_iterations, schedule.iterations)
    planner = Planner(make=make, budget=config.budget.total, unit_costs=unit_costs,
                      acceptance_rate=acceptance, n0=n0, n_iterations=n_iterations,
                      max_iterations=max_iterations)
    try:
        planner.schedule()
    except ValueError as error:
        raise ConfigError(f"schedule: {error}") from None
    return planner


def declared_usage(config: RunConfig, family: Family, settings: Any) -> dict[str, dict[str, float]]:
    """Stage -> quantity -> usage bound per draw (per trained example for ``train``) that the run's
    components report: what may be priced. Generator quantities named ``stage:quantity`` (checks a
    generator runs itself) count for that stage."""
    declared: dict[str, dict[str, float]] = {"generate": {}, "verify": {"samples": 1.0}}
    for name, amount in family.usage_per_draw(settings).items():
        stage, _, quantity = name.rpartition(":")
        declared.setdefault(stage or "generate", {})[quantity] = amount
    if isinstance(config.prompt_policy, WeightedConfig) and config.prompt_policy.score:
        declared["score"] = {"samples": config.prompt_policy.factor}
    declared["train"] = dict(family.usage_per_example(settings))
    return declared


def _min_or_none(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def loop_settings(config: RunConfig) -> LoopSettings:
    return LoopSettings(
        mode=config.loop.mode,
        oversample=config.loop.oversample,
        chunk_size=config.loop.chunk_size,
        store_candidates=config.loop.store_candidates,
        eval_every=config.eval.every,
        max_draws_per_selected=config.loop.max_draws_per_selected,
        keep_checkpoints=config.loop.keep_checkpoints,
    )


def with_schedule(config: RunConfig, schedule: ScheduleConfig, *, seed: int, name: str) -> RunConfig:
    return config.model_copy(update={"schedule": schedule, "seed": seed, "name": name})


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)

