"""The active selectors without an ML framework: each algorithm picks what it claims on a
constructed pool, and every selector passes the prompt-policy conformance check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthloop.active import select
from synthloop.active.policy import SCORE_OF, SELECTORS, ActivePolicy, SeedScores
from synthloop.records import Observations, Prompts
from synthloop.testing import check_prompt_policy, check_stateful


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_top_k_picks_the_highest_losses() -> None:
    losses = np.array([0.3, 2.5, 0.1, 1.7, 0.9, 3.1])
    assert select.top_k(losses, 3, rng=rng()).tolist() == [1, 3, 5]


def test_top_k_breaks_ties_at_random_not_by_position() -> None:
    picks = np.concatenate([select.top_k(np.zeros(10), 2, rng=rng(s)) for s in range(400)])
    counts = np.bincount(picks, minlength=10)
    assert counts.min() > 40 and counts.max() < 120  # about 80 each, never always the first rows


def test_balanced_takes_the_hardest_and_the_easiest() -> None:
    values = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 0.0])
    assert select.balanced(values, 4, rng=rng(), hard_share=0.5).tolist() == [1, 2, 4, 5]
    assert select.balanced(values, 3, rng=rng(), hard_share=1.0).tolist() == [0, 2, 4]


def test_hard_only_draws_among_the_hard_and_fills_with_the_hardest_rest() -> None:
    values = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.4])
    for s in range(20):
        assert set(select.hard_only(values, 2, threshold=0.5, rng=rng(s)).tolist()) <= {0, 2, 4}
    assert select.hard_only(values, 4, threshold=0.5, rng=rng()).tolist() == [0, 2, 4, 5]


def test_k_center_greedy_takes_the_farthest_points_and_skips_covered_regions() -> None:
    clusters = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    points = np.concatenate([c + 0.1 * rng(i).standard_normal((5, 2)) for i, c in enumerate(clusters)])
    picked = select.k_center_greedy(points, 4, rng=rng(3))
    assert sorted(set(picked // 5)) == [0, 1, 2, 3]  # one point from each cluster
    covered = select.k_center_greedy(points, 2, rng=rng(3), centers=clusters[:2])
    assert sorted(set(covered // 5)) == [2, 3]  # the clusters no earlier seed covers
    # greedy: after the centers, the first pick is the point farthest from them
    far = np.array([[1.0, 0.0], [3.0, 0.0], [2.5, 0.0]])
    assert select.k_center_greedy(far, 1, rng=rng(), centers=np.zeros((1, 2))).tolist() == [1]


def test_kmeans_pp_starts_at_the_largest_gradient_and_samples_by_squared_distance() -> None:
    # gradients: the largest has norm 10; the others at squared distances 100, 25, 0 from it
    gradients = np.array([[10.0, 0.0], [0.0, 0.0], [5.0, 0.0], [10.0, 0.0]])
    first = [select.kmeans_pp(gradients, 1, rng=rng(s)).tolist() for s in range(5)]
    assert first == [[0]] * 5
    seconds = np.array([set(select.kmeans_pp(gradients, 2, rng=rng(s)).tolist()) - {0} for s in range(3000)])
    share_far = np.mean([s == {1} for s in seconds])
    assert abs(share_far - 100 / 125) < 0.03  # D^2 sampling: P = 100 / (100 + 25 + 0)
    assert not any(s == {3} for s in seconds)  # a duplicate of a center has D^2 = 0
    assert select.kmeans_pp(gradients, 4, rng=rng()).tolist() == [0, 1, 2, 3]  # distinct even so


def test_random_choice_is_uniform_without_replacement() -> None:
    picks = [select.random_choice(6, 3, rng=rng(s)) for s in range(600)]
    assert all(len(set(p.tolist())) == 3 for p in picks)
    assert np.bincount(np.concatenate(picks), minlength=6).min() > 240


def test_asking_for_more_than_there_is_fails_clearly() -> None:
    with pytest.raises(ValueError, match="cannot choose 5 of 3"):
        select.top_k(np.zeros(3), 5, rng=rng())


# -- the policy on a constructed pool --------------------------------------------------------------


class Pool:
    """Seed i has a known student loss ``losses[i]`` and a known embedding ``points[i]``."""

    name = "pool"
    pool_size = 40

    def __init__(self) -> None:
        self.losses = np.linspace(0.0, 3.9, self.pool_size)[rng(1).permutation(self.pool_size)]
        self.points = rng(2).standard_normal((self.pool_size, 3))

    def prompts_at(self, indices: Any) -> Prompts:
        indices = np.asarray(indices, dtype=np.int64)
        return Prompts(index=indices, items={"question": [f"q{i}" for i in indices]})

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self.prompts_at(rng.choice(self.pool_size, size=n))


class KnownScorer:
    """What a student would measure on ``Pool``: one forward pass per seed."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def usage_per_seed(self) -> dict[str, float]:
        return {"samples": 1.0, "forward_passes": 2.0}

    def score(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> SeedScores:
        n = float(len(prompts))
        return SeedScores(self.pool.losses[prompts.index], self.pool.points[prompts.index],
                          {"samples": n, "forward_passes": 2 * n})


def policy(selector: str, pool: Pool, candidates: float = 4.0) -> ActivePolicy:
    scorer = None if SCORE_OF[selector] is None else KnownScorer(pool)
    return ActivePolicy(pool_size=pool.pool_size, selector=selector, scorer=scorer, candidates=candidates)


@pytest.mark.parametrize("selector", SELECTORS)
def test_every_selector_is_a_conforming_prompt_policy(selector: str, tmp_path: Path) -> None:
    pool = Pool()
    check_prompt_policy(policy(selector, pool), pool, model=None)  # type: ignore[arg-type]

    def advance(p: ActivePolicy) -> Any:
        chosen = p.choose(pool, 5, model=None, rng=rng(4))  # type: ignore[arg-type]
        p.observe(Observations.of(chosen.prompts.index, np.zeros(5, dtype=np.int8)))
        return chosen.prompts.index

    check_stateful(lambda: policy(selector, pool), advance, tmp_path)


def test_the_loss_selector_keeps_the_highest_loss_seeds_of_those_it_scored() -> None:
    pool = Pool()
    chosen = policy("loss_own", pool).choose(pool, 5, model=None, rng=rng(7))  # type: ignore[arg-type]
    draw = rng(7).choice(pool.pool_size, size=20, replace=False)  # the 4 x 5 seeds it scored
    assert sorted(chosen.prompts.index.tolist()) == sorted(draw[np.argsort(-pool.losses[draw])[:5]].tolist())
    assert chosen.usage == {"samples": 20.0, "forward_passes": 40.0}  # priced: what scoring 20 seeds cost


def test_random_costs_nothing_and_scores_nothing() -> None:
    pool = Pool()
    random = policy("random", pool)
    assert random.usage_per_prompt() == {}
    assert random.choose(pool, 8, model=None, rng=rng()).usage == {}  # type: ignore[arg-type]


def test_diversity_avoids_seeds_near_those_already_generated_on() -> None:
    pool = Pool()
    diverse = policy("diversity", pool, candidates=8.0)
    near = int(np.argmin(np.linalg.norm(pool.points - pool.points[0], axis=1) + 99 * (np.arange(40) == 0)))
    diverse.observe(Observations.of(np.array([0]), np.zeros(1, dtype=np.int8)))
    for s in range(10):
        picked = diverse.choose(pool, 3, model=None, rng=rng(s)).prompts.index  # type: ignore[arg-type]
        assert 0 not in picked.tolist() and near not in picked.tolist()


def test_a_selector_without_the_scorer_it_needs_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a loss_own scorer"):
        ActivePolicy(pool_size=4, selector="loss_own")
    with pytest.raises(ValueError, match="unknown active selector 'lossy'"):
        ActivePolicy(pool_size=4, selector="lossy")
