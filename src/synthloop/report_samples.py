"""Look at the data: kept and rejected candidates per iteration, and the diagnose stage's estimates.

``html_sections`` adds to the HTML report (``report.html_report``) a plot of every diagnostic over
the iterations with its estimator's label, and per iteration a sample of kept and rejected
candidates (text, a vector, or the image for image tasks) with reward, verdict and detail, like the
completions tables users of TRL log. ``terminal_samples`` prints the same for ``synthloop inspect
RUN --samples N``. Readers only: nothing here writes to a run directory.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from synthloop.records import Verdict
from synthloop.store import RunStore
from synthloop.store.codecs import records_from_table

TEXT_CHARS = 400


@dataclass(frozen=True)
class Row:
    kept: bool
    sample: dict[str, Any]  # payload column -> value (str, or np.ndarray)
    reward: float
    verdict: str
    detail: str


def iteration_rows(store: RunStore, iteration: int, n: int) -> list[Row]:
    """Up to ``n`` kept and ``n`` rejected candidates of ``iteration`` (the first of each, in draw order)."""
    files = [f.path for f in store.iteration_record(iteration).files]
    kept_ids: set[tuple[int, int]] = set()
    if f"iter-{iteration:04d}/selected.parquet" in files:
        selected = store.read_table(f"iter-{iteration:04d}/selected.parquet")
        kept_ids = set(zip(selected.column("part").to_pylist(), selected.column("index").to_pylist(), strict=True))
    rows: list[Row] = []
    counts = {True: 0, False: 0}
    for path in sorted(p for p in files if "/candidates/" in p):
        table = store.read_table(path)
        candidates, scores = records_from_table(table)
        parts, index = table.column("part").to_pylist(), table.column("index").to_pylist()
        for i in range(len(candidates)):
            kept = (parts[i], index[i]) in kept_ids
            if counts[kept] >= n:
                continue
            counts[kept] += 1
            rows.append(Row(kept, {k: v[i] for k, v in candidates.samples.items()}, float(scores.reward[i]),
                            Verdict(int(scores.verdict[i])).name.lower(),
                            "" if scores.detail is None else str(scores.detail[i])))
        if counts[True] >= n and counts[False] >= n:
            break
    return rows


def _is_image(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim in (2, 3) and min(value.shape[:2]) >= 4


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=3, threshold=8, separator=", ")
    text = str(value)
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + " ..."


def _image_uri(value: np.ndarray) -> str:
    import matplotlib.image

    image = np.asarray(value, dtype=np.float64)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)  # channels first -> last
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    lo, hi = float(image.min()), float(image.max())
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, image, format="png", cmap="gray")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value: Any) -> str:
    if _is_image(value):
        return f"<img class='sample' alt='image' src='{_image_uri(value)}'>"
    return f"<pre>{escape(_short(value))}</pre>"


def samples_table(rows: Sequence[Row]) -> str:
    if not rows:
        return "<p>No candidates stored for this iteration (loop.store_candidates).</p>"
    names = list(rows[0].sample)
    head = "<tr><th>kept</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + \
        "<th>reward</th><th>verdict</th><th>detail</th></tr>"
    body = [f"<tr class='{'kept' if r.kept else 'rejected'}'><td>{'kept' if r.kept else 'rejected'}</td>"
            + "".join(f"<td class='text'>{_cell(r.sample[n])}</td>" for n in names)
            + f"<td>{r.reward:.4g}</td><td>{r.verdict}</td><td class='text'>{escape(r.detail)}</td></tr>"
            for r in sorted(rows, key=lambda r: not r.kept)]
    return "<table class='samples'>" + head + "".join(body) + "</table>"


STYLE = ("<style>td.text{text-align:left;max-width:520px}td.text pre{white-space:pre-wrap;margin:0;"
         "font-size:12px}tr.kept td:first-child{color:#176e2a}tr.rejected td:first-child{color:#a33}"
         "img.sample{width:64px;image-rendering:pixelated}</style>")


def _diagnostics_figure(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for _, records in runs for m in records for k in m.get("diagnostics", {})})
    if not names:
        return ""
    cols = 3
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(10, 2.6 * ((len(names) + 2) // 3)),
                             dpi=100, squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        for label, records in runs:
            points = [(m["iteration"], m["diagnostics"][name]) for m in records if name in m.get("diagnostics", {})]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=label)
        ax.set_title(f"{name} (estimate)", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _labels_table(records: Sequence[dict[str, Any]]) -> str:
    labels: dict[str, str] = {}
    for m in records:
        labels.update(m.get("diagnostic_labels", {}))
    if not labels:
        return ""
    rows = "".join(f"<tr><td>{escape(k)}</td><td class='text'>{escape(v)}</td></tr>" for k, v in sorted(labels.items()))
    return "<table><tr><th>diagnostic</th><th>estimator</th></tr>" + rows + "</table>"


def html_sections(run_dirs: Sequence[Path], *, samples: int = 4) -> str:
    """The diagnostics and the samples sections of the report, as HTML."""
    runs = []
    for run_dir in run_dirs:
        store = RunStore(Path(run_dir))
        committed = [e.iteration for e in store.manifest().iterations]
        runs.append((Path(run_dir).name, store, [store.metrics(t) for t in committed]))
    parts = [STYLE]
    figure = _diagnostics_figure([(name, records) for name, _, records in runs])
    if figure:
        parts.append("<h2>Diagnostics (estimates, per iteration)</h2><p>Every value is an estimate from the "
                     "selected data of the iteration; the estimator of each is named below.</p>"
                     f"<img alt='diagnostics' src='data:image/png;base64,{figure}'>")
        parts += [f"<h3>{escape(name)}</h3>{_labels_table(records)}" for name, _, records in runs]
    parts.append(f"<h2>Samples: kept and rejected candidates (first {samples} of each per iteration)</h2>")
    for name, store, records in runs:
        parts.append(f"<h3>{escape(name)}</h3>")
        for m in records:
            parts.append(f"<h4>iteration {m['iteration']}</h4>{samples_table(iteration_rows(store, m['iteration'], samples))}")
    return "\n".join(parts)


def terminal_samples(run_dir: Path, n: int) -> str:
    """The samples of every committed iteration as plain text (``synthloop inspect RUN --samples N``)."""
    store = RunStore(Path(run_dir))
    lines = []
    for entry in store.manifest().iterations:
        lines.append(f"iteration {entry.iteration}")
        for r in iteration_rows(store, entry.iteration, n):
            sample = "; ".join(f"{k}={_short(v) if not _is_image(v) else f'<image {v.shape}>'}"
                               for k, v in r.sample.items())
            detail = f"  detail: {r.detail}" if r.detail else ""
            lines.append(f"  [{'kept' if r.kept else 'rejected':8}] reward={r.reward:.4g} verdict={r.verdict}"
                         f"{detail}\n      {sample}")
    return "\n".join(lines)
