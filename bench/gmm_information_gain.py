"""The reverse-bottleneck Gaussian-mixture experiment (Gan and Liu, ICLR 2025, section 6), rebuilt.

Ground truth: K + J components (uniform weights). Anchor data: 50 samples from each of the first K.
The "generative model" M: the K components fitted to the anchors, plus the J true components the
anchors never saw (the information the generator adds), plus L random components (noise); 200
synthetic samples from M. A K-component GMM is fitted to the anchors and a (K+J+L)-component GMM to
the synthetic data; the KL gap = KL(anchor fit || truth) - KL(synthetic fit || truth).

Differences from the official code, on purpose: covariances are A A^T + 0.1 I (symmetric positive
definite; the official code multiplies two independent random matrices, which need not be), and
KL is estimated three ways: the kNN estimator (synthloop.diagnostics.estimators.knn_kl, any
dimension, on 50,000 points per side), the paper's 50-bin histogram (2-D only, on 200,000 points
per side: enough for its 2,500 cells), and a Monte-Carlo reference that uses both
densities (E_fit[log fit - log truth], 20,000 draws), which neither estimator may use on real runs.

    python bench/gmm_information_gain.py --repeats 5 --out docs/gmm-information-gain.png
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from synthloop.diagnostics.estimators import histogram_kl, knn_kl
from synthloop.experiments import mean_interval

BOX = 3.0  # component means are uniform in [-BOX, BOX]^d: components overlap, KLs stay finite-sample estimable
ANCHOR_PER_COMPONENT, N_SYNTHETIC, N_MC = 50, 200, 20_000
# kNN's downward bias on large divergences shrinks with the sample: on 2,000 points per side it
# put the 15-component synthetic fit's KL 0.1-0.5 nats under the Monte-Carlo reference, on 50,000
# within about 0.05 in 2-D (k-d trees make that 1-4 s per estimate).
N_KNN = 50_000
# The histogram needs many points per cell: with 1,000 points per side in 50 x 50 = 2,500 cells most
# truth cells are empty where the fit has mass, and the empty-bin floor (1e-10) biased each KL by
# +6 to +9 nats (measured against the Monte-Carlo reference). 200,000 points per side (80 per cell
# on average) bring it within about 0.04 nats; 2-D histograms of that many points take 0.1 s.
N_HISTOGRAM = 200_000
DEFAULT = {"K": 5, "J": 5, "L": 5}
SWEEP = [2, 3, 5, 7, 9, 11, 13, 15]  # K, J, L from 2 to 15


@dataclass
class Mixture:
    means: np.ndarray  # (c, d)
    covs: np.ndarray  # (c, d, d), SPD

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.integers(len(self.means), size=n)
        chol = np.linalg.cholesky(self.covs)
        z = rng.standard_normal((n, self.means.shape[1]))
        return self.means[which] + np.einsum("nij,nj->ni", chol[which], z)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        d = x.shape[1]
        inv, logdet = np.linalg.inv(self.covs), np.linalg.slogdet(self.covs)[1]
        diff = x[:, None, :] - self.means[None]
        maha = np.einsum("nci,cij,ncj->nc", diff, inv, diff)
        logs = -0.5 * (maha + logdet + d * math.log(2 * math.pi)) - math.log(len(self.means))
        top = logs.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(logs - top).sum(axis=1, keepdims=True)))[:, 0]


def random_components(c: int, d: int, rng: np.random.Generator) -> Mixture:
    a = rng.standard_normal((c, d, d)) / math.sqrt(d)
    return Mixture(rng.uniform(-BOX, BOX, (c, d)), a @ np.transpose(a, (0, 2, 1)) + 0.1 * np.eye(d))


def fit(x: np.ndarray, c: int, seed: int) -> GaussianMixture:
    return GaussianMixture(c, covariance_type="full", reg_covar=1e-3, random_state=seed, max_iter=100).fit(x)


def kls(model: GaussianMixture, truth: Mixture, rng: np.random.Generator, d: int) -> dict[str, float]:
    """KL(model || truth) by the three estimators."""
    mc = model.sample(N_MC)[0]
    exact = float(np.mean(model.score_samples(mc) - truth.log_density(mc)))
    p, q = model.sample(N_KNN)[0], truth.sample(N_KNN, rng)
    out = {"monte_carlo": exact, "knn": knn_kl(p, q)}
    if d == 2:
        out["histogram"] = histogram_kl(model.sample(N_HISTOGRAM)[0], truth.sample(N_HISTOGRAM, rng), bins=50)
    return out


def one_case(K: int, J: int, L: int, d: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    truth = random_components(K + J, d, rng)
    seen = Mixture(truth.means[:K], truth.covs[:K])
    anchors = np.vstack([seen.sample(ANCHOR_PER_COMPONENT * K, rng)])
    anchor_fit = fit(anchors, K, seed)
    noise = random_components(L, d, rng)
    generator = Mixture(np.vstack([anchor_fit.means_, truth.means[K:], noise.means]),
                        np.concatenate([anchor_fit.covariances_, truth.covs[K:], noise.covs]))
    synthetic_fit = fit(generator.sample(N_SYNTHETIC, rng), K + J + L, seed)
    a, s = kls(anchor_fit, truth, rng, d), kls(synthetic_fit, truth, rng, d)
    return {name: a[name] - s[name] for name in a}


def sweep(vary: str, d: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Per estimator: mean gap and 95% interval half-width at each value of ``vary``."""
    rows: dict[str, dict[str, list[float]]] = {}
    for value in SWEEP:
        setting = {**DEFAULT, vary: value}
        gaps = [one_case(**setting, d=d, seed=1000 * value + r) for r in range(repeats)]
        for name in gaps[0]:
            data = np.array([g[name] for g in gaps])
            entry = rows.setdefault(name, {"mean": [], "half": []})
            entry["mean"].append(float(data.mean()))
            _, low, high = mean_interval(data)
            entry["half"].append((high - low) / 2)
    return rows


def slope(values: list[float]) -> float:
    return float(np.polyfit(list(SWEEP), values, 1)[0])


def draw(results: dict, out: Path) -> None:
    panels = [(d, vary) for d in results for vary in results[d]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (d, vary) in zip(np.atleast_1d(axes), panels, strict=True):
        for name, style in (("monte_carlo", "k--"), ("knn", "C0-"), ("histogram", "C1-")):
            if name not in results[d][vary]:
                continue
            mean, half = (np.array(results[d][vary][name][k]) for k in ("mean", "half"))
            ax.plot(list(SWEEP), mean, style, label=name.replace("_", "-"))
            ax.fill_between(list(SWEEP), mean - half, mean + half, color=style[:2] if style[0] == "C" else "0.6",
                            alpha=0.2)
        fixed = ", ".join(f"{k}={v}" for k, v in DEFAULT.items() if k != vary)
        ax.set(xlabel=vary, ylabel="KL gap (nats)", title=f"{d}-D, vary {vary} ({fixed})")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/gmm-information-gain.png"))
    args = parser.parse_args()
    clock = time.perf_counter()
    threadpool_limits(1)  # small matrices: BLAS threads only fight each other
    results: dict[int, dict[str, dict]] = {2: {}, 5: {}}
    for d, vary in ((2, "J"), (2, "L"), (5, "J"), (5, "L"), (2, "K")):
        results[d][vary] = sweep(vary, d, args.repeats)
        args.out.with_suffix(".partial.json").write_text(json.dumps(results))  # progress, if cut short
    summary = {f"{d}-D vary {v}": {name: {"slope": slope(r["mean"]), "first": r["mean"][0], "last": r["mean"][-1],
                                          "half_mean": float(np.mean(r["half"]))}
                                   for name, r in rows.items()}
               for d, per in results.items() for v, rows in per.items()}
    print(json.dumps(summary, indent=1))
    draw(results, args.out)
    args.out.with_suffix(".json").write_text(json.dumps({"repeats": args.repeats, "results": results,
                                                         "summary": summary, "seconds": time.perf_counter() - clock},
                                                        indent=1))


if __name__ == "__main__":
    main()
