"""Generated tokens per second on SmolLM2-135M-Instruct: synthloop's in-process sampler against
``model.generate`` and llama.cpp's own batched decoding, on the same prompts and weights, in one run.

Engines, all sampling at temperature 0.7 over the whole vocabulary, stopping a row at EOS or after
``--max-new-tokens``, on the same prompt token ids (16 GSM-style word problems in the chat
template), with the same number of threads:

- ``ours``: :class:`synthloop.models.hf.HFGenerator` (bf16 autocast), one batch of ``--batch-size``;
- ``ours_fused``: the same with ``decode="fused"`` (:mod:`synthloop.models.fused_llama`: the
  decoding step as plain torch ops on fused, oneDNN-reordered bf16 weights; its one-off weight
  build is warmed up, untimed, like every engine's first call);
- ``ours_bf16_weights``: the same with the weights loaded in bf16 (``dtype: bfloat16``), as
  llama.cpp's BF16 file holds them;
- ``before``: the same sampler as it was at git revision ``--before`` (same run, same settings);
- ``generate``: transformers' ``model.generate`` on the same left-padded batch, bf16 autocast;
- ``llama.cpp``: llama.cpp through llama-cpp-python's low-level API, every prompt its own sequence,
  all prompts in one prefill batch, then one token per live sequence per step (what its
  ``batched`` example does), on a BF16 GGUF written from the packaged GGUF's de-quantized weights
  (the same weights the HF export holds).

Runs alternate and rotate their order each repeat so a noisy shared machine hits every engine
alike; the table reports median rates and ratios to llama.cpp. ``--phases`` adds prompt
processing alone (one new token) for ours, before and llama.cpp. ``--ignore-eos`` makes every
engine run every row to the token limit (the same work for all: otherwise rows that happen to
draw EOS early make an engine's fixed prompt-processing cost weigh on fewer tokens).

    OMP_NUM_THREADS=2 python bench/engines_throughput.py --threads 2 --repeats 5 --max-new-tokens 64 128
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from synthloop.models.hf import (
    HFGenerator,
    HFModel,
    autocast,
    cache_dir,
    encode_prompt,
    export_smollm2,
    load_pretrained,
    smollm2_gguf_path,
)
from synthloop.records import Prompts
from synthloop.tasks.math import Level, load_problems

TEMPERATURE = 0.7
WORD_PROBLEMS = Level("gsm", "gsm_symbolic", {})


def bf16_gguf(source: Path, target: Path) -> Path:
    """A copy of a GGUF with every quantized tensor de-quantized and stored as BF16 (F32 tensors,
    the norms, stay F32); metadata (tokenizer, chat template) copied unchanged."""
    if target.is_file():
        return target
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch=arch)
    for f in reader.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        value = int(gguf.LlamaFileType.MOSTLY_BF16) if f.name == gguf.Keys.General.FILE_TYPE else f.contents()
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, value, f.types[0], sub_type=sub)
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.BF16):
            writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
            continue
        weights = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        bf16 = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.BF16)
        writer.add_tensor(t.name, bf16, raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(target)
    return target


def word_problems(tokenizer: Any, n: int) -> tuple[list[str], list[list[int]]]:
    texts = [p.question for p in load_problems(WORD_PROBLEMS, size=n, seed=3)]
    return texts, [encode_prompt(tokenizer, t, chat=True) for t in texts]


def module_at(revision: str) -> ModuleType:
    """synthloop.models.hf as it was at a git revision (to measure before and after in one run)."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "-C", str(root), "show", f"{revision}:src/synthloop/models/hf.py"],
                          capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "hf_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("synthloop_hf_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sampler_run(cls: Any, model: HFModel, texts: list[str], new: int, batch: int, **options: Any) -> float:
    """Generated tokens (EOS included) of one ``generate`` call of an HFGenerator class."""
    gen = cls(max_new_tokens=new, temperature=TEMPERATURE, batch_size=batch, bf16=True, chat=True,
              max_prompt_tokens=4096, **options)
    out = gen.generate(model, Prompts(index=np.arange(len(texts)), items={"prompt": texts}),
                       rng=np.random.default_rng(0))
    return float(out.usage["completion_tokens"].sum())


def generate_run(model: HFModel, prompts: list[list[int]], new: int, batch: int, ignore_eos: bool = False
                 ) -> float:
    tok, net = model.tokenizer, model.network
    tokens = 0.0
    torch.manual_seed(0)
    for lo in range(0, len(prompts), batch):
        rows = prompts[lo:lo + batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad(), autocast(True):
            out = net.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=True,
                               temperature=TEMPERATURE, top_p=1.0, top_k=0,
                               min_new_tokens=new if ignore_eos else 0,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in out[:, width:].tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return tokens


class IgnoringEos:
    """A tokenizer that names no EOS token (so a sampler runs every row to its token limit) and
    otherwise is the tokenizer it wraps."""

    eos_token_id = -1

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)


class LlamaBatched:
    """llama.cpp's batched decoding: one sequence per prompt, prompts prefilled in one batch, then
    one token per live sequence per ``llama_decode``."""

    def __init__(self, path: Path, threads: int, n_seq: int, per_seq: int, unified: bool) -> None:
        import llama_cpp as ll

        self.ll = ll
        ll.llama_backend_init()
        self.model = ll.llama_model_load_from_file(str(path).encode(), ll.llama_model_default_params())
        params = ll.llama_context_default_params()
        params.n_ctx = params.n_batch = n_seq * per_seq
        params.n_ubatch = 512
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = unified
        params.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, params)
        self.batch = ll.llama_batch_init(n_seq * per_seq, 0, 1)

    def _fill(self, entries: list[tuple[int, int, int]]) -> None:
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = token, pos, 1, seq, False

    def run(self, prompts: list[list[int]], new: int, eos: int, seed: int = 0) -> float:
        ll = self.ll
        ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(TEMPERATURE))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        entries = [(t, p, s) for s, prompt in enumerate(prompts) for p, t in enumerate(prompt)]
        self._fill(entries)
        ends = np.cumsum([len(p) for p in prompts]) - 1
        for i in ends:
            self.batch.logits[int(i)] = True
        live = {s: (int(ends[s]), len(prompts[s])) for s in range(len(prompts))}  # seq: (out row, pos)
        tokens = 0
        if ll.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed on the prompts")
        for _ in range(new):
            step = []
            for seq, (row, pos) in live.items():
                token = ll.llama_sampler_sample(chain, self.ctx, row)
                tokens += 1
                if token != eos:
                    step.append((token, pos, seq))
            if not step or _ == new - 1:
                break
            self._fill(step)
            for i in range(len(step)):
                self.batch.logits[i] = True
            live = {seq: (i, pos + 1) for i, (_, pos, seq) in enumerate(step)}
            if ll.llama_decode(self.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed while decoding")
        ll.llama_sampler_free(chain)
        return float(tokens)


def alternate(engines: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for k in range(repeats):
        for name in names[k % len(names):] + names[:k % len(names)]:
            start = time.perf_counter()
            tokens = engines[name]()
            seconds = time.perf_counter() - start
            rates[name].append(tokens / seconds)
            print(f"repeat {k} {name}: {tokens:.0f} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tok/s",
                  flush=True)
    return rates


def summary(rates: dict[str, list[float]], baseline: str) -> dict[str, Any]:
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {"tokens_per_s": medians, "ratio_to_" + baseline: {n: m / medians[baseline] for n, m in medians.items()},
            "runs": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", default=None, help="git revision of the sampler to measure too")
    parser.add_argument("--no-generate", action="store_true", help="leave out model.generate")
    parser.add_argument("--unified-kv", action="store_true", help="llama.cpp: one KV buffer for all sequences")
    parser.add_argument("--phases", action="store_true", help="also time prompt processing alone")
    parser.add_argument("--ignore-eos", action="store_true", help="run every row to the token limit")
    parser.add_argument("--all-lengths", action="store_true",
                        help="run before and generate at every length (default: the first only)")
    parser.add_argument("--engines", nargs="+", default=None,
                        help="run only these of ours, ours_fused, ours_bf16_weights, before, generate "
                             "(llama.cpp, the baseline, always runs)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_pretrained(export_smollm2())
    bf16_model = load_pretrained(export_smollm2(), dtype="bfloat16")
    texts, prompts = word_problems(model.tokenizer, args.prompts)
    gguf_file = bf16_gguf(smollm2_gguf_path(), cache_dir() / "SmolLM2-135M-Instruct.BF16.gguf")
    longest = max(len(p) for p in prompts) + max(args.max_new_tokens) + 16
    llama = LlamaBatched(gguf_file, args.threads, args.prompts, longest, args.unified_kv)
    before = module_at(args.before).HFGenerator if args.before else None
    eos = model.tokenizer.eos_token_id
    base = model  # model.generate keeps the real tokenizer (with --ignore-eos it masks EOS instead)
    if args.ignore_eos:
        model = HFModel(model.network, IgnoringEos(model.tokenizer))
        bf16_model = HFModel(bf16_model.network, IgnoringEos(bf16_model.tokenizer))
        eos = -1
    result: dict[str, Any] = {"threads": args.threads, "prompt_tokens": sum(len(p) for p in prompts),
                              "longest_prompt": max(len(p) for p in prompts), "settings": vars(args) | {"out": str(args.out)}}
    warm: list[float] = []
    for new in ([1] if args.phases else []) + args.max_new_tokens:
        engines: dict[str, Callable[[], float]] = {
            "ours": partial(sampler_run, HFGenerator, model, texts, new, args.batch_size),
            "ours_fused": partial(sampler_run, HFGenerator, model, texts, new, args.batch_size, decode="fused"),
            "ours_bf16_weights": partial(sampler_run, HFGenerator, bf16_model, texts, new, args.batch_size),
            "llama.cpp": partial(llama.run, prompts, new, eos)}
        first = new == args.max_new_tokens[0] or new == 1 or args.all_lengths
        if before is not None and first:
            engines["before"] = partial(sampler_run, before, model, texts, new, args.batch_size)
        if not args.no_generate and new > 1 and first:
            engines["generate"] = partial(generate_run, base, prompts, new, args.batch_size, args.ignore_eos)
        if args.engines is not None:
            engines = {k: v for k, v in engines.items() if k in args.engines or k == "llama.cpp"}
        if not warm:  # first calls pay one-off costs (kernel set-up, page faults, the fused build): untimed
            warm = [sampler_run(HFGenerator, model, texts, 2, args.batch_size), llama.run(prompts, 2, eos),
                    generate_run(base, prompts, 2, args.batch_size)]
            if "ours_fused" in engines:
                warm.append(sampler_run(HFGenerator, model, texts, 2, args.batch_size, decode="fused"))
        print(f"-- {new} new tokens", flush=True)
        result[f"new_tokens_{new}"] = summary(alternate(engines, args.repeats), "llama.cpp")
        print(json.dumps(result[f"new_tokens_{new}"]["ratio_to_llama.cpp"]), flush=True)
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
