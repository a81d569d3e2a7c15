"""The ``diagnose`` stage: estimates, per iteration, of how the selected data relates to the
task's anchor and reference (held-out) data, and of its diversity (``docs/diagnostics.md``).

A task that supports it implements ``diagnostic_view(candidates, prompts) -> View`` (features for
the estimators: raw vectors, pixels, sentence embeddings; texts; answers) and
``diagnostic_reference(n, rng) -> (anchor View, reference View)``. Every value is an estimate;
``ESTIMATORS`` names the estimator of each, and the record carries those labels with the values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from synthloop.diagnostics.estimators import knn_entropy, knn_kl
from synthloop.diagnostics.text import distinct_n, duplicate_rate, plugin_entropy
from synthloop.records import Candidates, Prompts

K = 5
ESTIMATORS: dict[str, str] = {
    "divergence_to_reference": "estimate: KL(selected || reference) in nats, kNN (Wang-Kulkarni-Verdu, k=5)",
    "divergence_from_reference": "estimate: KL(reference || selected) in nats, kNN (Wang-Kulkarni-Verdu, k=5)",
    "information_gain": "estimate: KL(anchor || reference) - KL(selected || reference) in nats, kNN "
                        "(the reverse-bottleneck KL gap, in the feature space)",
    "entropy": "estimate: differential entropy of the selected features in nats, kNN (Kozachenko-Leonenko, k=5)",
    "dispersion": "estimate: mean squared distance of the selected features to their centroid",
    "duplicate_rate": "estimate: share of selected rows identical to an earlier one (exact match)",
    "distinct_1": "estimate: distinct unigrams / unigrams over the selected texts (distinct-1)",
    "distinct_2": "estimate: distinct bigrams / bigrams over the selected texts (distinct-2)",
    "answer_entropy": "estimate: entropy in bits of the selected final answers (plug-in)",
}


@dataclass(frozen=True)
class View:
    """What the diagnostics see of some rows: features (n, d), and texts and answers if any."""

    features: npt.NDArray[np.float64] | None
    texts: Sequence[str] | None = None
    answers: Sequence[str] | None = None
    space: str = "features"  # named in the labels: "raw x", "pixels", "MiniLM-L6 sentence embeddings"


@runtime_checkable
class Diagnosable(Protocol):
    def diagnostic_view(self, candidates: Candidates, prompts: Prompts) -> View: ...

    def diagnostic_reference(self, n: int, *, rng: np.random.Generator) -> tuple[View, View]: ...


@dataclass(frozen=True)
class Diagnose:
    """The stage's settings: how many selected rows to look at (a random subset beyond that)."""

    max_samples: int = 500
    reference_samples: int = 500

    def __call__(self, task: Any, candidates: Candidates, prompts: Prompts, *,
                 rng: np.random.Generator) -> tuple[dict[str, float], dict[str, str]]:
        """The diagnostics of ``candidates`` (the selection) and the estimator label of each;
        nothing where the task offers no view."""
        if not isinstance(task, Diagnosable) or len(candidates) == 0:
            return {}, {}
        if len(candidates) > self.max_samples:
            keep = np.sort(rng.choice(len(candidates), self.max_samples, replace=False))
            candidates, prompts = candidates.take(keep), prompts.take(keep)
        view = task.diagnostic_view(candidates, prompts)
        anchor, reference = task.diagnostic_reference(self.reference_samples, rng=rng)
        values = {**feature_diagnostics(view, anchor, reference), **text_diagnostics(view)}
        return values, labels(values, view.space + project(view, anchor, reference)[3])


PROJECT_DIM = 8  # kNN estimates need n >> exp(d)-ish: wider features are projected first


def project(view: View, anchor: View, reference: View) -> tuple[Any, Any, Any, str]:
    """Features wider than ``PROJECT_DIM`` projected onto the reference's top principal axes (the
    same axes for all three), so a few hundred points still give usable kNN estimates."""
    x, a, r = view.features, anchor.features, reference.features
    if x is None or r is None or x.shape[1] <= PROJECT_DIM:
        return x, a, r, ""
    centre = r.mean(axis=0)
    axes = np.linalg.svd(r - centre, full_matrices=False)[2][:PROJECT_DIM].T
    return ((x - centre) @ axes, None if a is None else (a - centre) @ axes, (r - centre) @ axes,
            f", projected on the reference's top {PROJECT_DIM} principal axes")


def feature_diagnostics(view: View, anchor: View, reference: View) -> dict[str, float]:
    x, anchor_x, reference_x, _ = project(view, anchor, reference)
    if x is None or len(x) <= K:
        return {}
    out = {"dispersion": float(np.mean(np.sum(np.square(x - x.mean(axis=0)), axis=1))),
           "duplicate_rate": duplicate_rate([row.tobytes() for row in np.asarray(x, np.float64)])}
    distinct = np.unique(x, axis=0)
    if len(distinct) > K:  # the kNN estimators need K + 1 distinct points
        out["entropy"] = knn_entropy(x)
        if reference_x is not None and len(reference_x) > K:
            out["divergence_to_reference"] = knn_kl(x, reference_x)
            out["divergence_from_reference"] = knn_kl(reference_x, x)
            if anchor_x is not None and len(anchor_x) > K:
                out["information_gain"] = knn_kl(anchor_x, reference_x) - out["divergence_to_reference"]
    return out


def text_diagnostics(view: View) -> dict[str, float]:
    out: dict[str, float] = {}
    if view.texts:
        out |= {"distinct_1": distinct_n(view.texts, 1), "distinct_2": distinct_n(view.texts, 2),
                "duplicate_rate": duplicate_rate(list(view.texts))}
    if view.answers:
        out["answer_entropy"] = plugin_entropy(list(view.answers))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def labels(values: Mapping[str, float], space: str = "") -> dict[str, str]:
    """The estimator label of each value (the feature space named where it matters)."""
    where = f" [space: {space}]" if space else ""
    return {name: ESTIMATORS.get(name, "estimate") + (where if name in FEATURE_BASED else "") for name in values}


FEATURE_BASED = {"divergence_to_reference", "divergence_from_reference", "information_gain", "entropy", "dispersion"}
