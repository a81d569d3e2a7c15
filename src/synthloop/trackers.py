"""Per-iteration metrics to experiment trackers: TensorBoard and MLflow (optional extras).

Each tracker is a ``report`` callback of the loop (combine them with ``progress.fan_out``) with a
``close()``. Each logs, at step = iteration: the evaluation metrics (``eval/...``), n_t, N_t, the
acceptance rate, the iteration's and the cumulative cost, and the cost of each stage. Both write to
local files, no server: TensorBoard event files in a folder; MLflow to a local tracking URI (a
folder, ``file:///...``, or ``sqlite:///...`` where MLflow's SQL store is installed).

``pip install 'synthloop[tensorboard]'`` / ``'synthloop[mlflow]'``; imported only when used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from synthloop.events import Event, IterationDone, Started
from synthloop.records import IterationRecord


def iteration_scalars(record: IterationRecord) -> dict[str, float]:
    """The numbers a tracker logs for one iteration's record."""
    scalars = {
        "n_selected": float(record.n_selected),
        "n_generated": float(record.n_generated),
        "acceptance_rate": float(record.acceptance_rate),
        "iteration_cost": float(record.iteration_cost),
        "cumulative_cost": float(record.cumulative_cost),
    }
    scalars.update({f"cost/{stage}": float(v) for stage, v in record.cost.items()})
    scalars.update({f"eval/{name}": float(v) for name, v in record.eval.items()})
    scalars.update({f"train/{name}": float(v) for name, v in record.train.items()})
    # estimates, named as such: "estimate/<name>"; the estimator of each is in the record's labels
    scalars.update({f"estimate/{name}": float(v) for name, v in record.diagnostics.items()})
    return scalars


def tracked(event: Event) -> tuple[int, dict[str, float]] | None:
    """(step, scalars) a tracker logs for a loop event: the initial evaluation at step -1, then one
    step per iteration; None for events trackers ignore."""
    if isinstance(event, Started):
        return -1, {f"eval/{k}": float(v) for k, v in event.initial.items()}
    if isinstance(event, IterationDone):
        return event.record.iteration, iteration_scalars(event.record)
    return None


class TensorBoardTracker:
    """Writes scalars to TensorBoard event files in ``logdir`` (``tensorboard --logdir`` reads them)."""

    def __init__(self, logdir: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.logdir))

    def __call__(self, event: Event) -> None:
        logged = tracked(event)
        if logged is not None:
            self._log(*logged)

    def _log(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                               summary=summary_pb2.Summary(value=values)))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


FILE_STORE_VARIABLE = "MLFLOW_ALLOW_FILE_STORE"


class MLflowTracker:
    """Logs to an MLflow run (one per synthloop run) at a local tracking URI."""

    def __init__(self, tracking_uri: str, *, run_name: str, experiment: str = "synthloop") -> None:
        from mlflow.tracking import MlflowClient

        uri = tracking_uri if "://" in tracking_uri else Path(tracking_uri).resolve().as_uri()
        if uri.startswith("file:") and os.environ.get(FILE_STORE_VARIABLE, "") != "true":
            # MLflow 3 keeps its file store only on request ("maintenance mode"); the command line
            # asks for it (a folder needs no server and no SQL driver), library code does not.
            raise ValueError(f"MLflow opens a folder store only with {FILE_STORE_VARIABLE}=true in the "
                             "environment; set it, or give a sqlite:/// tracking URI")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def __call__(self, event: Event) -> None:
        logged = tracked(event)
        if logged is not None:
            self._log(*logged)

    def _log(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key=k.replace("/", "."), value=v, timestamp=now, step=step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
