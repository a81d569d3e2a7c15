"""Ray fan-out of a part's generation and verification, and a comparison's cells as Ray tasks.

One local Ray cluster for the module (``ray.init(num_cpus=2)`` takes seconds). Its workers import
this checkout's sources and the tests' helper module through ``PYTHONPATH``, set before the start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from crashsafe_support import FAST, ROOT, snapshot
from ray_support import AlwaysDies, DiesOnce
from synthloop.configs import ConfigError, RunConfig, parse_config
from synthloop.engines.ray import (
    ActorShards,
    FanOutError,
    Job,
    SerialShards,
    ShardedGenerator,
    ShardedVerifier,
    fan_out,
    shard_seeds,
)
from synthloop.experiments import build_components, run_config
from synthloop.records import Prompts
from synthloop.testing import check_generator, check_verifier

ray = pytest.importorskip("ray")

SHARD = 32  # a part of the tiny run holds several shards


def tiny_config(**changes: object) -> RunConfig:
    data = yaml.safe_load((ROOT / "examples" / "gaussian.yaml").read_text())
    data["budget"]["total"] = 600
    data["schedule"] = {"kind": "exponential", "growth": 1.0, "n0": "auto", "iterations": 4}
    data["compare"] = {"seeds": 2, "schedules": {
        "constant": {"kind": "constant", "n0": "auto", "iterations": 4},
        "exponential": {"kind": "exponential", "growth": 1.0, "n0": "auto", "iterations": 4}}}
    data.update(changes)
    return parse_config(data)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), saved or ""])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _fanned_run(run_dir: Path, make_shards, generator=None) -> dict:
    config = tiny_config()
    components = build_components(config)
    if generator is not None:
        components.generator = generator
    shards = make_shards(components)
    try:
        run_config(config, run_dir=run_dir, components=fan_out(components, shards, shard_size=SHARD),
                   open_store=FAST)
    finally:
        if isinstance(shards, ActorShards):
            shards.close()
    return snapshot(run_dir)


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The sharded run in this process: what every number of workers must reproduce."""
    run_dir = tmp_path_factory.mktemp("serial") / "run"
    return _fanned_run(run_dir, lambda c: SerialShards(c.generator, c.task.verifier))


def test_shard_seeds_do_not_depend_on_how_many_shards() -> None:
    few = shard_seeds(np.random.default_rng(7), 2)
    many = shard_seeds(np.random.default_rng(7), 5)
    assert [s.generate_state(2).tolist() for s in few] == [s.generate_state(2).tolist() for s in many[:2]]
    assert few[0].generate_state(2).tolist() != few[1].generate_state(2).tolist()


def test_sharded_generator_and_verifier_keep_the_contracts() -> None:
    components = build_components(tiny_config())
    shards = SerialShards(components.generator, components.task.verifier)
    prompts = Prompts.unconditional(100)
    model = components.learner.model
    candidates = check_generator(ShardedGenerator(components.generator, shards, 7), model, prompts)
    scores = check_verifier(ShardedVerifier(components.task.verifier, shards, 7), candidates, prompts)
    whole = components.task.verifier.verify(candidates, prompts)
    assert np.array_equal(scores.reward, whole.reward) and np.array_equal(scores.verdict, whole.verdict)


def test_one_and_two_workers_give_the_serial_run(cluster: None, serial: dict, tmp_path: Path) -> None:
    assert len(serial["summaries"]) == 4 and serial["candidates"]
    for workers in (1, 2):
        fanned = _fanned_run(tmp_path / f"w{workers}",
                             lambda c, w=workers: ActorShards(c.generator, c.task.verifier, workers=w))
        assert fanned == serial, f"{workers} workers"


def test_a_worker_that_dies_mid_part_has_its_shard_redone(cluster: None, serial: dict, tmp_path: Path) -> None:
    calls, trigger = tmp_path / "calls", tmp_path / "trigger"
    trigger.touch()
    pools: list[ActorShards] = []

    def make(components):
        pools.append(ActorShards(components.generator, components.task.verifier, workers=2))
        return pools[-1]

    inner = build_components(tiny_config()).generator
    fanned = _fanned_run(tmp_path / "run", make, generator=DiesOnce(inner, calls, trigger, at=9))
    assert not trigger.exists(), "the worker never died: the test did not test anything"
    assert pools[0].redone == 1
    assert len(set(calls.read_text().split())) == 3  # two actors, then the one started in place of the dead
    assert fanned == serial


def test_a_shard_whose_workers_keep_dying_fails_the_part_after_max_redo(cluster: None) -> None:
    verifier = build_components(tiny_config()).task.verifier
    shards = ActorShards(AlwaysDies(), verifier, workers=1, max_redo=1)
    job = Job(0, "generate", Prompts.unconditional(4), seed=np.random.SeedSequence(0))
    try:
        with pytest.raises(FanOutError, match="shard 0 of a part: its worker died 2 times"):
            shards.run([job], model=None)
    finally:
        shards.close()
    assert shards.redone == 1


def test_compare_cells_as_ray_tasks_give_the_same_table(cluster: None, tmp_path: Path) -> None:
    from synthloop.comparisons import compare

    inline = compare(tiny_config(), schedules=None, seeds=2, out=tmp_path / "inline", open_store=FAST)
    on_ray = compare(tiny_config(), schedules=None, seeds=2, out=tmp_path / "ray", ray="local", workers=2,
                     open_store=FAST)
    assert on_ray == inline
    assert (tmp_path / "ray" / "table.md").read_text() == (tmp_path / "inline" / "table.md").read_text()
    assert ray.is_initialized()  # a cluster it did not start is left running


def test_the_engine_section_fans_a_configured_run_out_and_the_run_keeps_it(cluster: None, serial: dict,
                                                                         tmp_path: Path) -> None:
    """``engine: {kind: ray}`` in the YAML gives the run the Python wiring gives; the run's config.yaml keeps it for resume."""
    config = tiny_config(engine={"kind": "ray", "workers": 2, "shard_size": SHARD})
    run_dir = tmp_path / "run"
    run_config(config, run_dir=run_dir, open_store=FAST)
    assert snapshot(run_dir) == serial
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["engine"]["shard_size"] == SHARD


def test_a_bad_engine_section_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"engine\.workers"):
        tiny_config(engine={"kind": "ray", "workers": 0})
    with pytest.raises(ConfigError, match=r"engine\.kind"):
        tiny_config(engine={"kind": "dask"})
