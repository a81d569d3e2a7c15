"""Ray (extra ``synthloop[ray]``): a part's generation and verification fanned out over an actor
pool, and a comparison's cells run as Ray tasks.

**Fan-out of a part.** :func:`fan_out` wraps a run's generator and its task's verifier. Each part's
prompts are cut into shards of ``shard_size`` rows; shard i draws from its own seed,
``SeedSequence(entropy drawn from the part's rng).spawn(n)[i]``. The shards depend on the part and
``shard_size`` only, never on how many workers run them, so a run gives the same samples with 1
worker, with 8, or in this process (:class:`SerialShards`, the definition the actor pool must
match). Each actor holds one copy of the generator and the verifier (one model per actor, loaded
once); the student, which changes every iteration, is put in the object store once per part.

**A worker that dies.** A shard whose actor dies (a crash, a lost node) is given to a fresh actor and
redone from its seed, so a death costs at most the shards that actor held, never a part or the run;
after ``max_redo`` deaths in one part the part fails with the last error (``FanOutError``). Parts
already committed are never redone: the journal reads them back (``runs.py``).

**Cells of a comparison.** :class:`RayCellPool` runs ``synthloop.comparisons.run_cell`` as Ray
tasks (``synthloop compare --ray local|ADDRESS``). A cell's run directory must be on a file system
that every node sees; a task retried after its worker died resumes the cell from its last commit.

Ray is imported inside functions only, so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from synthloop.protocols import Generator, Verifier
from synthloop.records import Candidates, Prompts, Scores

if TYPE_CHECKING:
    from synthloop.loop import Components
    from synthloop.protocols import Task

DEFAULT_SHARD_SIZE = 256


class FanOutError(RuntimeError):
    """A shard could not be done: its worker died more than ``max_redo`` times in one part (an
    exception the generator or verifier raises inside a shard reaches the caller as Ray raises it)."""


# -- shards --------------------------------------------------------------------------------------

def shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` row ranges of at most ``shard_size`` rows covering ``n`` rows.

    >>> shard_bounds(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    return [(lo, min(lo + shard_size, n)) for lo in range(0, n, shard_size)]


def shard_seeds(rng: np.random.Generator, n_shards: int) -> list[np.random.SeedSequence]:
    """One independent seed per shard, from the part's rng: child i is the same for any ``n_shards``."""
    root = np.random.SeedSequence([int(x) for x in rng.integers(0, 2**63, size=4)])
    return root.spawn(n_shards)


@dataclass(frozen=True)
class Job:
    """One shard of a part: ``generate`` (prompts, seed) or ``verify`` (candidates, prompts)."""

    index: int
    kind: str
    prompts: Prompts
    seed: np.random.SeedSequence | None = None
    candidates: Candidates | None = None


def do_job(generator: Generator, verifier: Verifier, model: Any, job: Job) -> Candidates | Scores:
    """What every executor runs for a shard: the same call wherever it happens."""
    if job.kind == "generate":
        assert job.seed is not None
        return generator.generate(model, job.prompts, rng=np.random.default_rng(job.seed))
    assert job.candidates is not None
    return verifier.verify(job.candidates, job.prompts)


class Shards(Protocol):
    """Runs a part's jobs and returns their results in job order."""

    def run(self, jobs: Sequence[Job], *, model: Any) -> list[Any]: ...


@dataclass
class SerialShards:
    """The shards one after another in this process: what any number of Ray workers must reproduce."""

    generator: Generator
    verifier: Verifier

    def run(self, jobs: Sequence[Job], *, model: Any) -> list[Any]:
        return [do_job(self.generator, self.verifier, model, job) for job in jobs]


@dataclass(frozen=True)
class ShardedGenerator:
    """A generator whose parts are cut into shards with their own seeds (see the module docstring)."""

    inner: Generator
    shards: Shards
    shard_size: int = DEFAULT_SHARD_SIZE

    def max_usage_per_draw(self) -> Mapping[str, float]:
        return self.inner.max_usage_per_draw()

    def generate(self, model: Any, prompts: Prompts, *, rng: np.random.Generator) -> Candidates:
        bounds = shard_bounds(len(prompts), self.shard_size) or [(0, 0)]
        seeds = shard_seeds(rng, len(bounds))
        jobs = [Job(i, "generate", prompts.take(np.arange(lo, hi)), seed=seed)
                for i, ((lo, hi), seed) in enumerate(zip(bounds, seeds, strict=True))]
        return Candidates.concat(self.shards.run(jobs, model=model))


@dataclass(frozen=True)
class ShardedVerifier:
    """A verifier whose parts are cut into shards (a verifier draws nothing: no seeds needed)."""

    inner: Verifier
    shards: Shards
    shard_size: int = DEFAULT_SHARD_SIZE

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        bounds = shard_bounds(len(candidates), self.shard_size) or [(0, 0)]
        jobs = [Job(i, "verify", prompts.take(np.arange(lo, hi)), candidates=candidates.take(np.arange(lo, hi)))
                for i, (lo, hi) in enumerate(bounds)]
        return Scores.concat(self.shards.run(jobs, model=None))


class VerifiedBy:
    """``task`` with another verifier; everything else (pools, scorers, sources) is the task's own."""

    def __init__(self, task: Task, verifier: Verifier) -> None:
        self._task = task
        self._verifier = verifier

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def name(self) -> str:
        return self._task.name

    @property
    def primary_metric(self) -> str:
        return self._task.primary_metric

    @property
    def higher_is_better(self) -> bool:
        return self._task.higher_is_better

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self._task.sample_prompts(n, rng=rng)

    def evaluate(self, model: Any, *, rng: np.random.Generator) -> dict[str, float]:
        return self._task.evaluate(model, rng=rng)

    def __getattr__(self, name: str) -> Any:  # optional protocols (PromptPool, PromptScorer...) pass through
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._task, name)


def fan_out(components: Components, shards: Shards, *, shard_size: int = DEFAULT_SHARD_SIZE) -> Components:
    """``components`` with generation and verification cut into shards run by ``shards``.

    ``shards`` must hold the same generator and verifier as ``components`` (see :func:`actor_shards`).
    """
    return replace(components, generator=ShardedGenerator(components.generator, shards, shard_size),
                   task=VerifiedBy(components.task, ShardedVerifier(components.task.verifier, shards, shard_size)))


def actor_shards(components: Components, *, workers: int, address: str = "local",
                 max_redo: int = 3) -> ActorShards:
    """An actor pool holding ``components``' generator and verifier (Ray started if it is not)."""
    connect(address)
    return ActorShards(components.generator, components.task.verifier, workers=workers, max_redo=max_redo)


# -- the actor pool ------------------------------------------------------------------------------

class ShardWorker:
    """The actor: one generator and one verifier, kept for the actor's life."""

    def __init__(self, generator: Generator, verifier: Verifier) -> None:
        self.generator = generator
        self.verifier = verifier

    def run(self, model: Any, job: Job) -> Candidates | Scores:
        return do_job(self.generator, self.verifier, model, job)


@dataclass
class ActorShards:
    """Shards run by ``workers`` Ray actors; a shard whose actor died is redone on a fresh one."""

    generator: Generator
    verifier: Verifier
    workers: int
    max_redo: int = 3
    redone: int = field(default=0, init=False)  # shards redone after their actor died, over the pool's life
    _actors: list[Any] = field(default_factory=list, init=False)
    _actor_class: Any = field(default=None, init=False)

    def run(self, jobs: Sequence[Job], *, model: Any) -> list[Any]:
        import ray

        self._start()
        model_ref = ray.put(model)
        waiting, results = list(jobs), [None] * len(jobs)
        flying: dict[Any, tuple[int, Job]] = {}  # object ref -> (actor slot, job)
        deaths = 0
        while waiting or flying:
            busy = {slot for slot, _ in flying.values()}
            for slot in (s for s in range(self.workers) if s not in busy):
                if waiting:
                    job = waiting.pop(0)
                    flying[self._actors[slot].run.remote(model_ref, job)] = (slot, job)
            ready, _ = ray.wait(list(flying), num_returns=1)
            slot, job = flying.pop(ready[0])
            try:
                results[job.index] = ray.get(ready[0])
            except ray.exceptions.RayActorError as error:
                deaths += 1
                if deaths > self.max_redo:
                    raise FanOutError(f"shard {job.index} of a part: its worker died {deaths} times "
                                      f"({error.__class__.__name__})") from None
                self.redone += 1
                self._actors[slot] = self._new_actor()
                waiting.insert(0, job)
        return results

    def _start(self) -> None:
        while len(self._actors) < self.workers:
            self._actors.append(self._new_actor())

    def _new_actor(self) -> Any:
        import ray

        if self._actor_class is None:
            self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(ShardWorker)
        return self._actor_class.remote(self.generator, self.verifier)

    def actors(self) -> list[Any]:
        """The live actors (a test kills one to check that its shard is redone)."""
        self._start()
        return list(self._actors)

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors.clear()


# -- comparison cells as Ray tasks ---------------------------------------------------------------

def connect(address: str) -> bool:
    """Start Ray here (``local``) or join the cluster at ``address``; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    return True


class RayCellPool:
    """A comparison's cells as Ray tasks, at most ``workers`` at a time (default: the cluster's CPUs)."""

    def __init__(self, run_cell: Callable[..., Any], *, address: str, workers: int | None,
                 open_store: Callable[..., Any]) -> None:
        import ray

        self._started = connect(address)
        self.width = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        self.open_store = open_store
        self._remote = ray.remote(num_cpus=1, max_retries=2)(run_cell)

    def submit(self, cell: Any) -> Any:
        return self._remote.remote(cell, open_store=self.open_store)

    def wait(self, handles: Sequence[Any]) -> tuple[Any, Any]:
        import ray

        ready, _ = ray.wait(list(handles), num_returns=1)
        return ready[0], ray.get(ready[0])

    def close(self) -> None:
        import ray

        if self._started:
            ray.shutdown()
