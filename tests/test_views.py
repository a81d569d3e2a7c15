"""Looking at runs: inspect, the HTML report, export of a selected set, progress and trackers."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from crashsafe_support import CRASH_CONFIG, FAST
from synthloop.cli import app
from synthloop.configs import load_config
from synthloop.events import Event, IterationDone, PartDone, Started
from synthloop.experiments import run_config
from synthloop.progress import RunProgress, fan_out
from synthloop.records import IterationRecord
from synthloop.report import comparability_notes
from synthloop.store import RunStore

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two runs of the crash config (seeds 7 and 8) and one at another budget."""
    base = load_config(CRASH_CONFIG)
    out = []
    updates: dict[str, dict[str, object]] = {"a": {"seed": 7}, "b": {"seed": 8},
                                             "c": {"budget": base.budget.model_copy(update={"total": 400.0})}}
    for name, update in updates.items():
        run_dir = tmp_path_factory.mktemp(name) / "run"
        run_config(base.model_copy(update={"name": f"crash-{name}", **update}), run_dir=run_dir, open_store=FAST)
        out.append(run_dir)
    return out


def test_inspect_lists_iterations_and_budget(runs: list[Path]) -> None:
    result = runner.invoke(app, ["inspect", str(runs[0])])
    assert result.exit_code == 0, result.output
    history = [e.summary for e in RunStore(runs[0]).manifest().iterations]
    for m in history:
        assert re.search(rf"│\s+{m['iteration']} │\s+{m['n_selected']} │\s+{m['n_generated']} │", result.output)
    assert f"spent {history[-1]['cumulative_cost']:.6g} of 800 samples" in result.output
    assert "finished" in result.output


def test_inspect_of_a_missing_run_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "is not a synthloop run directory" in result.output


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_report_is_self_contained_html_with_png_plots(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(runs[0]), str(runs[1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    images = _images(page)
    assert len(images) == 4 and all(image.startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert "src='http" not in page and "<script" not in page  # nothing to fetch
    for title in ("Metric vs cumulative cost", "n_t", "N_t", "Acceptance rate", "Cost split by stage"):
        assert title in page
    assert "All runs share the task and a total budget of 800 samples" in page
    assert "crash-a" in page and "crash-b" in page


def test_report_says_when_runs_do_not_share_a_budget(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(runs[0]), str(runs[2]), "--out", str(out)])
    assert result.exit_code == 0
    assert "do not share a total budget" in result.output
    assert "do not share a total budget (400 samples, 800 samples)" in out.read_text()


def test_comparability_also_checks_the_task(runs: list[Path]) -> None:
    from synthloop.views import run_summary

    a, b = run_summary(runs[0]), run_summary(runs[1])
    assert comparability_notes([a, b]) == []
    other = a.__class__(**{**a.__dict__, "task": '{"kind": "gaussian", "theta0": [5.0]}'})
    assert any("task" in note for note in comparability_notes([a, other]))


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_export_is_loadable_by_datasets(suffix: str, runs: list[Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / f"selected.{suffix}"
    result = runner.invoke(app, ["export", str(runs[0]), "--iteration", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = RunStore(runs[0]).selected(3)
    loaded = datasets.load_dataset("parquet" if suffix == "parquet" else "json", data_files=str(out),
                                   split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == stored.num_rows
    assert loaded["index"] == stored.column("index").to_pylist()
    assert loaded["x"] == stored.column("sample.x").to_pylist()
    assert loaded["reward"] == stored.column("reward").to_pylist()
    names = {0: "pass", 1: "fail", 2: "error"}
    assert loaded["verdict_name"] == [names[v] for v in stored.column("verdict").to_pylist()]


def test_export_of_an_uncommitted_iteration_is_an_error(runs: list[Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(runs[0]), "--iteration", "99", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 1
    assert "iteration 99 is not committed" in result.output


def test_export_refuses_a_file_that_failed_its_check(runs: list[Path], tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs[0], run_dir)
    path = run_dir / "iter-0002" / "selected.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    result = runner.invoke(app, ["export", str(run_dir), "--iteration", "2", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 1 and "iter-0002/selected.parquet is truncated" in result.output
    assert not (tmp_path / "x.parquet").exists()


# -- progress ----------------------------------------------------------------------------------


def _events(run_dir: Path) -> list[Event]:
    manifest = RunStore(run_dir).manifest()
    history = [IterationRecord.from_json(e.summary) for e in manifest.iterations]
    from synthloop.budget import PlannedIteration

    assert manifest.initial is not None
    plan = [PlannedIteration(i, m.n_target, 0.0, 0.0, float(m.cumulative_cost)) for i, m in enumerate(history)]
    events: list[Event] = [Started(initial=manifest.initial.metrics, plan=plan, resumed=0, spent=0.0,
                                   total=800.0)]
    for m in history:
        events.append(PartDone(iteration=m.iteration, kept=m.n_selected, target=m.n_target,
                               generated=m.n_generated, spent=m.cumulative_cost, total=800.0))
        events.append(IterationDone(m))
    return events


def test_progress_without_a_terminal_prints_plain_lines(runs: list[Path]) -> None:
    from rich.console import Console

    stream = io.StringIO()
    with RunProgress(console=Console(file=io.StringIO(), force_terminal=False), interval=0.0, stream=stream) as progress:
        for event in _events(runs[0]):
            progress(event)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[synthloop] plan: 8 iterations")
    assert any(re.match(r"\[synthloop\] iteration 0: kept \d+/\d+, drawn \d+, budget .* rate .*/s, ETA ", line)
               for line in lines)
    assert sum(line.startswith("[synthloop] iteration 7: kept") for line in lines) == 2
    assert "\x1b[" not in stream.getvalue()  # no terminal control codes in CI logs


def test_progress_on_a_terminal_shows_a_live_display(runs: list[Path]) -> None:
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=140)
    with RunProgress(console=console) as progress:
        for event in _events(runs[0]):
            progress(event)
    text = screen.getvalue()
    assert "budget" in text and "iteration 7" in text and "kept" in text and "rate" in text


def test_rate_and_eta() -> None:
    progress = RunProgress(console=None)
    progress._clock -= 10.0  # ten seconds ago
    rate, eta = progress.rate_and_eta(spent=50.0, total=150.0)
    assert rate == pytest.approx(5.0, rel=0.05) and eta == pytest.approx(20.0, rel=0.05)


def test_fan_out_passes_every_event_to_each() -> None:
    seen: list[str] = []
    report = fan_out(lambda e: seen.append(f"a:{e.kind}"), lambda e: seen.append(f"b:{e.kind}"))
    report(PartDone(iteration=0, kept=1, target=2, generated=3, spent=1.0, total=2.0))
    assert seen == ["a:part", "b:part"]


# -- trackers, against their real local backends --------------------------------------------


def test_tensorboard_tracker_writes_readable_event_files(runs: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from synthloop.trackers import TensorBoardTracker

    tracker = TensorBoardTracker(tmp_path / "tb")
    for event in _events(runs[0]):
        tracker(event)
    tracker.close()
    history = [e.summary for e in RunStore(runs[0]).manifest().iterations]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    gap = [(s.step, s.value) for s in events.Scalars("eval/gap")]
    assert [step for step, _ in gap] == [-1, *range(8)]
    assert [v for _, v in gap[1:]] == pytest.approx([m["eval"]["gap"] for m in history], rel=1e-6)
    assert [s.value for s in events.Scalars("n_selected")] == [m["n_selected"] for m in history]
    assert "cost/train" in events.Tags()["scalars"] and "acceptance_rate" in events.Tags()["scalars"]


@pytest.mark.parametrize("backend", ["folder", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_mlflow_tracker_logs_to_a_local_store(backend: str, runs: list[Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from synthloop.trackers import FILE_STORE_VARIABLE, MLflowTracker

    monkeypatch.delenv(FILE_STORE_VARIABLE, raising=False)
    if backend == "folder":
        with pytest.raises(ValueError, match=FILE_STORE_VARIABLE):  # library code asks, never sets
            MLflowTracker(str(tmp_path / "refused"), run_name="crash-a")
        monkeypatch.setenv(FILE_STORE_VARIABLE, "true")

    if backend == "sqlite":
        pytest.importorskip("sqlalchemy")
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        uri = str(tmp_path / "mlruns")
    import warnings

    with warnings.catch_warnings():
        # MLflow's SQL store uses SQLAlchemy options that SQLAlchemy 2.1 deprecates: not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        tracker = MLflowTracker(uri, run_name="crash-a")
        for event in _events(runs[0]):
            tracker(event)
        tracker.close()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri if backend == "sqlite" else (tmp_path / "mlruns").as_uri())
        run = client.get_run(tracker.run_id)
        gap = client.get_metric_history(tracker.run_id, "eval.gap")
    history = [e.summary for e in RunStore(runs[0]).manifest().iterations]
    assert run.info.status == "FINISHED" and run.info.run_name == "crash-a"
    assert sorted((m.step, m.value) for m in gap)[1:] == [(m["iteration"], m["eval"]["gap"]) for m in history]
    assert run.data.metrics["cumulative_cost"] == history[-1]["cumulative_cost"]


def test_run_with_trackers_from_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    result = runner.invoke(app, ["run", str(CRASH_CONFIG), "--runs-dir", str(tmp_path / "runs"),
                                 "--tensorboard", str(tmp_path / "tb"), "--mlflow", str(tmp_path / "mlruns")])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "tb" / "crash").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "runs" / "crash" / "manifest.json").read_text())["finished"]
    assert (tmp_path / "mlruns").is_dir()
    assert pq.read_table(tmp_path / "runs" / "crash" / "ledger.parquet").num_rows > 0


def test_report_of_a_run_with_no_iteration_yet(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create((CRASH_CONFIG).read_text())
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(store.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(_images(out.read_text())) == 4


def test_report_to_a_folder_names_it_and_leaves_nothing(runs: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    result = runner.invoke(app, ["report", str(runs[0]), "--out", str(folder)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"synthloop: Is a directory: {folder}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"] and not list(folder.iterdir())
