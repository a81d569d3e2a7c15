"""Throughput of the Hugging Face plug-ins against the stock tools, side by side in one run.

Generation: ``HFGenerator`` against plain ``model.generate`` on the same prompts, batches, sampling
settings and precision; generated tokens per second (each row counts its tokens up to and including
EOS). Training: ``SFTLearner`` against TRL's ``SFTTrainer`` on the same model weights, data, batch
size and precision (completion-only loss in both); trained (non-padding) tokens per second.
Runs alternate (ours, theirs, ours, theirs...) so a noisy shared machine hits both alike; the table
reports medians and the ratio ours / theirs.

    python bench/llm_throughput.py --model smollm2 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthloop.models.hf import (
    HFGenerator,
    HFModel,
    SFTLearner,
    autocast,
    encode_prompt,
    export_smollm2,
    load_pretrained,
)
from synthloop.records import Candidates, Prompts
from synthloop.tasks.math import Level, load_problems

LEVEL = Level("add1", "chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})


def load(name: str) -> HFModel:
    if name == "smollm2":
        return load_pretrained(export_smollm2())
    return load_pretrained(name)


def ours_generate(model: HFModel, prompts: Prompts, args: argparse.Namespace) -> tuple[float, float]:
    gen = HFGenerator(max_new_tokens=args.max_new_tokens, temperature=0.7, batch_size=args.batch_size,
                      bf16=True, chat=True)
    start = time.perf_counter()
    out = gen.generate(model, prompts, rng=np.random.default_rng(0))
    return float(out.usage["completion_tokens"].sum()), time.perf_counter() - start


def stock_generate(model: HFModel, prompts: Prompts, args: argparse.Namespace) -> tuple[float, float]:
    tok, net = model.tokenizer, model.network
    texts = list(prompts.items["prompt"])
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))  # same batches as ours
    tokens, start = 0.0, time.perf_counter()
    torch.manual_seed(0)
    for lo in range(0, len(order), args.batch_size):
        rows = [encode_prompt(tok, texts[i], chat=True) for i in order[lo:lo + args.batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad(), autocast(True):
            out = net.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                               do_sample=True, temperature=0.7, top_p=1.0, top_k=0,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in out[:, width:].tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return tokens, time.perf_counter() - start


def training_data(n: int) -> tuple[list[str], list[str]]:
    problems = load_problems(LEVEL, size=n, seed=11)
    return [p.question for p in problems], [f"The answer is {p.answer}." for p in problems]


def ours_train(model: HFModel, questions: list[str], answers: list[str], args: argparse.Namespace
               ) -> tuple[float, float]:
    learner = SFTLearner(base=model, lr=1e-5, batch_size=args.train_batch, bf16=True, chat=True,
                         training_key="prompt")
    selected = Candidates(samples={"prompt": questions, "completion": answers},
                          prompt_index=np.arange(len(questions)), usage={"samples": np.ones(len(questions))})
    prompts = Prompts(index=np.arange(len(questions)))
    start = time.perf_counter()
    metrics = learner.update(selected, prompts, rng=np.random.default_rng(0))
    return metrics["trained_tokens"], time.perf_counter() - start


def trl_train(model: HFModel, questions: list[str], answers: list[str], args: argparse.Namespace
              ) -> tuple[float, float]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": q}] for q in questions],
        "completion": [[{"role": "assistant", "content": a}] for a in answers],
    })
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(output_dir=tmp, per_device_train_batch_size=args.train_batch, num_train_epochs=1,
                           learning_rate=1e-5, bf16=True, use_cpu=True, report_to=[], save_strategy="no",
                           logging_strategy="no", completion_only_loss=True, dataloader_num_workers=0,
                           max_grad_norm=1.0, lr_scheduler_type="constant", seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = SFTTrainer(model=model.network, args=config, train_dataset=data,
                                 processing_class=model.tokenizer)
            tokens = float(sum(len(ids) for ids in trainer.train_dataset["input_ids"]))
            start = time.perf_counter()
            trainer.train()
    return tokens, time.perf_counter() - start


def alternate(name: str, ours: Any, theirs: Any, repeats: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {"ours": [], "stock": []}
    for k in range(repeats):
        for label, fn in (("ours", ours), ("stock", theirs)):
            tokens, seconds = fn()
            rates[label].append(tokens / seconds)
            print(f"{name} repeat {k} {label}: {tokens:.0f} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tok/s",
                  flush=True)
    ours_rate, stock_rate = statistics.median(rates["ours"]), statistics.median(rates["stock"])
    return {"ours_tokens_per_s": ours_rate, "stock_tokens_per_s": stock_rate, "ratio": ours_rate / stock_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, a local path or a hub id")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load(args.model)
    problems = load_problems(LEVEL, size=args.prompts, seed=3)
    prompts = Prompts(index=np.arange(len(problems)), items={"prompt": [p.question for p in problems]})
    generation = alternate("generate", lambda: ours_generate(base, prompts, args),
                           lambda: stock_generate(base, prompts, args), args.repeats)
    questions, answers = training_data(args.train_examples)
    state = copy.deepcopy(base.network.state_dict())

    def fresh() -> HFModel:  # both trainers start from the same weights every time
        base.network.load_state_dict(state)
        return base

    training = alternate("train", lambda: ours_train(fresh(), questions, answers, args),
                         lambda: trl_train(fresh(), questions, answers, args), args.repeats)
    result = {"model": args.model, "threads": args.threads, "generation": generation, "training": training,
              "settings": vars(args) | {"out": str(args.out)}}
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
