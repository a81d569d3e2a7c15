"""Everyday use of the torch plug-ins: where a model runs (``device``, ``dtype``), progress lines while a
model is prepared, and third-party output kept in the run directory's log instead of synthloop's lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from crashsafe_support import cli_env  # noqa: E402
from synthloop.configs import ConfigError, parse_config  # noqa: E402
from synthloop.models.devices import DeviceError, resolve_device, resolve_dtype  # noqa: E402
from synthloop.testing import check_generator  # noqa: E402
from torch_threads import one_thread  # noqa: E402, F401  (autouse: one torch thread for this module)

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")




def data_config(tmp: Path, **model: Any) -> dict[str, Any]:
    """A data task on 60 sums, one short iteration; the model section is the test's."""
    rows = tmp / "rows.jsonl"
    rng = np.random.default_rng(1)
    rows.write_text("".join(json.dumps({"prompt": f"{a} + {b} =", "answer": int(a + b)}) + "\n"
                            for a, b in rng.integers(0, 10, (60, 2))))
    return {
        "name": "prep", "seed": 0,
        "task": {"kind": "data", "path": str(rows), "held_out": 10, "verifier": "normalized", "template": "{prompt}"},
        "model": {"kind": "tiny", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32, "vocab_size": 80,
                  **model},
        "generator": {"kind": "hf", "max_new_tokens": 3, "temperature": 1.0, "batch_size": 32,
                      "eval_batch_size": 32, "bf16": False},
        "learner": {"kind": "sft", "lr": 1e-3, "batch_size": 8, "bf16": False},
        "selector": {"kind": "reward_proportional"},
        "schedule": {"kind": "constant", "n0": 4},
        "budget": {"total": 600, "unit": "tokens", "costs": {"generate": {"tokens": 1.0}, "train": {"tokens": 1.0}}},
        "loop": {"max_iterations": 1},
    }


# -- devices and dtypes ---------------------------------------------------------------------------


@NO_GPU
def test_auto_is_the_cpu_here_and_the_cpu_is_the_default(tmp_path: Path) -> None:
    from synthloop.families.data import FAMILY

    assert resolve_device("auto") == torch.device("cpu")
    settings = FAMILY.validate(parse_config(data_config(tmp_path)))
    assert (settings.model.device, settings.model.dtype) == ("cpu", "float32")


@NO_GPU
@pytest.mark.parametrize("family", ["data", "digits"])
def test_a_device_that_is_not_here_is_a_one_line_error(tmp_path: Path, family: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from synthloop.experiments import build_components

    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path / "cache"))
    if family == "data":
        cfg = parse_config(data_config(tmp_path, device="cuda"))
    else:
        cfg = parse_config({"name": "d", "task": {"kind": "digits-denoise", "n_heldout": 64, "n_eval": 8},
                            "model": {"kind": "pretrain", "steps": 1, "device": "cuda",
                                      "cache_dir": str(tmp_path / "cache")},
                            "schedule": {"kind": "constant", "n0": 8, "iterations": 1},
                            "budget": {"total": 1e6, "unit": "forward_passes", "costs": {"train": 1.0}}})
    with pytest.raises(ConfigError, match=r"^model\.device: cuda is not available here .*use device: cpu or auto$"):
        build_components(cfg)
    with pytest.raises(DeviceError, match=r"^device: unknown device 'tpu'"):
        resolve_device("tpu")


def test_float16_on_the_cpu_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model: dtype: float16 on the CPU is about a hundred times slower"):
        parse_config(data_config(tmp_path, device="cpu", dtype="float16"))
    with pytest.raises(DeviceError, match=r"^dtype: float16 on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))


def test_bfloat16_weights_generate_and_train_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthloop.experiments import build_components

    monkeypatch.setenv("SYNTHLOOP_CACHE", str(tmp_path / "cache"))
    parts = build_components(parse_config(data_config(tmp_path, dtype="bfloat16", pretrain_steps=5)))
    network = parts.learner.model.network
    assert {p.dtype for p in network.parameters()} == {torch.bfloat16}
    prompts = parts.task.sample_prompts(6, rng=np.random.default_rng(0))
    candidates = check_generator(parts.generator, parts.learner.model, prompts)
    before = [p.detach().clone() for p in network.parameters()]
    stats = parts.learner.update(candidates, prompts, rng=np.random.default_rng(1))
    assert stats["optimizer_steps"] == 1 and np.isfinite(stats["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))


def test_bfloat16_denoiser_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthloop.experiments import build_components

    cfg = parse_config({"name": "d", "task": {"kind": "digits-denoise", "n_heldout": 64, "n_eval": 8},
                        "model": {"kind": "pretrain", "steps": 2, "dtype": "bfloat16", "block_out_channels": [8, 16],
                                  "norm_num_groups": 4, "cache_dir": str(tmp_path / "cache")},
                        "generator": {"kind": "denoise", "sampler": "ddim"},
                        "learner": {"kind": "noise_prediction", "batch_size": 4},
                        "schedule": {"kind": "constant", "n0": 8, "iterations": 1},
                        "budget": {"total": 1e6, "unit": "forward_passes", "costs": {"train": 1.0}}})
    parts = build_components(cfg)
    err = capsys.readouterr().err.splitlines()  # pretraining the digits denoiser says so (not a terminal)
    assert "[synthloop] pretraining the denoising model (once; cached) (2 steps) ..." in err
    assert any(line.startswith("[synthloop] pretraining the denoising model (once; cached): done in") for line in err)
    assert parts.learner.model.unet.dtype == torch.bfloat16
    prompts = parts.task.sample_prompts(4, rng=np.random.default_rng(0))
    candidates = check_generator(parts.generator, parts.learner.model, prompts)
    assert candidates.samples["image"].dtype == np.float32 and np.isfinite(candidates.samples["image"]).all()
    assert parts.learner.update(candidates, prompts, rng=np.random.default_rng(0))["optimizer_steps"] == 1
    assert np.isfinite(parts.task.evaluate(parts.learner.model, rng=np.random.default_rng(0))["psnr"])


# -- what a user sees while a run prepares its model ------------------------------------------------


def run_cli(tmp: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "synthloop.cli", "run", str(path)], cwd=tmp,
                          env=cli_env({"SYNTHLOOP_CACHE": str(tmp / "cache")}), capture_output=True, text=True,
                          timeout=300, check=False)


def test_model_preparation_prints_progress_lines_when_not_on_a_terminal(tmp_path: Path) -> None:
    out = run_cli(tmp_path, data_config(tmp_path, pretrain_steps=30))
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    start = "[synthloop] pretraining a small model on your training rows (once; cached) (30 steps) ..."
    assert start in lines, out.stderr
    done = [k for k, line in enumerate(lines) if line.startswith(
        "[synthloop] pretraining a small model on your training rows (once; cached): done in ")]
    assert len(done) == 1 and done[0] > lines.index(start)
    # the libraries' own bars (saving and loading the checkpoint) are not shown between them
    assert "Writing model shards" not in out.stderr + out.stdout
    assert "Loading weights" not in out.stderr + out.stdout
    # a second run finds the model in the cache: no pretraining, no lines about it
    again = run_cli(tmp_path, {**data_config(tmp_path, pretrain_steps=30), "name": "prep-again"})
    assert again.returncode == 0 and "pretraining" not in again.stderr


def test_a_transformers_warning_goes_to_the_run_log_not_to_the_output(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from synthloop.models.scratch import TinyGPT2Config, tiny_gpt2, train_tokenizer

    model = tiny_gpt2(train_tokenizer([f"{k} + 1 = {k + 1}" for k in range(30)], vocab_size=80),
                      TinyGPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32))
    folder = tmp_path / "gpt"
    model.network.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["transformer.h.0.ln_1.bias"]  # transformers warns that it initialised the missing weight
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = data_config(tmp_path)
    config["model"] = {"kind": "pretrained", "source": str(folder)}
    out = run_cli(tmp_path, config)
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "runs" / "prep" / "logs" / "thirdparty.log").read_text()
    assert "transformer.h.0.ln_1.bias" in log and "MISSING" in log
    assert "ln_1.bias" not in out.stdout + out.stderr and "MISSING" not in out.stdout + out.stderr
    assert "[synthloop] plan:" in out.stderr  # synthloop's own lines are still there


def test_a_step_prints_periodic_lines_and_one_that_never_advances_says_it_is_alive() -> None:
    import io
    import time

    from synthloop.longstep import LongStep

    stream = io.StringIO()
    with LongStep("counting", total=4, interval=0.05, stream=stream) as step:
        for _ in range(4):
            time.sleep(0.06)
            step.advance()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[synthloop] counting (4 steps) ..." and lines[-1].startswith("[synthloop] counting: done in ")
    assert any(line.startswith("[synthloop] counting: 2/4 steps (50%)") and "ETA" in line for line in lines)
    stream = io.StringIO()
    with LongStep("exporting", interval=0.05, stream=stream):
        time.sleep(0.18)
    assert "[synthloop] exporting: still working, 0:00 elapsed" in stream.getvalue().splitlines()
    quiet = io.StringIO()
    with LongStep("evaluating", total=3, interval=5.0, announce=False, stream=quiet) as step:
        step.advance(3)
    assert quiet.getvalue() == ""  # a short evaluation inside a run adds no lines


def test_routing_holds_back_a_console_handler_a_library_adds_and_puts_everything_back(tmp_path: Path) -> None:
    import logging
    import warnings

    from synthloop.thirdparty import routed

    logger = logging.getLogger("peft")
    before = list(logger.handlers), logger.propagate
    log = tmp_path / "logs" / "thirdparty.log"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with routed(log):
            assert not log.exists()  # nothing written yet: no file
            console = logging.StreamHandler(sys.stderr)  # what a library does on its first import
            logger.addHandler(console)
            logger.warning("adapter weights were reset")
            warnings.warn_explicit("a library's deprecation", FutureWarning, "/site-packages/lib/x.py", 7)
        assert console in logger.handlers  # the library keeps its handler once the run is over
    text = log.read_text()
    assert "WARNING peft: adapter weights were reset" in text and "FutureWarning: a library's deprecation" in text
    logger.removeHandler(console)
    assert (list(logger.handlers), logger.propagate) == before
