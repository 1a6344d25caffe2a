"""Training curves: recorded at the logging steps, written beside each record, read back by
``tlbench curves`` and drawn in the HTML report."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

from tlbench.cli import main
from tlbench.spec.recipe import Recipe
from tlbench.spec.record import CellRecord
from tlbench.spec.store import ResultsDir
from tlbench.training.curves import CurveRecorder, Curves
from tlbench.training.loop import run_steps
from tlbench.training.schedule import ParamSchedule
from tlbench.training.strategy import Batch, ParamGroup, StepContext, StepOutput, Strategy

RECIPE = Recipe(
    steps=4, lr=0.1, lr_gamma=0.0, lr_decay=0.75, optimizer="sgd", momentum=0.0, nesterov=False, weight_decay=0.0
)


class _Square(Strategy):
    """Loss w² (SGD with lr 0.1 multiplies w by 0.8 each step); reports w and a host number."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def training_step(self, batch, ctx):
        return StepOutput(self.w**2, {"w": self.w.detach().clone(), "const": 3.0})


class _Batches:
    images_per_step = 1

    def batch(self, step):
        return Batch(source=torch.zeros(1), source_labels=torch.zeros(1))


def test_the_recorder_keeps_window_means_and_learning_rates_at_each_logging_step():
    strategy = _Square()
    schedule = ParamSchedule([ParamGroup("w", [strategy.w])], [strategy], strategy, RECIPE, torch.device("cpu"), "sq")
    recorder = CurveRecorder(schedule)
    ctx = StepContext(step=0, total_steps=4, model=None, device=torch.device("cpu"), num_classes=1)
    run_steps(
        strategy,
        schedule,
        _Batches(),
        ctx,
        contextlib.nullcontext,
        [recorder],
        total_steps=4,
        log_every=2,
        warmup_steps=0,
        device=torch.device("cpu"),
    )
    curves = recorder.curves
    assert curves.steps == [2, 4]
    w = [0.8**k for k in range(4)]  # w before each step
    assert curves.series["loss"] == pytest.approx([(w[0] ** 2 + w[1] ** 2) / 2, (w[2] ** 2 + w[3] ** 2) / 2])
    assert curves.series["w"] == pytest.approx([(w[0] + w[1]) / 2, (w[2] + w[3]) / 2])
    assert curves.series["const"] == [3.0, 3.0]
    assert curves.series["lr/w"] == pytest.approx([0.1, 0.1])


def test_a_series_that_starts_late_is_padded_and_round_trips():
    curves = Curves()
    curves.add(10, {"loss": 1.0})
    curves.add(20, {"loss": 0.5, "lr/backbone": 0.01})
    assert curves.series == {"loss": [1.0, 0.5], "lr/backbone": [None, 0.01]}
    assert Curves.from_dict(json.loads(json.dumps(curves.to_dict()))) == curves
    with pytest.raises(ValueError, match="points for 2 steps"):
        Curves.from_dict({"steps": [1, 2], "series": {"loss": [1.0]}})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny suite (6 steps, logging every 3) run once for this module's tests."""
    from conftest import run_tiny_suite

    tmp = tmp_path_factory.mktemp("curves")
    _, out, code = run_tiny_suite(tmp, "--cache", str(tmp / "cache"))
    assert code == 0
    return out


@pytest.mark.slow
def test_every_cell_has_one_point_per_logging_step_in_its_own_file(tiny_run):
    results = ResultsDir(tiny_run)
    records = results.records()
    assert len(records) == 2
    for r in records:
        curves = Curves.from_dict(results.read_curves(r.cell_id))
        assert curves.steps == [3, 6]
        assert {"loss", "source_ce", "lr/backbone", "lr/head"} <= set(curves.series)
        assert all(len(v) == 2 for v in curves.series.values())
        assert "curves" not in json.loads(results.record_path(r.cell_id).read_text())  # not in the record
    dann = next(r for r in records if r.strategy == "dann")
    assert {"domain_loss", "lr/dann"} <= set(results.read_curves(dann.cell_id)["series"])
    assert "curves" not in (tiny_run / "results.jsonl").read_text()


@pytest.mark.slow
def test_tlbench_curves_prints_tables_and_draws_a_png(tiny_run, capsys, tmp_path):
    assert main(["curves", str(tiny_run), "--cells", "*dann*", "--metric", "lr/*"]) == 0
    out = capsys.readouterr().out
    assert "dann digits->digits+invert seed=0" in out and "source_only" not in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["3", "6"]
    assert "lr/dann" in out and "source_ce" not in out
    png = tmp_path / "c.png"
    assert main(["curves", str(tiny_run), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tlbench_curves_names_what_exists_when_nothing_matches(tiny_run, capsys):
    assert main(["curves", str(tiny_run), "--metric", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no curve named 'nope'" in err and "source_ce" in err
    assert main(["curves", str(tiny_run), "--cells", "*mmd*"]) == 2
    assert "no cells with curves matching '*mmd*'" in capsys.readouterr().err


def test_the_html_report_embeds_the_training_curves(tiny_run):
    html = (tiny_run / "leaderboard.html").read_text()
    assert "<h2>Training curves</h2>" in html
    assert 'alt="curves_test_efficientnet_dann"' in html
    assert (tiny_run / "curves_test_efficientnet_source_only.png").is_file()


def test_a_record_without_curves_reports_as_before(tmp_path):
    rec = CellRecord(
        suite="s",
        dataset="d",
        backbone="b",
        strategy="x",
        source="a",
        target="b",
        seed=0,
        status="failed",
        error="boom",
        cell_id="0" * 16,
        started_at="2024",
    )
    results = ResultsDir(tmp_path)
    results.write_record(rec)
    assert not results.curves_path(rec.cell_id).exists()
    assert results.records(curves=True)[0].curves is None
