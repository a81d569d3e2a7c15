"""Run configs: YAML -> validated pydantic models -> plain objects for the loop.

The core sections (schedule, selector, budget, loop, eval, compare) are validated here. The
``task``, ``model``, ``generator`` and ``learner`` sections belong to a task family (Gaussian,
digits denoising, reasoning-gym math...): each family validates them with its own models in its
``*_config.py`` module, which imports no ML framework, so a bad config fails before anything loads.

A bad config raises :class:`ConfigError` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from synthloop.budget import (
    STAGES,
    AdaptivePlanner,
    AnyPlanner,
    CostModel,
    Planner,
    UnitCosts,
    by_stage,
    check_priced,
    plan,
)
from synthloop.loop import LoopSettings, streaming
from synthloop.names import check_name
from synthloop.overrides import apply_overrides, parse_override
from synthloop.policies import PromptPolicyConfig, UniformConfig, WeightedConfig
from synthloop.schedules import (  # noqa: F401  (re-exported: the config edge names every kind)
    AdaptiveSchedule,
    ConstantSchedule,
    ExplicitSchedule,
    ExponentialSchedule,
    GaussianOptimalSchedule,
    LinearSchedule,
    PolynomialSchedule,
    ScheduleConfig,
)
from synthloop.select import (  # noqa: F401
    PassedSelector,
    RewardProportionalSelector,
    SelectorConfig,
    ThresholdSelector,
    TopKSelector,
    WithoutReplacementSelector,
    make_selector,
)
from synthloop.strict import MAX_ITERATIONS, MAX_SELECTED, Iterations, Seed, Strict
from synthloop.training_set import MixConfig, ThisIterationConfig, TrainingSetConfig
from synthloop.yamlio import ConfigError, load_config_file, one_line, shown, shown_path

__all__ = ["ConfigError", "RunConfig", "Strict", "load_config", "parse_config"]

#: task kind -> module whose ``FAMILY`` object validates and builds that kind's components.
FAMILIES: dict[str, str] = {
    "gaussian": "synthloop.families.gaussian",
    "digits-denoise": "synthloop.families.digits",
    "math": "synthloop.families.math",
    "code": "synthloop.families.code",
    "data": "synthloop.families.data",
    "active": "synthloop.families.active",
}

QUANTITIES = ("samples", "tokens", "prompt_tokens", "completion_tokens", "forward_passes", "flops", "seconds")

# Sanity bounds: past these a run cannot finish (or its plan cannot even be computed).
MAX_DRAWS = 10**9  # expected draws in one iteration (n_t / acceptance rate)
MAX_OVERSAMPLE = 10_000
MAX_SEEDS = 1_000
MAX_CHUNK = 1 << 20


class Section(BaseModel):
    """A family-owned section: ``kind`` plus whatever the family's own model accepts."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    kind: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


Name = Annotated[str, AfterValidator(check_name)]


# -- budget, loop, eval, compare ---------------------------------------------------------------

Price = Annotated[float, Field(ge=0)]


class BudgetConfig(Strict):
    total: Annotated[float, Field(gt=0)]
    unit: Annotated[str, Field(min_length=1, max_length=40)] = "samples"
    costs: dict[str, Price | dict[str, Price]] = Field(
        default_factory=lambda: dict[str, float | dict[str, float]](generate=0.0, verify=0.0, train=1.0)
    )
    expected_acceptance: Annotated[float, Field(gt=0, le=1)] = 0.5

    @field_validator("costs")
    @classmethod
    def _known_stages(cls, costs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(costs) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage {shown(unknown[0])}; allowed: {', '.join(STAGES)}")
        for stage, price in costs.items():
            if isinstance(price, dict):
                bad = sorted(set(price) - set(QUANTITIES))
                if bad:
                    raise ValueError(f"{stage}: unknown quantity {shown(bad[0])}; allowed: {', '.join(QUANTITIES)}")
        prices = [p for price in costs.values() for p in (price.values() if isinstance(price, dict) else [price])]
        if not any(p > 0 for p in prices):
            raise ValueError(f"every stage is free, so no budget can end the run; price at least one of "
                             f"{', '.join(STAGES)} (got {shown(costs)})")
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
    oversample: Annotated[float, Field(ge=1, le=MAX_OVERSAMPLE)] = 2.0
    chunk_size: Annotated[int, Field(ge=1, le=MAX_CHUNK)] = 65536
    store_candidates: Literal["all", "selected", "none"] = "all"
    max_iterations: Iterations | None = None
    max_draws_per_selected: Annotated[float, Field(gt=1, le=1e6)] = 10_000.0
    keep_checkpoints: Annotated[int, Field(ge=1, le=MAX_ITERATIONS)] = 2  # see runs.Journal


class EvalConfig(Strict):
    every: Iterations = 1


class DiagnoseConfig(Strict):
    """``diagnose: {max_samples: 500, reference_samples: 500}``: the optional diagnose stage
    (``docs/diagnostics.md``); price it with ``budget.costs.diagnose`` (samples or seconds)."""

    max_samples: Annotated[int, Field(ge=6, le=100_000)] = 500
    reference_samples: Annotated[int, Field(ge=6, le=100_000)] = 500


class EngineConfig(Strict):
    """``engine: {kind: ray, address: local, workers: 2, shard_size: 256}``: each part's generation and
    verification fan out over a pool of Ray actors, one generator and verifier per actor, with
    per-shard seeds, so the samples depend on ``shard_size`` but not on ``workers``
    (``docs/scale-out.md``). Unset: everything runs in this process."""

    kind: Literal["ray"]
    address: Annotated[str, Field(min_length=1, max_length=500)] = "local"  # local | auto | ray://...
    workers: Annotated[int, Field(ge=1, le=100_000)] = 2
    shard_size: Annotated[int, Field(ge=1, le=MAX_SELECTED)] = 256
    max_redo: Annotated[int, Field(ge=0, le=1000)] = 3  # dead actors tolerated per part


class CompareConfig(Strict):
    schedules: Annotated[dict[str, ScheduleConfig], Field(min_length=1)]
    seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] = 3

    @field_validator("schedules", mode="before")
    @classmethod
    def _folder_names(cls, value: Any) -> Any:
        for name in value if isinstance(value, dict) else ():
            try:
                check_name(name)
            except ValueError as error:
                raise ValueError(f"schedule names name folders: {error}") from None
        return value


class RunConfig(Strict):
    name: Name
    seed: Seed = 0
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
    diagnose: DiagnoseConfig | None = None
    engine: EngineConfig | None = None
    compare: CompareConfig | None = None

    @model_validator(mode="after")
    def _mode_fits_selector(self) -> RunConfig:
        self.streams  # noqa: B018  (raises ValueError where the mode and the selector's kind disagree)
        return self

    @property
    def streams(self) -> bool:
        """Whether iterations stream (Algorithm 1) or draw N_t = oversample * n_t first."""
        return streaming(self.loop.mode, make_selector(self.selector))


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
        """Parameters a schedule may take from the task: sigma, kappa for gaussian_optimal; for the
        adaptive schedule ``smallest_update`` (the fewest kept samples an update moves and measures
        the model with), ``step_size`` (kept samples per optimizer step) and ``fixed_steps`` (1.0: the
        learner takes a fixed number of optimizer steps per kept sample; ``AdaptivePlanner``)."""
        ...


def family_for(config: RunConfig) -> Family:
    kind = config.task.kind
    if kind not in FAMILIES:
        raise ConfigError(f"task.kind: unknown kind {shown(kind)}; allowed: {', '.join(sorted(FAMILIES))}")
    family: Family = importlib.import_module(FAMILIES[kind]).FAMILY
    return family


def validate_section(section: Section | None, model: type[BaseModel], where: str) -> Any:
    """Validate a family-owned section with the family's pydantic model, errors prefixed by ``where``."""
    data = {} if section is None else {"kind": section.kind, **section.params()}
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(*validation_problems(error, prefix=where)) from None


def validate_kind(section: Section | None, models: Mapping[str, type[BaseModel]], where: str) -> Any:
    """Validate a section whose ``kind`` picks its model from ``models`` (kind -> pydantic model)."""
    allowed = ", ".join(repr(kind) for kind in models)
    if section is None:
        raise ConfigError(f"{where}: required section is missing; kind: one of {allowed}")
    if section.kind not in models:
        raise ConfigError(f"{where}.kind: unknown kind {shown(section.kind)}; allowed: {allowed}")
    return validate_section(section, models[section.kind], where)


# A plain union's members show up in an error's location ("n0.constrained-float"); they are not keys.
_UNION_MEMBER = re.compile(r"^(?:constrained-|function-|literal\[|(?:dict|list|tuple|set)\[|"
                           r"(?:float|int|str|bool|bytes|none)$)")


def format_validation_error(error: ValidationError, *, prefix: str = "") -> str:
    """The first problem of ``error`` as one line (:func:`validation_problems` gives them all)."""
    return validation_problems(error, prefix=prefix)[0]


def validation_problems(error: ValidationError, *, prefix: str = "") -> list[str]:
    """Every problem of ``error``, one line each: the field's dotted location, what is wrong, and
    the value given (cut short). A value that fits no member of a plain union is one problem, told
    by the member that got furthest, not one per member."""
    lines = [_problem(e, prefix) for e in _distinct(error.errors())]
    return list(dict.fromkeys(lines))  # two members that fail the same way say it once


def _distinct(errors: list[Any]) -> list[Any]:
    """``errors`` less those of the union members that did not get furthest (see above)."""
    def union_at(e: Any) -> int | None:
        return next((i for i, p in enumerate(e["loc"]) if isinstance(p, str) and _UNION_MEMBER.match(p)), None)

    furthest: dict[tuple[Any, ...], tuple[int, Any]] = {}
    for e in errors:
        i = union_at(e)
        if i is not None:
            key, depth = tuple(e["loc"][:i]), len(e["loc"])
            if key not in furthest or depth > furthest[key][0]:
                furthest[key] = (depth, e["loc"][i])
    kept = []
    for e in errors:
        i = union_at(e)
        if i is None or furthest[tuple(e["loc"][:i])][1] == e["loc"][i]:
            kept.append(e)
    return kept


def _problem(first: Any, prefix: str) -> str:
    parts = [p for p in first["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p))]
    location = ".".join(one_key(p) for p in (prefix, *parts) if p != "")
    kind, message = first["type"], first["msg"].removeprefix("Value error, ")
    show_input = kind not in ("missing", "extra_forbidden") and not isinstance(first.get("input"), dict)
    if kind == "extra_forbidden":
        message = "unknown key (check its spelling and the section's allowed keys)"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "union_tag_invalid":
        context = first.get("ctx", {})
        location = f"{location}.kind" if location else "kind"
        message = f"unknown kind {shown(context.get('tag'))}; allowed: {context.get('expected_tags')}"
        show_input = False  # the kind is already shown
    elif kind == "literal_error":
        message = message.replace("Input should be", "allowed:")
    elif kind == "is_instance_of" and "Path" in message:
        message = "Input should be a path (a string)"
    given = f" (got {shown(first.get('input'))})" if show_input else ""
    return f"{location or 'config'}: {message}{given}"


def one_key(part: object) -> str:
    """One part of a dotted location: a key as written, cut short (a key can be a megabyte long)."""
    return one_line(str(part), 40)


def parse_config(data: Any, *, source: str = "config") -> RunConfig:
    if data is None:
        raise ConfigError(f"{source}: the config is empty; it needs name, task, schedule and budget")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of sections, got {type(data).__name__}")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(*validation_problems(error)) from None
    family_for(config).validate(config)
    return config


def load_config(path: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The validated config in the YAML file at ``path`` (see :mod:`synthloop.yamlio` for the file
    checks), with ``overrides`` (``key.path=value``, :mod:`synthloop.overrides`) applied first."""
    parsed = [parse_override(text) for text in overrides]  # a malformed one fails before the file is read
    return parse_config(apply_overrides(load_config_file(Path(path)), parsed), source=shown_path(path))


def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """The top-level keys whose values differ between two configs (in the order of the schema).

    >>> from synthloop.yamlio import load_yaml
    >>> a = parse_config(load_yaml(
    ...     "{name: g, task: {kind: gaussian, theta0: [1.0]}, learner: {kind: mle}, schedule: {kind: constant, n0: 5},"
    ...     " budget: {total: 50}}", source="a"))
    >>> config_differences(a, a.model_copy(update={"seed": 3}))
    ['seed']
    """
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [key for key in RunConfig.model_fields if before.get(key) != after.get(key)]


# -- from config to loop objects ---------------------------------------------------------------


def make_planner(config: RunConfig, schedule: ScheduleConfig | None = None) -> AnyPlanner:
    """The planner for ``config`` (or for another schedule at the same budget, in a comparison).

    The plan is checked before it is returned: one that would run past ``MAX_ITERATIONS``, or plan
    more than ``MAX_SELECTED`` selected samples or ``MAX_DRAWS`` draws in an iteration, is a config
    error naming the bound (a budget of 1e30 would otherwise plan n_0 = 6.7e28 and draw for ever).
    """
    schedule = schedule or config.schedule
    family = family_for(config)
    settings = family.validate(config)
    unit_costs = _unit_costs(config, family, settings)
    acceptance = config.budget.expected_acceptance if config.streams else 1.0 / config.loop.oversample
    defaults = family.schedule_defaults(settings)
    try:
        make = schedule.factory(defaults)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if isinstance(schedule, AdaptiveSchedule):
        return _adaptive_planner(config, schedule, defaults, unit_costs, acceptance)
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
    check_plan(planner)
    return planner


def _unit_costs(config: RunConfig, family: Family, settings: Any) -> UnitCosts:
    costs = config.budget.cost_model()
    declared = declared_usage(config, family, settings)
    try:
        check_priced(costs.prices, declared)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    per_draw_usage = draw_usage(config, family, settings)
    labels_per_selected, label_cost = label_plan(config, family, settings)
    per_example = costs.per_unit("train", declared["train"])
    unit_costs = UnitCosts(  # each selected row brings labels_per_selected outside rows of a mix
        per_draw=sum(costs.per_unit(stage, usage) for stage, usage in per_draw_usage.items()
                     if stage not in ("train", "diagnose")),
        per_selected=per_example + labels_per_selected * (per_example + label_cost),
    )
    if not (unit_costs.per_draw > 0 or unit_costs.per_selected > 0):
        raise ConfigError("budget.costs: no priced quantity is one the task reports per sample (seconds are "
                          "not planned), so no budget can end the run; price generate, verify or train")
    return unit_costs


def fixed_steps(schedule: AdaptiveSchedule, defaults: Mapping[str, float]) -> bool:
    """Whether the adaptive schedule plans a fixed-steps learner: its ``updates``, or with ``auto``
    the family's declaration (``schedule_defaults``' ``fixed_steps``)."""
    if schedule.updates == "auto":
        return bool(defaults.get("fixed_steps", 0.0))
    return schedule.updates == "fixed_steps"


def _adaptive_planner(config: RunConfig, schedule: AdaptiveSchedule, defaults: Mapping[str, float],
                      unit_costs: UnitCosts, acceptance: float) -> AdaptivePlanner:
    steps = fixed_steps(schedule, defaults)
    if steps and schedule.n0 != "auto":
        raise ConfigError(f"schedule.n0: {schedule.n0:g} is unused: this learner takes fixed optimizer steps, so "
                          "the adaptive schedule plans one step an iteration; set updates: refit for the growth rule")
    # the growth rule needs the smallest update it can measure; a fixed-steps plan one optimizer step
    smallest = defaults.get("smallest_update", 2)
    if steps:
        smallest = defaults.get("step_size", smallest)
    planner = AdaptivePlanner(budget=config.budget.total, unit_costs=unit_costs, acceptance_rate=acceptance,
                              tolerance=schedule.tolerance, n0=None if schedule.n0 == "auto" else schedule.n0,
                              max_iterations=_min_or_none(config.loop.max_iterations, schedule.iterations),
                              min_size=max(2, int(smallest)), fixed_steps=steps)
    if steps and len(planner.plan()) > MAX_ITERATIONS:
        raise ConfigError(f"schedule: one step of {planner.min_size} an iteration runs past {MAX_ITERATIONS} "
                          "iterations before the budget is spent; set schedule.iterations or loop.max_iterations, "
                          "lower budget.total, or set updates: refit")
    return planner


def with_updates_resolved(config: RunConfig) -> RunConfig:
    """``config`` with every adaptive schedule's ``updates: auto`` replaced by the rule it runs for
    this family, so that two configs compare by what they plan, not by how they say it."""
    schedules = [config.schedule, *(config.compare.schedules.values() if config.compare else ())]
    if not any(isinstance(s, AdaptiveSchedule) and s.updates == "auto" for s in schedules):
        return config
    family = family_for(config)
    defaults = family.schedule_defaults(family.validate(config))

    def resolved(schedule: ScheduleConfig) -> ScheduleConfig:
        if not isinstance(schedule, AdaptiveSchedule) or schedule.updates != "auto":
            return schedule
        return schedule.model_copy(update={"updates": "fixed_steps" if fixed_steps(schedule, defaults) else "refit"})

    update: dict[str, Any] = {"schedule": resolved(config.schedule)}
    if config.compare is not None:
        update["compare"] = config.compare.model_copy(
            update={"schedules": {k: resolved(v) for k, v in config.compare.schedules.items()}})
    return config.model_copy(update=update)


def mark_stored_adaptive(data: object) -> object:
    """A stored config (a run's ``config.yaml``, a comparison's ``compare.yaml``) holds every field;
    an adaptive schedule in it without ``updates`` was written before that field existed, when the
    growth rule was the only one: it is read as ``updates: refit``, so the run resumes as it began."""
    if not isinstance(data, dict):
        return data  # malformed: parse_config says what is wrong
    compare = data.get("compare")
    named = compare.get("schedules") if isinstance(compare, dict) else None
    for schedule in [data.get("schedule"), *(named.values() if isinstance(named, dict) else ())]:
        if isinstance(schedule, dict) and schedule.get("kind") == "adaptive" and "updates" not in schedule:
            schedule["updates"] = "refit"
    return data


def check_plan(planner: Planner) -> None:
    """Compute the plan (at most ``MAX_ITERATIONS`` + 1 rows) and refuse one a run could not finish."""
    end = planner.n_iterations if planner.n_iterations is not None else planner.max_iterations
    try:
        rows = plan(planner.schedule(), budget=planner.budget, unit_costs=planner.unit_costs,
                    acceptance_rate=planner.acceptance_rate,
                    max_iterations=_min_or_none(end, MAX_ITERATIONS + 1))
    except OverflowError:
        raise ConfigError("schedule: n_t overflows a float before the budget is spent; lower the growth "
                          "(or alpha), the number of iterations or budget.total") from None
    except ValueError as error:
        raise ConfigError(f"schedule: {error}") from None
    if len(rows) > MAX_ITERATIONS:
        raise ConfigError(f"schedule: the plan runs past {MAX_ITERATIONS} iterations before the budget is "
                          "spent; set schedule.iterations or loop.max_iterations, or lower budget.total")
    for row in rows:
        if row.n_selected > MAX_SELECTED:
            raise ConfigError(f"schedule: iteration {row.iteration} plans n_t = {row.n_selected:.3g} selected "
                              f"samples, past the bound of {MAX_SELECTED:.0e}; lower budget.total or schedule.n0")
        if row.expected_generated > MAX_DRAWS:
            raise ConfigError(f"schedule: iteration {row.iteration} plans {row.expected_generated:.3g} draws "
                              f"(n_t / acceptance rate), past the bound of {MAX_DRAWS:.0e}; lower budget.total "
                              "or schedule.n0, or raise the acceptance rate")


@runtime_checkable
class LabelingFamily(Protocol):
    """A family whose task gives outside labels to a ``mix`` training set (math)."""

    def usage_per_label(self, settings: Any) -> Mapping[str, float]:
        """Expected usage of one outside label, for planning (the ledger charges measured usage)."""
        ...


def label_usage(config: RunConfig, family: Family, settings: Any) -> dict[str, float]:
    """What one outside label of a ``mix`` reports (the ``label`` stage); empty without a mix."""
    if not isinstance(config.training_set, MixConfig) or config.training_set.alpha == 0:
        return {}
    return dict(family.usage_per_label(settings)) if isinstance(family, LabelingFamily) else {"samples": 1.0}


def label_plan(config: RunConfig, family: Family, settings: Any) -> tuple[float, float]:
    """(labels per selected row, expected cost of one label): a mix adds round(alpha / (1 - alpha)
    n_t) labels an iteration, each charged to ``label`` and trained on."""
    usage = label_usage(config, family, settings)
    if not usage or not isinstance(config.training_set, MixConfig):
        return 0.0, 0.0
    alpha = config.training_set.alpha
    return alpha / (1 - alpha), config.budget.cost_model().per_unit("label", usage)


def declared_usage(config: RunConfig, family: Family, settings: Any) -> dict[str, dict[str, float]]:
    """Stage -> quantity -> usage bound per draw (per trained example for ``train``, per label for a
    mix's ``label``) that the run's components report: what may be priced."""
    declared = draw_usage(config, family, settings)
    labels = label_usage(config, family, settings)
    if labels:
        declared.setdefault("label", {}).update(labels)
    return declared


def draw_usage(config: RunConfig, family: Family, settings: Any) -> dict[str, dict[str, float]]:
    """``declared_usage`` without a mix's labels: what one draw uses. Generator quantities named
    ``stage:quantity`` (checks a generator runs itself) count for that stage."""
    declared = by_stage(family.usage_per_draw(settings), "generate")
    declared.setdefault("verify", {}).setdefault("samples", 1.0)
    if isinstance(config.prompt_policy, WeightedConfig) and config.prompt_policy.score:
        declared["score"] = {"samples": config.prompt_policy.factor}
    declared["train"] = dict(family.usage_per_example(settings))
    if config.diagnose is not None:
        declared["diagnose"] = {"samples": 1.0}
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

