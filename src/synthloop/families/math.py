"""The math word-problem family (``task.kind: math``): its config, planning usage and wiring.

Validation and planning import no ML framework; ``build`` imports torch and transformers.

    task:      {kind: math, levels: [{name, dataset, params}], train_size, eval_size, shots, ...,
                filter: {kind: gold} | {kind: noisy, false_accept, false_reject, seed}
                        | {kind: majority, min_share},
                labeler: {kind: controlled, beta} | {kind: model, source, max_new_tokens},
                eval_samples: 0, eval_train_size: 0}
    model:     {kind: smollm2} | {kind: pretrained, source: <hub id or path>}
               | {kind: tiny, ...} | {kind: scratch, pretrain_steps, ...}
               every kind also takes device: auto | cpu | cuda | mps (default cpu) and
               dtype: float32 | bfloat16 | float16 (the weights'; default float32; float16 not on cpu)
    generator: {kind: hf, max_new_tokens, temperature, top_p, batch_size, bf16, ...}
               | {kind: openai, model, base_url, max_tokens, ...}  (a served teacher: docs/engines.md)
    learner:   {kind: sft, lr, batch_size, grad_accum, epochs, reset: continue|restart, lora: {...}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from synthloop.configs import (
    ConfigError,
    RunConfig,
    Strict,
    make_selector,
    validate_kind,
    validate_section,
)
from synthloop.engines.openai_config import OpenAISettings
from synthloop.families.placement import Placement
from synthloop.strict import Count, Seed
from synthloop.tasks.math import (
    Level,
    build_pools,
    few_shot_prompt,
    load_problems,
    prompts_for,
    question_prompt,
)

if TYPE_CHECKING:
    from synthloop.loop import Components
    from synthloop.models.hf import HFModel
    from synthloop.tasks.math import MathTask

Steps = Annotated[int, Field(ge=0, le=10**7)]


class LevelConfig(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    dataset: Literal["gsm_symbolic", "chain_sum", "basic_arithmetic"]
    params: dict[str, Any] = Field(default_factory=dict)  # reasoning-gym generator options
    weight: Annotated[float, Field(gt=0)] = 1.0


Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class GoldFilterConfig(Strict):
    """``filter: {kind: gold}``: the gold final-answer check (the default)."""

    kind: Literal["gold"]


class NoisyFilterConfig(Strict):
    """``filter: {kind: noisy, false_accept: 0.1, false_reject: 0.1}``: gold, flipped at these rates."""

    kind: Literal["noisy"]
    false_accept: Share = 0.0
    false_reject: Share = 0.0
    seed: Seed = 0


class MajorityFilterConfig(Strict):
    """``filter: {kind: majority, min_share: 0.5}``: agreement with the plurality of the prompt's
    samples, no gold (pair it with ``prompt_policy: {kind: hardest_first}`` for k samples a prompt)."""

    kind: Literal["majority"]
    min_share: Share = 0.5


FilterConfig = Annotated[GoldFilterConfig | NoisyFilterConfig | MajorityFilterConfig, Field(discriminator="kind")]


class ControlledLabelerConfig(Strict):
    """``labeler: {kind: controlled, beta: 0.5}``: gold solutions, a 1 - beta share made wrong."""

    kind: Literal["controlled"]
    beta: Share = 1.0


class ModelLabelerConfig(Strict):
    """``labeler: {kind: model, source: <path or hub id> | smollm2}``: a model's greedy answers."""

    kind: Literal["model"]
    source: Annotated[str, Field(min_length=1)]
    max_new_tokens: Count = 128


LabelerConfig = Annotated[ControlledLabelerConfig | ModelLabelerConfig, Field(discriminator="kind")]


class MathTaskConfig(Strict):
    kind: Literal["math"]
    levels: Annotated[list[LevelConfig], Field(min_length=1, max_length=100)]
    train_size: Count = 1000  # training pool per level
    eval_size: Count = 100  # held-out problems per level (greedy decoding)
    shots: Annotated[int, Field(ge=0, le=16)] = 3
    style: Literal["few_shot", "chat"] = "few_shot"  # chat: bare questions in the model's chat template
    data_seed: Seed = 0  # fixes pools and held-out sets across runs and schedules
    rationalize: bool = False  # STaR: retry failed prompts with the answer as a hint
    answer_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0
    require_marker: bool = False  # only "#### <answer>" counts as a final answer
    filter: FilterConfig = Field(default_factory=lambda: GoldFilterConfig(kind="gold"))
    labeler: LabelerConfig | None = None  # outside labels, for training_set {kind: mix}
    eval_samples: Annotated[int, Field(ge=0, le=1024)] = 0  # sampled answers per prompt for pass@k; 0: off
    eval_train_size: Annotated[int, Field(ge=0, le=10**6)] = 0  # training prompts evaluated with pass@k too


class ScratchModelConfig(Placement):
    """A tiny GPT-2 trained from scratch on labelled seed problems of the task's levels."""

    kind: Literal["scratch"]
    n_layer: Count = 2
    n_embd: Count = 64
    n_head: Count = 4
    n_positions: Count = 256
    vocab_size: Annotated[int, Field(ge=64, le=1 << 20)] = 256
    seed_problems: Count = 2000  # labelled problems per level (disjoint from the training pool)
    pretrain_steps: Steps = 300
    pretrain_batch_size: Count = 32
    pretrain_lr: Annotated[float, Field(gt=0)] = 3e-3
    pretrain_bf16: bool = True  # bf16 autocast pays off from about 64-wide layers; tiny ones run faster in fp32
    seed: Seed = 0


class TinyModelConfig(ScratchModelConfig):
    """Like ``scratch`` with no pretraining by default: random weights, for tests."""

    kind: Literal["tiny"]  # type: ignore[assignment]
    pretrain_steps: Steps = 0


class SmolLM2Config(Placement):
    kind: Literal["smollm2"]


class PretrainedConfig(Placement):
    kind: Literal["pretrained"]
    source: Annotated[str, Field(min_length=1)]  # hub id or local directory


ModelConfig = ScratchModelConfig | TinyModelConfig | SmolLM2Config | PretrainedConfig
MODELS: dict[str, type[ModelConfig]] = {
    "smollm2": SmolLM2Config, "pretrained": PretrainedConfig, "scratch": ScratchModelConfig,
    "tiny": TinyModelConfig,
}


class GeneratorConfig(Strict):
    kind: Literal["hf"] = "hf"
    max_new_tokens: Count = 64
    temperature: Annotated[float, Field(ge=0)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    batch_size: Count = 16
    eval_batch_size: Count = 32
    max_prompt_tokens: Count = 1024
    bf16: bool = True
    stop_strings: list[str] = Field(default_factory=lambda: ["\nQuestion:"])
    decode: Literal["exact", "fused"] = "exact"  # fused: Llama models only (models/fused_llama.py)


class OpenAIGeneratorConfig(OpenAISettings):
    """A served model samples (a fixed teacher); the student learns and is evaluated here, greedily,
    with the local sampler (``eval_batch_size``, ``max_prompt_tokens``, ``bf16`` are for that)."""

    kind: Literal["openai"]
    eval_batch_size: Count = 32
    max_prompt_tokens: Count = 1024
    bf16: bool = True


GENERATORS: dict[str, type[GeneratorConfig | OpenAIGeneratorConfig]] = {
    "hf": GeneratorConfig, "openai": OpenAIGeneratorConfig}


class LoraConfig(Strict):
    rank: Count = 8
    alpha: Annotated[int, Field(gt=0)] = 16
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: list[str] | None = None


class LearnerConfig(Strict):
    kind: Literal["sft"] = "sft"
    lr: Annotated[float, Field(gt=0)] = 1e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    batch_size: Count = 8
    grad_accum: Count = 1
    epochs: Count = 1
    max_length: Count = 512
    warmup_steps: Steps = 0
    bf16: bool = True
    reset: Literal["continue", "restart"] = "continue"  # Spend Wisely continues; STaR restarts
    lora: LoraConfig | None = None


@dataclass(frozen=True)
class MathSettings:
    task: MathTaskConfig
    model: ModelConfig
    generator: GeneratorConfig | OpenAIGeneratorConfig
    learner: LearnerConfig


class MathFamily:
    def validate(self, config: RunConfig) -> MathSettings:
        task = validate_section(config.task, MathTaskConfig, "task")
        model = validate_kind(config.model, MODELS, "model")
        generator = (validate_section(config.generator, GeneratorConfig, "generator") if config.generator is None
                     else validate_kind(config.generator, GENERATORS, "generator"))
        learner = validate_section(config.learner, LearnerConfig, "learner")
        names = [level.name for level in task.levels]
        if len(set(names)) != len(names):
            raise ConfigError(f"task.levels: level names must be unique, got {names}")
        if isinstance(model, ScratchModelConfig) and model.n_embd % model.n_head:
            raise ConfigError("model.n_embd: must be a multiple of model.n_head")
        if isinstance(generator, OpenAIGeneratorConfig) and (
                task.labeler is not None or not isinstance(task.filter, GoldFilterConfig) or task.eval_samples):
            raise ConfigError("task.labeler / task.filter / task.eval_samples: not supported with generator.kind "
                              "'openai' yet (they sample with the in-process generator); use kind 'hf'")
        if isinstance(generator, OpenAIGeneratorConfig) and task.rationalize:
            raise ConfigError("task.rationalize: not supported with generator.kind 'openai' (a served "
                              "teacher's failed requests would be retried as hints); use kind 'hf'")
        if config.training_set.kind == "mix" and task.labeler is None:
            raise ConfigError("training_set.kind: 'mix' needs outside labels: set task.labeler "
                              "({kind: controlled, beta: ...} or {kind: model, source: ...})")
        return MathSettings(task=task, model=model, generator=generator, learner=learner)

    def usage_per_draw(self, settings: MathSettings) -> Mapping[str, float]:
        """Rough expected tokens of one draw, for planning only (the ledger charges measured tokens):
        about 4 characters per token for the prompt, a quarter of ``max_new_tokens`` for the answer."""
        g = settings.generator
        completion = (g.max_tokens if isinstance(g, OpenAIGeneratorConfig) else g.max_new_tokens) / 4
        prompt = prompt_chars(settings.task) / 4
        usage = {"samples": 1.0, "tokens": prompt + completion, "prompt_tokens": prompt,
                 "completion_tokens": completion}
        if settings.task.rationalize:  # the first attempt is checked inside the generator
            usage["verify:samples"] = 1.0
        return usage

    def usage_per_example(self, settings: MathSettings) -> Mapping[str, float]:
        """Training reads the same prompt and completion tokens that generating the example produced."""
        return {k: v for k, v in self.usage_per_draw(settings).items() if ":" not in k}

    def usage_per_label(self, settings: MathSettings) -> Mapping[str, float]:
        """Rough expected usage of one outside label, for planning only (the ledger charges the
        labeler's measured usage): a draw's prompt tokens and a quarter of the labeler's
        ``max_new_tokens`` (the generator's for a controlled labeler, whose labels are gold-sized)."""
        labeler, g = settings.task.labeler, settings.generator
        limit = labeler.max_new_tokens if isinstance(labeler, ModelLabelerConfig) else (
            g.max_tokens if isinstance(g, OpenAIGeneratorConfig) else g.max_new_tokens)
        prompt = prompt_chars(settings.task) / 4
        return {"samples": 1.0, "tokens": prompt + limit / 4, "prompt_tokens": prompt, "completion_tokens": limit / 4}

    def schedule_defaults(self, settings: MathSettings) -> dict[str, float]:
        # the update statistics need two optimizer steps (SFTLearner.update_statistics); one step is
        # what a fixed-steps plan (schedule.updates: fixed_steps, not declared here) makes each iteration
        step = float(settings.learner.batch_size * settings.learner.grad_accum)
        return {"smallest_update": step + 1, "step_size": step}

    def build(self, config: RunConfig, settings: MathSettings) -> Components:
        return build_components(config, settings)


FAMILY = MathFamily()


# -- planning usage: how long a prompt is ----------------------------------------------------------

#: ``measured_prompt_chars`` of the task settings the examples use, keyed by ``planning_key``:
#: planning them skips importing reasoning-gym (about a second, most of ``synthloop plan``).
#: ``tests/test_hf.py`` checks every entry against the measurement and that every example hits one.
PROMPT_CHARS: dict[str, float] = {
    # examples/math-schedules.yaml, examples/math-schedules-weak.yaml
    '{"data_seed": 0, "levels": [["chain_sum", {"max_digits": 1, "max_terms": 2, "min_digits": 1, '
    '"min_terms": 2}], ["chain_sum", {"max_digits": 1, "max_terms": 3, "min_digits": 1, "min_terms": 3}]], '
    '"shots": 0, "style": "few_shot"}': 87.0,
    # examples/math-smollm2.yaml, examples/math-smollm2-full.yaml
    '{"data_seed": 0, "levels": [["chain_sum", {"max_digits": 1, "max_terms": 2, "min_digits": 1, '
    '"min_terms": 2}]], "shots": 3, "style": "chat"}': 187.0,
    # examples/math-diagnose.yaml
    '{"data_seed": 0, "levels": [["chain_sum", {"max_digits": 1, "max_terms": 2, "min_digits": 1, '
    '"min_terms": 2}]], "shots": 0, "style": "few_shot"}': 85.0,
    # examples/math-smollm2-schedules.yaml
    '{"data_seed": 0, "levels": [["chain_sum", {"max_digits": 1, "max_terms": 2, "min_digits": 1, '
    '"min_terms": 2}], ["basic_arithmetic", {"allow_negation": false, "allow_parentheses": false, '
    '"max_digits": 1, "max_terms": 2, "min_digits": 1, "min_terms": 2}], ["basic_arithmetic", '
    '{"max_digits": 1, "max_terms": 2, "min_digits": 1, "min_terms": 2}]], "shots": 3, "style": "chat"}': 154.0,
}


def planning_key(task: MathTaskConfig) -> str:
    """What the planning prompt length depends on (level names and weights do not change it)."""
    levels = [[level.dataset, level.params] for level in task.levels]
    return json.dumps({"levels": levels, "shots": task.shots, "data_seed": task.data_seed,
                       "style": task.style}, sort_keys=True)


def measured_prompt_chars(task: MathTaskConfig) -> float:
    """Mean characters of the prompts of four training problems per level (the chat template's
    tokens counted as 120 characters)."""
    levels = [Level(lv.name, lv.dataset, lv.params) for lv in task.levels]
    pools = build_pools(levels, train_size=4, eval_size=1, n_shots=task.shots, data_seed=task.data_seed)
    if task.style == "chat":  # the question plus about 30 tokens of chat template
        return 120 + sum(len(p.question) for p in pools.train) / len(pools.train)
    return sum(len(few_shot_prompt(p.question, pools.shots)) for p in pools.train) / len(pools.train)


def prompt_chars(task: MathTaskConfig) -> float:
    """``measured_prompt_chars``, read from ``PROMPT_CHARS`` where the settings are there."""
    key = planning_key(task)
    return PROMPT_CHARS[key] if key in PROMPT_CHARS else measured_prompt_chars(task)


# -- wiring: the task, its Hugging Face models and the selector ---------------------------------


def levels_of(settings: MathSettings) -> list[Level]:
    return [Level(lv.name, lv.dataset, dict(lv.params), lv.weight) for lv in settings.task.levels]


def build_model(settings: MathSettings) -> HFModel:
    from synthloop.models.devices import DeviceError
    from synthloop.models.hf import export_smollm2, load_pretrained

    spec = settings.model
    try:
        if isinstance(spec, SmolLM2Config):
            return load_pretrained(export_smollm2(), device=spec.device, dtype=spec.dtype)
        if isinstance(spec, PretrainedConfig):
            return load_pretrained(spec.source, device=spec.device, dtype=spec.dtype)
        assert isinstance(spec, ScratchModelConfig)
        return scratch_for(spec, levels_of(settings), data_seed=settings.task.data_seed)
    except DeviceError as error:  # a device or dtype this machine cannot give: one line naming the setting
        raise ConfigError(f"model.{error}") from None


def scratch_for(spec: ScratchModelConfig, levels: list[Level], *, data_seed: int) -> HFModel:
    """A tiny GPT-2 pretrained on labelled seed problems (seeds disjoint from the task's pools)."""
    from synthloop.models.scratch import PretrainConfig, TinyGPT2Config, scratch_model

    seed_texts = []
    for k, level in enumerate(levels):
        problems = load_problems(level, size=spec.seed_problems, seed=10_000 + 97 * data_seed + k)
        seed_texts += [f"{question_prompt(p.question)} {p.solution}" for p in problems]
    architecture = TinyGPT2Config(n_layer=spec.n_layer, n_embd=spec.n_embd, n_head=spec.n_head,
                                  n_positions=spec.n_positions, vocab_size=spec.vocab_size, seed=spec.seed)
    training = PretrainConfig(steps=spec.pretrain_steps, batch_size=spec.pretrain_batch_size,
                              lr=spec.pretrain_lr, bf16=spec.pretrain_bf16, seed=spec.seed)
    return scratch_model(seed_texts, tokenizer_texts=seed_texts, vocab_size=spec.vocab_size,
                         architecture=architecture, training=training, device=spec.device, dtype=spec.dtype,
                         description="pretraining the math model from scratch (once; cached)")


def longest_prompt(task: MathTask, model: HFModel, *, chat: bool, hints: bool) -> int:
    """Tokens of the longest training prompt (hint prompts included when rationalizing)."""
    from synthloop.models.hf import encode_prompt

    pool = task.pools_.train
    prompts = prompts_for(pool, range(len(pool)), task.pools_.shots, style=task.style)
    texts = list(prompts.items["prompt"]) + (list(prompts.items["hint_prompt"]) if hints else [])
    return max(len(encode_prompt(model.tokenizer, text, chat=chat)) for text in texts)


def build_components(config: RunConfig, settings: MathSettings, *, model: HFModel | None = None) -> Components:
    from synthloop.loop import Components
    from synthloop.models.hf import HFGenerator
    from synthloop.tasks.math import MathTask, MathVerifier, Rationalizing

    g, t = settings.generator, settings.task
    if isinstance(g, OpenAIGeneratorConfig):
        return openai_components(config, settings, g, model=model)
    model = model or build_model(settings)
    chat = t.style == "chat"
    verifier = MathVerifier(timeout_seconds=t.answer_timeout, require_marker=t.require_marker)
    task = MathTask(levels_of(settings), evaluator=HFGenerator(), train_size=t.train_size,
                    eval_size=t.eval_size, shots=t.shots, data_seed=t.data_seed, verifier=verifier, style=t.style)
    # The loop sizes generation chunks by the worst case of one draw, so the bound must be tight:
    # the longest prompt this task can produce (capped by the configured limit).
    max_prompt = min(g.max_prompt_tokens, longest_prompt(task, model, chat=chat, hints=t.rationalize))
    sampler = HFGenerator(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                          stop_strings=tuple(g.stop_strings), batch_size=g.batch_size,
                          max_prompt_tokens=max_prompt, bf16=g.bf16, chat=chat, decode=g.decode)
    task.evaluator = HFGenerator(max_new_tokens=g.max_new_tokens, temperature=0.0,
                                 stop_strings=tuple(g.stop_strings), batch_size=g.eval_batch_size,
                                 max_prompt_tokens=g.max_prompt_tokens, bf16=g.bf16, chat=chat, decode=g.decode,
                                 progress="evaluating on the held-out problems")
    generator: Any = Rationalizing(sampler, verifier) if t.rationalize else sampler
    outside_signal(task, settings, g, chat=chat, count_tokens=TokenCount(model.tokenizer))
    return Components(task=task, generator=generator, selector=make_selector(config.selector),
                      learner=sft_learner(settings.learner, model, chat=chat))


def outside_signal(task: MathTask, settings: MathSettings, g: GeneratorConfig, *, chat: bool,
                   count_tokens: Any = None) -> None:
    """Escaping Collapse's parts of the task: its filter, its labeler, sampled pass@k (an in-process
    generator's settings ``g``: the config edge refuses them beside a served generator)."""
    from functools import partial

    from synthloop.models.hf import HFGenerator
    from synthloop.signals.filters import Audited, MajorityVote, NoisyFilter
    from synthloop.signals.source import LabeledPrompts
    from synthloop.tasks.math import answer_key

    t = settings.task
    if isinstance(t.filter, NoisyFilterConfig):
        task.filter = NoisyFilter(task.gold, false_accept=t.filter.false_accept,
                                  false_reject=t.filter.false_reject, seed=t.filter.seed)
    elif isinstance(t.filter, MajorityFilterConfig):
        vote = MajorityVote(partial(answer_key, require_marker=t.require_marker), min_share=t.filter.min_share)
        task.filter = Audited(vote, task.gold)
    if t.labeler is not None:
        labeler = build_labeler(t.labeler, chat=chat, stop=tuple(g.stop_strings), count_tokens=count_tokens)
        task.labels = LabeledPrompts(task, labeler)
    if t.eval_samples > 0:
        task.eval_samples, task.eval_train_size = t.eval_samples, t.eval_train_size
        task.eval_sampler = HFGenerator(max_new_tokens=g.max_new_tokens, temperature=max(g.temperature, 1e-3),
                                        top_p=g.top_p, stop_strings=tuple(g.stop_strings),
                                        batch_size=g.eval_batch_size, max_prompt_tokens=g.max_prompt_tokens,
                                        bf16=g.bf16, chat=chat)


@dataclass(frozen=True)
class TokenCount:
    """Tokens of a text under the student's tokenizer: what a controlled label costs in tokens, so
    ``label`` prices name the same quantities for a controlled labeler as for a model labeler."""

    tokenizer: Any

    def __call__(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def build_labeler(spec: ControlledLabelerConfig | ModelLabelerConfig, *, chat: bool, stop: tuple[str, ...],
                  count_tokens: Any = None) -> Any:
    """The configured labeler: gold corrupted at rate 1 - beta (its tokens counted by ``count_tokens``,
    the student's tokenizer), or a model's greedy answers (its generator counts them)."""
    from synthloop.signals.labelers import ControlledLabeler, ModelLabeler, corrupt_math

    if isinstance(spec, ControlledLabelerConfig):
        # few-shot text reads "Answer: <solution>": the student's completions start with that space,
        # and a label without it would be a token sequence the model never produced
        return ControlledLabeler(beta=spec.beta, corrupt=corrupt_math, prefix="" if chat else " ",
                                 count_tokens=count_tokens)
    from synthloop.models.hf import HFGenerator, export_smollm2, load_pretrained

    labeler_model = load_pretrained(export_smollm2() if spec.source == "smollm2" else spec.source)
    return ModelLabeler(HFGenerator(max_new_tokens=spec.max_new_tokens, temperature=0.0, stop_strings=stop,
                                    chat=chat), labeler_model)


def sft_learner(spec: LearnerConfig, model: HFModel, *, chat: bool) -> Any:
    from synthloop.models.hf import LoraSettings, SFTLearner

    lora = None if spec.lora is None else LoraSettings(
        rank=spec.lora.rank, alpha=spec.lora.alpha, dropout=spec.lora.dropout,
        target_modules=tuple(spec.lora.target_modules) if spec.lora.target_modules else None)
    return SFTLearner(base=model, lr=spec.lr, weight_decay=spec.weight_decay, batch_size=spec.batch_size,
                      grad_accum=spec.grad_accum, epochs=spec.epochs, max_length=spec.max_length, bf16=spec.bf16,
                      reset=spec.reset, lora=lora, chat=chat, warmup_steps=spec.warmup_steps)


def openai_components(config: RunConfig, settings: MathSettings, spec: OpenAIGeneratorConfig, *,
                      model: HFModel | None = None) -> Components:
    """The served model answers the training prompts; a failed request is an ERROR verdict with its
    reason. The prompt-token bound per draw is the longest training prompt's bytes plus the chat
    template (``template_tokens``): the server's tokenizer is not at hand here."""
    from synthloop.engines.client import Endpoint
    from synthloop.engines.openai_config import resolve_connection
    from synthloop.engines.openai_generator import (
        OpenAIGenerator,
        RequestErrors,
        probe_seed,
        prompt_token_bound,
    )
    from synthloop.loop import Components
    from synthloop.models.hf import HFGenerator
    from synthloop.tasks.math import MathTask, MathVerifier

    t, chat = settings.task, settings.task.style == "chat"
    try:
        connection = resolve_connection(spec)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    model = model or build_model(settings)
    evaluator = HFGenerator(max_new_tokens=spec.max_tokens, temperature=0.0, stop_strings=spec.stop,
                            batch_size=spec.eval_batch_size, max_prompt_tokens=spec.max_prompt_tokens,
                            bf16=spec.bf16, chat=chat)
    verifier = RequestErrors(MathVerifier(timeout_seconds=t.answer_timeout, require_marker=t.require_marker))
    task = MathTask(levels_of(settings), evaluator=evaluator, train_size=t.train_size, eval_size=t.eval_size,
                    shots=t.shots, data_seed=t.data_seed, verifier=verifier, style=t.style)
    pool = task.pools_.train
    texts = prompts_for(pool, range(len(pool)), task.pools_.shots, style=t.style).items["prompt"]
    longest = max(prompt_token_bound(text, template_tokens=spec.template_tokens) for text in texts)
    endpoint = Endpoint(spec, connection, api=spec.api or ("chat" if chat else "completions"))
    honoured = spec.seed_honoured if spec.seed_honoured is not None else probe_seed(endpoint)
    generator = OpenAIGenerator(endpoint, max_prompt_tokens=longest, seed_honoured=honoured)
    return Components(task=task, generator=generator, selector=make_selector(config.selector),
                      learner=sft_learner(settings.learner, model, chat=chat))
