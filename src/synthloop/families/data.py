"""Your own data (``task.kind: data``): prompts and reference answers from a JSONL file, a Parquet
file or a local Hugging Face ``datasets`` folder, checked by a verifier of your choice.

Validation reads only the file's field names (the first JSONL row, the Parquet schema, a ``datasets``
folder's ``dataset_info.json``) and imports the user's verifier; ``build`` imports torch and
transformers. The model, generator and learner sections are the math family's (``families/math.py``):

    task:      {kind: data, path, format: auto | jsonl | parquet | hf, hf_split, prompt_field,
                answer_field, id_field, held_out (a count, or a fraction below 1), train_size,
                split_seed, template, style: plain | chat,
                verifier: exact | normalized | math-verify | module:function, verifier_path,
                pass_threshold, check_timeout}
    model:     {kind: pretrained, source} | {kind: smollm2} | {kind: tiny | scratch, ...}, device, dtype
    generator: {kind: hf, ...}      learner: {kind: sft, ..., lora: {...}}

A ``scratch`` model is a tiny GPT-2 pretrained on the training rows' prompts with their reference
answers (a warm start from the labels you have); ``tiny`` is the same network untrained (tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator

from synthloop.configs import ConfigError, RunConfig, Strict, make_selector, validate_kind, validate_section
from synthloop.families.math import (
    GeneratorConfig,
    LearnerConfig,
    PretrainedConfig,
    SmolLM2Config,
    Steps,
    sft_learner,
)
from synthloop.families.placement import Placement
from synthloop.strict import Count, Seed
from synthloop.tasks.data import DataError, Example, data_format, fields_of, resolve_callable

if TYPE_CHECKING:
    from synthloop.loop import Components
    from synthloop.models.hf import HFModel
    from synthloop.protocols import Verifier
    from synthloop.tasks.data import DataTask

BUILT_IN_VERIFIERS = ("exact", "normalized", "math-verify")
FieldName = Annotated[str, Field(min_length=1, max_length=200)]


class DataTaskConfig(Strict):
    kind: Literal["data"]
    path: Path  # a .jsonl / .parquet file or a datasets folder (save_to_disk)
    format: Literal["auto", "jsonl", "parquet", "hf"] = "auto"
    hf_split: FieldName | None = None  # a DatasetDict folder: which split to read
    prompt_field: FieldName = "prompt"
    answer_field: FieldName = "answer"
    id_field: FieldName | None = None  # default: the row's position
    held_out: Annotated[float, Field(gt=0, le=10**7)] = 0.2  # below 1: a fraction; else a count of rows
    train_size: Count | None = None  # at most this many training rows (default: all the rest)
    split_seed: Seed = 0  # fixes which rows are held out, across runs and schedules
    template: Annotated[str, Field(min_length=1)] = "Question: {prompt}\nAnswer:"
    style: Literal["plain", "chat"] = "plain"  # chat: the templated prompt as a user turn of the chat template
    verifier: Annotated[str, Field(min_length=1)] = "normalized"  # exact | normalized | math-verify | module:function
    verifier_path: Path | None = None  # a folder holding the verifier's module file (else: importable)
    pass_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5  # a callable's number passes from here up
    check_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0  # seconds per check (math-verify, callables)

    @field_validator("held_out")
    @classmethod
    def _whole_count(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"a count must be whole (or a fraction below 1), got {value}")
        return value

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("must contain {prompt}, where each row's prompt goes")
        return value

    @field_validator("verifier")
    @classmethod
    def _known_verifier(cls, value: str) -> str:
        if value not in BUILT_IN_VERIFIERS and ":" not in value:
            raise ValueError(f"{value!r} is neither one of {', '.join(BUILT_IN_VERIFIERS)} nor module:function")
        return value


class DataScratchConfig(Placement):
    """A tiny GPT-2 pretrained on the training rows (prompt and reference answer)."""

    kind: Literal["scratch"]
    n_layer: Count = 2
    n_embd: Count = 64
    n_head: Count = 4
    n_positions: Count = 256
    vocab_size: Annotated[int, Field(ge=64, le=1 << 20)] = 256
    pretrain_steps: Steps = 300
    pretrain_batch_size: Count = 32
    pretrain_lr: Annotated[float, Field(gt=0)] = 3e-3
    pretrain_bf16: bool = False
    seed: Seed = 0


class DataTinyConfig(DataScratchConfig):
    """Like ``scratch`` with no pretraining by default: random weights, for tests."""

    kind: Literal["tiny"]  # type: ignore[assignment]
    pretrain_steps: Steps = 0


ModelConfig = DataScratchConfig | DataTinyConfig | SmolLM2Config | PretrainedConfig
MODELS: dict[str, type[ModelConfig]] = {
    "pretrained": PretrainedConfig, "smollm2": SmolLM2Config, "scratch": DataScratchConfig, "tiny": DataTinyConfig,
}


@dataclass(frozen=True)
class DataSettings:
    task: DataTaskConfig
    model: ModelConfig
    generator: GeneratorConfig
    learner: LearnerConfig


class DataFamily:
    def validate(self, config: RunConfig) -> DataSettings:
        task = validate_section(config.task, DataTaskConfig, "task")
        model = validate_kind(config.model, MODELS, "model")
        generator = validate_section(config.generator, GeneratorConfig, "generator")
        learner = validate_section(config.learner, LearnerConfig, "learner")
        if isinstance(model, DataScratchConfig) and model.n_embd % model.n_head:
            raise ConfigError("model.n_embd: must be a multiple of model.n_head")
        check_fields(task)
        make_verifier(task)  # a module that does not import or a name it lacks fails here, not mid-run
        return DataSettings(task=task, model=model, generator=generator, learner=learner)

    def usage_per_draw(self, settings: DataSettings) -> Mapping[str, float]:
        """Rough tokens of one draw, for planning only (the ledger charges measured tokens): about 4
        characters per token for the templated prompt, a quarter of ``max_new_tokens`` for the answer."""
        completion = settings.generator.max_new_tokens / 4
        prompt = mean_prompt_chars(settings.task) / 4
        return {"samples": 1.0, "tokens": prompt + completion, "prompt_tokens": prompt,
                "completion_tokens": completion}

    def usage_per_example(self, settings: DataSettings) -> Mapping[str, float]:
        return self.usage_per_draw(settings)

    def schedule_defaults(self, settings: DataSettings) -> dict[str, float]:
        return {}

    def build(self, config: RunConfig, settings: DataSettings) -> Components:
        return build_components(config, settings)


FAMILY = DataFamily()


# -- validation: the file's fields and the verifier ------------------------------------------------


def check_fields(task: DataTaskConfig) -> None:
    """The configured fields exist in the source (one-line ConfigError naming the task key otherwise)."""
    try:
        data_format(task.path, task.format)
        fields = fields_of(task.path, fmt=task.format, split=task.hf_split)
    except DataError as error:
        raise ConfigError(f"task.path: {error}") from None
    for key in ("prompt_field", "answer_field", "id_field"):
        name = getattr(task, key)
        if name is not None and name not in fields:
            raise ConfigError(f"task.{key}: {task.path} has no field {name!r}; its fields are {', '.join(fields)}")


def make_verifier(task: DataTaskConfig) -> Verifier:
    """The verifier ``task.verifier`` names (imports the user's module; no ML framework)."""
    from synthloop.tasks.data import CallableVerifier, ExactMatch, NormalizedMatch
    from synthloop.tasks.math import MathVerifier

    if task.verifier == "exact":
        return ExactMatch()
    if task.verifier == "normalized":
        return NormalizedMatch()
    if task.verifier == "math-verify":
        return MathVerifier(timeout_seconds=task.check_timeout)
    try:
        function = resolve_callable(task.verifier, search=task.verifier_path)
    except DataError as error:
        raise ConfigError(f"task.{error}") from None
    return CallableVerifier(function, name=task.verifier, pass_threshold=task.pass_threshold,
                            timeout_seconds=task.check_timeout)


def load_split(task: DataTaskConfig) -> tuple[list[Example], list[Example]]:
    """The seeded (train, held-out) rows of the source."""
    from synthloop.tasks.data import load_examples, split_examples

    try:
        rows = load_examples(task.path, prompt_field=task.prompt_field, answer_field=task.answer_field,
                             id_field=task.id_field, fmt=task.format, split=task.hf_split)
        return split_examples(rows, held_out=task.held_out, seed=task.split_seed, train_size=task.train_size)
    except DataError as error:
        raise ConfigError(f"task: {error}") from None


def mean_prompt_chars(task: DataTaskConfig) -> float:
    train, _ = load_split(task)
    return sum(len(task.template.replace("{prompt}", e.prompt)) for e in train) / len(train)


# -- wiring: the task, the Hugging Face model, sampler, evaluator and learner ------------------------


def build_model(settings: DataSettings, train: list[Example]) -> HFModel:
    from synthloop.models.devices import DeviceError
    from synthloop.models.hf import export_smollm2, load_pretrained

    spec = settings.model
    try:
        if isinstance(spec, SmolLM2Config):
            return load_pretrained(export_smollm2(), device=spec.device, dtype=spec.dtype)
        if isinstance(spec, PretrainedConfig):
            return load_pretrained(spec.source, device=spec.device, dtype=spec.dtype)
        return scratch_for(spec, train, template=settings.task.template)
    except DeviceError as error:
        raise ConfigError(f"model.{error}") from None


def scratch_for(spec: DataScratchConfig, train: list[Example], *, template: str) -> HFModel:
    from synthloop.models.scratch import PretrainConfig, TinyGPT2Config, scratch_model

    texts = [f"{template.replace('{prompt}', e.prompt)} {e.answer}" for e in train]
    architecture = TinyGPT2Config(n_layer=spec.n_layer, n_embd=spec.n_embd, n_head=spec.n_head,
                                  n_positions=spec.n_positions, vocab_size=spec.vocab_size, seed=spec.seed)
    training = PretrainConfig(steps=spec.pretrain_steps, batch_size=spec.pretrain_batch_size,
                              lr=spec.pretrain_lr, bf16=spec.pretrain_bf16, seed=spec.seed)
    return scratch_model(texts, tokenizer_texts=texts, vocab_size=spec.vocab_size, architecture=architecture,
                         training=training, device=spec.device, dtype=spec.dtype,
                         description="pretraining a small model on your training rows (once; cached)")


def build_task(settings: DataSettings, model: HFModel, train: list[Example], held_out: list[Example]
               ) -> tuple[DataTask, Any]:
    """The task (with its greedy evaluator) and the sampler, both bounded by the longest prompt."""
    from synthloop.models.hf import HFGenerator, encode_prompt
    from synthloop.tasks.data import DataTask

    g, t = settings.generator, settings.task
    chat = t.style == "chat"
    longest = max(len(encode_prompt(model.tokenizer, t.template.replace("{prompt}", e.prompt), chat=chat))
                  for e in train)
    options: dict[str, Any] = {"max_new_tokens": g.max_new_tokens, "stop_strings": tuple(g.stop_strings),
                               "bf16": g.bf16, "chat": chat, "carry": ("question_prompt", "id")}
    sampler = HFGenerator(temperature=g.temperature, top_p=g.top_p, batch_size=g.batch_size,
                          max_prompt_tokens=min(g.max_prompt_tokens, longest), **options)
    evaluator = HFGenerator(temperature=0.0, batch_size=g.eval_batch_size, max_prompt_tokens=g.max_prompt_tokens,
                            progress="evaluating on the held-out rows", **options)
    task = DataTask(train, held_out, evaluator=evaluator, verifier=make_verifier(t), template=t.template,
                    label=t.path.stem or "data")
    return task, sampler


def build_components(config: RunConfig, settings: DataSettings, *, model: HFModel | None = None) -> Components:
    from synthloop.loop import Components

    train, held_out = load_split(settings.task)
    model = model or build_model(settings, train)
    task, sampler = build_task(settings, model, train, held_out)
    learner = sft_learner(settings.learner, model, chat=settings.task.style == "chat")
    return Components(task=task, generator=sampler, selector=make_selector(config.selector), learner=learner)
