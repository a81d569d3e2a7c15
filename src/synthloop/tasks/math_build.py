"""Wiring of the math family from a validated config (imports torch and transformers)."""

from __future__ import annotations

from typing import Any

from synthloop.configs import RunConfig, make_selector
from synthloop.loop import Components
from synthloop.models.hf import (
    HFGenerator,
    HFModel,
    LoraSettings,
    SFTLearner,
    encode_prompt,
    export_smollm2,
    load_pretrained,
)
from synthloop.tasks.math import (
    Level,
    MathTask,
    MathVerifier,
    Rationalizing,
    load_problems,
    prompts_for,
    question_prompt,
)
from synthloop.tasks.math_config import (
    MathSettings,
    PretrainedConfig,
    ScratchModelConfig,
    SmolLM2Config,
)


def levels_of(settings: MathSettings) -> list[Level]:
    return [Level(lv.name, lv.dataset, dict(lv.params), lv.weight) for lv in settings.task.levels]


def build_model(settings: MathSettings) -> HFModel:
    spec = settings.model
    if isinstance(spec, SmolLM2Config):
        return load_pretrained(export_smollm2())
    if isinstance(spec, PretrainedConfig):
        return load_pretrained(spec.source)
    assert isinstance(spec, ScratchModelConfig)
    return scratch_for(spec, levels_of(settings), data_seed=settings.task.data_seed)


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
                         architecture=architecture, training=training)


def longest_prompt(task: MathTask, model: HFModel, *, chat: bool, hints: bool) -> int:
    """Tokens of the longest training prompt (hint prompts included when rationalizing)."""
    pool = task.pools_.train
    prompts = prompts_for(pool, range(len(pool)), task.pools_.shots, style=task.style)
    texts = list(prompts.items["prompt"]) + (list(prompts.items["hint_prompt"]) if hints else [])
    return max(len(encode_prompt(model.tokenizer, text, chat=chat)) for text in texts)


def build_components(config: RunConfig, settings: MathSettings, *, model: HFModel | None = None) -> Any:
    g, t = settings.generator, settings.task
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
                          max_prompt_tokens=max_prompt, bf16=g.bf16, chat=chat)
    task.evaluator = HFGenerator(max_new_tokens=g.max_new_tokens, temperature=0.0,
                                 stop_strings=tuple(g.stop_strings), batch_size=g.eval_batch_size,
                                 max_prompt_tokens=g.max_prompt_tokens, bf16=g.bf16, chat=chat)
    lr = settings.learner
    lora = None if lr.lora is None else LoraSettings(
        rank=lr.lora.rank, alpha=lr.lora.alpha, dropout=lr.lora.dropout,
        target_modules=tuple(lr.lora.target_modules) if lr.lora.target_modules else None)
    learner = SFTLearner(base=model, lr=lr.lr, weight_decay=lr.weight_decay, batch_size=lr.batch_size,
                         grad_accum=lr.grad_accum, epochs=lr.epochs, max_length=lr.max_length, bf16=lr.bf16,
                         reset=lr.reset, lora=lora, chat=chat, warmup_steps=lr.warmup_steps)
    generator: Any = Rationalizing(sampler, verifier) if t.rationalize else sampler
    return Components(task=task, generator=generator, selector=make_selector(config.selector), learner=learner)
