"""The active synthetic data family (``task.kind: active``): a teacher writes new examples from
seed examples the student chooses (Kessler et al., arXiv 2512.00884; ``docs/active.md``).

    task:      {kind: active, levels: [...], train_size (seed pool per level), eval_size, shots, style,
                data_seed, mode: new_question | new_answer,
                seeds: {selector: random | loss_own | loss_gold | reward | judge | judge_hard | balanced
                        | diversity | badge, candidates: 4, hard_share, hard_threshold},
                student: {max_new_tokens, temperature, batch_size, eval_batch_size, bf16}}
    generator: the teacher: {kind: programmatic, max_completion_tokens}
               | {kind: hf, source: <hub id, path or "smollm2">, max_new_tokens, temperature, ...}
               | {kind: endpoint, model, base_url, max_tokens, api_key_env, ...}  (an OpenAI-compatible
                 server: the settings of ``engines.openai_config.OpenAISettings``)
    model:     the student, as in the math family (scratch, tiny, smollm2, pretrained)
    learner:   as in the math family (sft; reset: continue | restart; lora)
    training_set: {kind: accumulate}   (the growing set of teacher examples; any kind works)

The teacher is charged to the ``label`` stage (samples, tokens, prompt_tokens, completion_tokens; an
endpoint's as the server reports them in ``usage``);
scoring the seed pool to ``score`` (samples, forward_passes of the student, and a judge's tokens).
Static generation is ``seeds.selector: random`` with one iteration (``schedule: {kind: explicit,
sizes: [N]}``): the same code, every seed drawn up front.

Validation and planning import no ML framework; ``build`` imports torch and transformers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from synthloop.active.policy import SCORE_OF, ActivePolicy, ActiveSelectorConfig
from synthloop.configs import ConfigError, RunConfig, Strict, make_selector, validate_kind, validate_section
from synthloop.engines.openai_config import OpenAISettings
from synthloop.families.math import MODELS, LearnerConfig, LevelConfig, ModelConfig
from synthloop.policies import UniformConfig
from synthloop.strict import Count, Seed

if TYPE_CHECKING:
    from synthloop.loop import Components
    from synthloop.models.hf import HFModel
    from synthloop.tasks.teachers import SeedTask


class StudentConfig(Strict):
    """How the student answers seeds (for scoring) and held-out problems (greedy, for evaluation)."""

    max_new_tokens: Count = 64
    temperature: Annotated[float, Field(ge=0)] = 0.7
    batch_size: Count = 16
    eval_batch_size: Count = 32
    bf16: bool = True
    stop_strings: list[str] = Field(default_factory=lambda: ["\nQuestion:"])


class ActiveTaskConfig(Strict):
    kind: Literal["active"]
    levels: Annotated[list[LevelConfig], Field(min_length=1, max_length=100)]
    train_size: Count = 500  # seed pool per level
    eval_size: Count = 100
    shots: Annotated[int, Field(ge=0, le=16)] = 0
    style: Literal["few_shot", "chat"] = "few_shot"
    data_seed: Seed = 0
    mode: Literal["new_question", "new_answer"] = "new_question"
    seeds: ActiveSelectorConfig = ActiveSelectorConfig()
    student: StudentConfig = StudentConfig()


class ProgrammaticTeacherConfig(Strict):
    """The programmatic teacher (reasoning-gym with fresh values): not a language model."""

    kind: Literal["programmatic"]
    max_completion_tokens: Count = 512


class HFTeacherConfig(Strict):
    """A local Hugging Face model as teacher (and judge)."""

    kind: Literal["hf"]
    source: Annotated[str, Field(min_length=1)] = "smollm2"  # "smollm2", a hub id or a local path
    max_new_tokens: Count = 256
    temperature: Annotated[float, Field(ge=0)] = 0.7
    batch_size: Count = 8
    max_prompt_tokens: Count = 1024
    bf16: bool = True


class EndpointTeacherConfig(OpenAISettings):
    """A model behind an OpenAI-compatible server as teacher (and judge, for the judge selectors):
    :class:`~synthloop.tasks.teachers.LLMTeacher` around an ``OpenAIGenerator``. The key is read
    from ``$<api_key_env>`` when the run starts and never written; ``api`` unset is ``chat`` (the
    teacher prompt is an instruction)."""

    kind: Literal["endpoint"]
    max_tokens: Count = 256  # one question and its worked solution


TeacherConfig = ProgrammaticTeacherConfig | HFTeacherConfig | EndpointTeacherConfig
TEACHERS: dict[str, type[TeacherConfig]] = {
    "programmatic": ProgrammaticTeacherConfig, "hf": HFTeacherConfig, "endpoint": EndpointTeacherConfig}


@dataclass(frozen=True)
class ActiveSettings:
    task: ActiveTaskConfig
    model: ModelConfig
    teacher: TeacherConfig
    learner: LearnerConfig


class ActiveFamily:
    def validate(self, config: RunConfig) -> ActiveSettings:
        task = validate_section(config.task, ActiveTaskConfig, "task")
        model = validate_kind(config.model, MODELS, "model")
        teacher = validate_kind(config.generator, TEACHERS, "generator")
        learner = validate_section(config.learner, LearnerConfig, "learner")
        if not isinstance(config.prompt_policy, UniformConfig):
            raise ConfigError("prompt_policy: the active family chooses seeds with task.seeds.selector; "
                              "leave prompt_policy unset")
        names = [level.name for level in task.levels]
        if len(set(names)) != len(names):
            raise ConfigError(f"task.levels: level names must be unique, got {names}")
        return ActiveSettings(task=task, model=model, teacher=teacher, learner=learner)

    def usage_per_draw(self, settings: ActiveSettings) -> Mapping[str, float]:
        """Expected usage of one teacher example, for planning only (the ledger charges what the
        teacher and the scorer measure): ``label:`` the teacher's, ``score:`` the student's scoring
        of ``candidates`` seeds per example (and a judge's tokens)."""
        read, written = teacher_tokens(settings)
        usage = {"label:samples": 1.0, "label:tokens": read + written, "label:prompt_tokens": read,
                 "label:completion_tokens": written}
        seeds = settings.task.seeds
        kind = SCORE_OF[seeds.selector]
        if kind is not None:
            factor = 2 * seeds.candidates if kind == "embedding" else seeds.candidates
            sampling = 0.0 if kind in ("embedding", "loss_gold") else 1 + settings.task.student.max_new_tokens / 2
            usage.update({"score:samples": factor, "score:forward_passes": factor * (1 + sampling)})
            if kind == "judge":
                judged = factor * (read + settings.task.student.max_new_tokens / 2 + 3)
                usage.update({"score:tokens": judged, "score:prompt_tokens": judged - 3 * factor,
                              "score:completion_tokens": 3 * factor})
        return usage

    def usage_per_example(self, settings: ActiveSettings) -> Mapping[str, float]:
        """Training reads about the question and solution the teacher wrote."""
        _, written = teacher_tokens(settings)
        return {"samples": 1.0, "tokens": written, "completion_tokens": written / 2}

    def schedule_defaults(self, settings: ActiveSettings) -> dict[str, float]:
        return {}

    def build(self, config: RunConfig, settings: ActiveSettings) -> Components:
        return build_components(config, settings)


FAMILY = ActiveFamily()


def teacher_tokens(settings: ActiveSettings) -> tuple[float, float]:
    """Mean (read, written) teacher text tokens over four seeds per level: the programmatic
    teacher's count (an LLM teacher's tokenizer differs; the ledger charges what it reports)."""
    from synthloop.tasks.math import Level, build_pools
    from synthloop.tasks.teachers import teacher_prompt, text_tokens

    t = settings.task
    levels = [Level(lv.name, lv.dataset, dict(lv.params)) for lv in t.levels]
    pool = build_pools(levels, train_size=4, eval_size=1, n_shots=0, data_seed=t.data_seed).train
    read = sum(text_tokens(teacher_prompt(p.question, p.solution, t.mode)) for p in pool) / len(pool)
    written = sum(text_tokens(p.question if t.mode == "new_question" else "") + text_tokens(p.solution)
                  for p in pool) / len(pool)
    return read, written


# -- wiring: the seed task, the teacher, the scorer, the student --------------------------------


def build_student(settings: ActiveSettings) -> HFModel:
    from synthloop.families.math import PretrainedConfig, ScratchModelConfig, SmolLM2Config, scratch_for
    from synthloop.models.hf import export_smollm2, load_pretrained
    from synthloop.tasks.math import Level

    spec = settings.model
    if isinstance(spec, SmolLM2Config):
        return load_pretrained(export_smollm2())
    if isinstance(spec, PretrainedConfig):
        return load_pretrained(spec.source)
    assert isinstance(spec, ScratchModelConfig)
    levels = [Level(lv.name, lv.dataset, dict(lv.params), lv.weight) for lv in settings.task.levels]
    return scratch_for(spec, levels, data_seed=settings.task.data_seed)


def seed_task(settings: ActiveSettings, student: HFModel) -> SeedTask:
    """The seed pool and held-out problems; a served teacher's failed requests are ERROR verdicts
    carrying the request's error (``RequestErrors``), the rest the teacher verifier's."""
    from synthloop.models.hf import HFGenerator
    from synthloop.tasks.math import Level, MathTask
    from synthloop.tasks.teachers import SeedTask, TeacherVerifier

    t, s = settings.task, settings.task.student
    levels = [Level(lv.name, lv.dataset, dict(lv.params), lv.weight) for lv in t.levels]
    evaluator = HFGenerator(max_new_tokens=s.max_new_tokens, temperature=0.0, stop_strings=tuple(s.stop_strings),
                            batch_size=s.eval_batch_size, bf16=s.bf16, chat=t.style == "chat")
    task = MathTask(levels, evaluator=evaluator, train_size=t.train_size, eval_size=t.eval_size, shots=t.shots,
                    data_seed=t.data_seed, style=t.style)
    verifier: Any = TeacherVerifier(mode=t.mode)
    if isinstance(settings.teacher, EndpointTeacherConfig):
        from synthloop.engines.openai_generator import RequestErrors

        verifier = RequestErrors(verifier)
    return SeedTask(task, mode=t.mode, verifier=verifier)


#: a student's answer token takes at most this many UTF-8 bytes in the judge prompt's bound (byte-level
#: BPE tokens of small vocabularies are short; a longer prompt is an ERROR row, unrated, never sent)
ANSWER_BYTES_PER_TOKEN = 16


def served_generator(spec: EndpointTeacherConfig, texts: Sequence[str], *, extra_bytes: int = 0,
                     **update: Any) -> Any:
    """An ``OpenAIGenerator`` on ``spec``'s server (its settings with ``update``), the bound per draw
    covering the longest of ``texts`` plus ``extra_bytes``: the server's tokenizer is not at hand, so
    a prompt counts at most one token per UTF-8 byte plus the chat template (``template_tokens``)."""
    from synthloop.engines.client import Endpoint
    from synthloop.engines.openai_config import resolve_connection
    from synthloop.engines.openai_generator import OpenAIGenerator, probe_seed, prompt_token_bound

    try:
        connection = resolve_connection(spec)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    endpoint = Endpoint(spec.model_copy(update=update), connection, api=spec.api or "chat")
    longest = max(prompt_token_bound(text, template_tokens=spec.template_tokens) for text in texts) + extra_bytes
    honoured = spec.seed_honoured if spec.seed_honoured is not None else probe_seed(endpoint)
    return OpenAIGenerator(endpoint, max_prompt_tokens=longest, seed_honoured=honoured)


def build_teacher(settings: ActiveSettings, task: SeedTask) -> tuple[Any, Any]:
    """The teacher generator and the model it samples from (None for the programmatic teacher)."""
    from synthloop.tasks.teachers import LLMTeacher, ProgrammaticTeacher, teacher_prompt, text_tokens

    t, spec = settings.task, settings.teacher
    pool = task.task.pools_.train
    if isinstance(spec, ProgrammaticTeacherConfig):
        longest = max(text_tokens(teacher_prompt(p.question, p.solution, t.mode)) for p in pool)
        return ProgrammaticTeacher(mode=t.mode, max_prompt_tokens=longest, style=t.style,
                                   max_completion_tokens=spec.max_completion_tokens), None
    if isinstance(spec, EndpointTeacherConfig):
        texts = [teacher_prompt(p.question, p.solution, t.mode) for p in pool]
        return LLMTeacher(served_generator(spec, texts), None, mode=t.mode, style=t.style), None
    assert isinstance(spec, HFTeacherConfig)
    from synthloop.models.hf import HFGenerator, export_smollm2, load_pretrained

    model = load_pretrained(export_smollm2() if spec.source == "smollm2" else spec.source)
    sampler = HFGenerator(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                          batch_size=spec.batch_size, max_prompt_tokens=spec.max_prompt_tokens, bf16=spec.bf16,
                          chat=model.tokenizer.chat_template is not None)
    return LLMTeacher(sampler, model, mode=t.mode, style=t.style), model


def build_scorer(settings: ActiveSettings, task: SeedTask, student: HFModel, teacher_model: Any) -> Any:
    from synthloop.models.hf import HFGenerator, encode_prompt
    from synthloop.models.scoring import SentenceEmbedder, StudentScorer
    from synthloop.tasks.math import MathVerifier

    t, s = settings.task, settings.task.student
    kind = SCORE_OF[t.seeds.selector]
    if kind is None:
        return None
    if kind == "embedding":
        return SentenceEmbedder()
    chat = t.style == "chat"
    longest = max(len(encode_prompt(student.tokenizer, p, chat=chat))
                  for p in task.prompts_at(_all(task.pool_size)).items["prompt"])
    sampler = HFGenerator(max_new_tokens=s.max_new_tokens, temperature=s.temperature, batch_size=s.batch_size,
                          stop_strings=tuple(s.stop_strings), max_prompt_tokens=longest, bf16=s.bf16, chat=chat)
    judge = build_judge(settings, task, teacher_model) if kind == "judge" else None
    return StudentScorer(kind, sampler, verifier=MathVerifier() if kind == "reward" else None, judge=judge,
                         chat=chat, bf16=s.bf16)


def build_judge(settings: ActiveSettings, task: SeedTask, teacher_model: Any) -> Any:
    """The teacher as judge of the student's answers: the programmatic judge for the programmatic
    teacher, else the teacher's model (local or served) asked for a rating (4 tokens, greedy)."""
    from synthloop.models.hf import HFGenerator
    from synthloop.tasks.teachers import JUDGE_PROMPT, LLMJudge, ProgrammaticJudge, text_tokens

    spec, answer_tokens = settings.teacher, settings.task.student.max_new_tokens
    empty = [JUDGE_PROMPT.format(question=p.question, solution=p.solution, answer="") for p in task.task.pools_.train]
    if isinstance(spec, ProgrammaticTeacherConfig):
        return ProgrammaticJudge(max_prompt_tokens=max(map(text_tokens, empty)) + 4 * answer_tokens)
    if isinstance(spec, EndpointTeacherConfig):
        return LLMJudge(served_generator(spec, empty, extra_bytes=ANSWER_BYTES_PER_TOKEN * answer_tokens,
                                         max_tokens=4, temperature=0.0))
    return LLMJudge(HFGenerator(max_new_tokens=4, temperature=0.0, max_prompt_tokens=spec.max_prompt_tokens,
                                bf16=spec.bf16, batch_size=spec.batch_size), teacher_model)


def _all(n: int) -> Any:
    import numpy as np

    return np.arange(n, dtype=np.int64)


def build_components(config: RunConfig, settings: ActiveSettings, *, student: HFModel | None = None) -> Components:
    from synthloop.families.math import sft_learner
    from synthloop.loop import Components, Stages
    from synthloop.training_set import make_training_set

    student = student or build_student(settings)
    task = seed_task(settings, student)
    teacher, teacher_model = build_teacher(settings, task)
    seeds = settings.task.seeds
    policy = ActivePolicy(pool_size=task.pool_size, selector=seeds.selector,
                          scorer=build_scorer(settings, task, student, teacher_model),
                          candidates=seeds.candidates, hard_share=seeds.hard_share, hard_threshold=seeds.hard_threshold)
    return Components(task=task, generator=teacher, selector=make_selector(config.selector),
                      learner=sft_learner(settings.learner, student, chat=settings.task.style == "chat"),
                      prompt_policy=policy, training_set=make_training_set(config.training_set),
                      stages=Stages(generate="label"))
