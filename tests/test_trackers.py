"""Trackers: TensorBoard and MLflow receive every finished cell, read back through each tool's own
reader and served by its own server on loopback; a failing tracker changes nothing else; a resumed
run sends no cell twice."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY_SUITE, run_tiny_suite

import tlbench
from tlbench.cli import main
from tlbench.plugins.registry import Registry, set_registry
from tlbench.spec.store import ResultsDir

SENT: list[str] = []


class Counting(tlbench.Tracker):
    """Notes the cells it is sent."""

    name = "counting"

    def log_cell(self, cell, record):
        SENT.append(cell.id)


class Broken(tlbench.Tracker):
    """Fails like a tracker whose server went away."""

    name = "broken"

    def log_cell(self, cell, record):
        raise ConnectionError("server at 127.0.0.1:9 refused the connection")


TEST_TRACKERS = types.SimpleNamespace(
    register_trackers=tlbench.hookimpl(lambda register: [register(Counting), register(Broken)])
)


@pytest.fixture
def with_test_trackers():
    registry = Registry()
    registry.add_plugin("test_trackers", TEST_TRACKERS)
    set_registry(registry)
    SENT.clear()
    yield
    set_registry(None)


def _suite(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE)
    return path


def _run(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "run",
            str(_suite(tmp_path)),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--cache",
            str(tmp_path / "cache"),
            *extra,
        ]
    )


@pytest.mark.slow
def test_a_resumed_run_sends_no_finished_cell_twice(with_test_trackers, tmp_path):
    assert _run(tmp_path, "--tracker", "counting") == 0
    records = ResultsDir(tmp_path / "out").records()
    assert sorted(SENT) == sorted(r.cell_id for r in records) and len(SENT) == 2
    assert _run(tmp_path, "--tracker", "counting") == 0
    assert len(SENT) == 2


@pytest.mark.slow
def test_a_failing_tracker_leaves_the_exit_code_and_the_records_alone(with_test_trackers, tmp_path, capsys):
    assert _run(tmp_path / "plain") == 0
    plain = {r.strategy: r.target_acc for r in ResultsDir(tmp_path / "plain" / "out").records()}
    assert _run(tmp_path, "--tracker", "broken", "--tracker", "counting") == 0
    err = capsys.readouterr().err
    assert err.count("tracker 'broken' failed (ConnectionError: server at 127.0.0.1:9 refused") == 1
    assert "the run goes on without it" in err
    assert {r.strategy: r.target_acc for r in ResultsDir(tmp_path / "out").records()} == plain
    assert len(SENT) == 2  # the other tracker was still fed


def test_an_unknown_tracker_or_option_is_bad_input(tmp_path, capsys):
    assert _run(tmp_path, "--tracker", "tensorbord") == 2
    assert "did you mean tensorboard" in capsys.readouterr().err
    suite = _suite(tmp_path)
    suite.write_text(TINY_SUITE + "trackers:\n  - {name: mlflow, options: {uri: x}}\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "tracker 'mlflow': unknown option(s) uri; valid: tracking_uri, experiment" in capsys.readouterr().err
    assert not list((tmp_path / "o2").glob("cells/*/record.json"))  # nothing trained


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """The tiny suite run once with both built-in trackers (the MLflow store under the output folder)."""
    tmp = tmp_path_factory.mktemp("tracked")
    _, out, code = run_tiny_suite(tmp, "--cache", str(tmp / "cache"), "--tracker", "tensorboard", "--tracker", "mlflow")
    assert code == 0
    return out


@pytest.mark.slow
def test_tensorboard_event_files_hold_every_cell_with_its_curves(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = ResultsDir(tracked_run)
    runs = sorted(p for p in (tracked_run / "tensorboard").iterdir() if p.is_dir())
    assert len(runs) == 2
    for record in results.records():
        (run,) = [p for p in runs if p.name.endswith(record.cell_id)]
        events = EventAccumulator(str(run))
        events.Reload()
        loss = events.Scalars("train/loss")
        assert [e.step for e in loss] == [3, 6]
        assert [e.value for e in loss] == pytest.approx(results.read_curves(record.cell_id)["series"]["loss"])
        assert events.Scalars("result/target_acc")[0].value == pytest.approx(record.target_acc)


def test_mlflow_holds_one_run_per_cell_with_params_metrics_and_histories(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run.resolve() / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    for record in ResultsDir(tracked_run).records():
        (run,) = client.search_runs([experiment.experiment_id], f"tags.`tlbench.cell_id` = '{record.cell_id}'")
        assert run.data.params["strategy"] == record.strategy
        assert run.data.metrics["target_acc"] == pytest.approx(record.target_acc)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [3, 6]
        assert run.info.status == "FINISHED"
        assert (run.info.end_time - run.info.start_time) / 1000 == pytest.approx(record.wall_s, abs=0.01)
    (board,) = client.search_runs([experiment.experiment_id], "tags.`tlbench.kind` = 'leaderboard'")
    names = {a.path for a in client.list_artifacts(board.info.run_id)}
    assert {"leaderboard.md", "leaderboard.html", "leaderboard.csv"} <= names
    artifacts = tracked_run / "mlflow" / "artifacts"
    assert artifacts.is_dir()  # the store and its artifacts stay in the output folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None):
    """GET a JSON document from a server that is still starting (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise
            time.sleep(1.0)


def _bin(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.skip(f"the {name} command is not installed")
        return found
    return str(path)


@pytest.mark.slow
def test_tensorboard_serves_the_runs_on_loopback(tracked_run):
    port = _free_port()
    proc = subprocess.Popen(
        [_bin("tensorboard"), "--logdir", str(tracked_run / "tensorboard"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        runs = _get_json(f"http://127.0.0.1:{port}/data/runs", proc=proc)
        assert len(runs) == 2 and all(
            any(r.endswith(rec.cell_id) for r in runs) for rec in ResultsDir(tracked_run).records()
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_ui_serves_the_runs_on_loopback(tracked_run):
    from mlflow.tracking import MlflowClient

    port = _free_port()
    store = f"sqlite:///{tracked_run.resolve() / 'mlflow' / 'mlflow.db'}"
    proc = subprocess.Popen(
        [
            _bin("mlflow"),
            "ui",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _get_json(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny", proc=proc)
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id], "tags.`tlbench.kind` = 'cell'")
        assert {r.data.tags["tlbench.cell_id"] for r in runs} == {r.cell_id for r in ResultsDir(tracked_run).records()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_server_down_is_a_warning_not_a_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    port = _free_port()  # nothing listens there
    suite = _suite(tmp_path)
    suite.write_text(
        TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [source_only]")
        + f"trackers:\n  - {{name: mlflow, options: {{tracking_uri: 'http://127.0.0.1:{port}'}}}}\n"
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--quiet", "--cache", str(tmp_path / "c")]) == 0
    assert "tracker 'mlflow' failed" in capsys.readouterr().err
    assert [r.status for r in ResultsDir(tmp_path / "out").records()] == ["ok"]
