"""The benchmark scripts the performance work relies on run end to end (tiny, on the CPU).

A GPU window is short and rare: a benchmark that breaks when the engine's API moves must fail
here, not there. ``build_model`` once gained a third return value and the baselines of
``benchmarks/step_throughput.py`` (steps 1-4 of ``gpu_check.sh``) stopped with a ValueError.
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from conftest import ROOT


def _benchmark_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def step_throughput():
    return _benchmark_module("step_throughput")


@pytest.fixture(scope="module")
def harness_cost():
    return _benchmark_module("harness_cost")


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["--from-memory", "--workers=0"])
def test_step_throughput_measures_engine_and_baseline(step_throughput, tmp_path, baseline):
    out = tmp_path / "step.json"
    rc = step_throughput.main(
        [
            "--backbone",
            "test_efficientnet",
            "--strategy",
            "dann",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--data-root",
            str(tmp_path / "no-data"),
            "--cache-dir",
            str(tmp_path / "cache"),
            baseline,
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    kind = "preloaded_float_tensors" if baseline == "--from-memory" else "jpeg_dataloader"
    assert result["baseline"]["kind"] == kind
    assert result["engine"]["images_per_step"] == 8  # dann: 4 source + 4 target images a step
    assert result["engine"]["img_per_s"] > 0 and result["baseline"]["img_per_s"] > 0
    assert "generated JPEG folder" in result["data"]


def test_harness_cost_measures_its_three_arms_in_one_process(harness_cost, tmp_path, tiny_suite):
    out = tmp_path / "cost.json"
    rc = harness_cost.main(
        [
            str(tiny_suite),
            "--strategies",
            "dann",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "2",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["images_per_step"] == 16  # dann: 8 source + 8 target images a step
    assert "dann" in result["cell"]
    for arm in ("engine", "reused", "batches"):
        assert len(result[arm]["rounds"]) == 2 and result[arm]["img_per_s"] > 0
    step = {arm: 16 / result[arm]["img_per_s"] for arm in ("engine", "reused")}
    assert result["serving_share_of_step"] == pytest.approx((step["engine"] - step["reused"]) / step["engine"])


def test_harness_cost_refuses_a_cell_that_starts_on_cached_features(harness_cost, tmp_path, tiny_suite):
    suite = tmp_path / "freeze.yaml"
    suite.write_text(tiny_suite.read_text().replace("[source_only, dann]", "[freeze]"))
    with pytest.raises(SystemExit, match="cached features of a frozen backbone"):
        harness_cost.main([str(suite), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])


def test_page_costs_prices_fresh_and_copied_pages_above_owned_ones(tmp_path):
    page_costs = _benchmark_module("page_costs")
    out = tmp_path / "pages.json"
    assert page_costs.main(["--mib", "16", "--json", str(out)]) == 0
    costs = json.loads(out.read_text())
    assert costs["mib"] == 16 and costs["page_bytes"] > 0
    # a page fault (and a copy) costs more than writing a byte into a page the process owns, on any machine
    assert costs["fresh_us_per_page"] > 0 and costs["copy_on_write_us_per_page"] > 0
    assert "copy-on-write" in page_costs.describe(costs)


def test_curves_overhead_measures_both_arms_and_each_tracker(tmp_path, tiny_suite):
    # its "without curves" arm once stopped with an AttributeError when the engine took the metrics'
    # means from the curve recorder
    curves_overhead = _benchmark_module("curves_overhead")
    out = tmp_path / "curves.json"
    assert curves_overhead.main([str(tiny_suite), "--strategies", "dann", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["curves"]["cells"] == 1
    assert len(result["curves"]["median_cell_wall_s"]["with"]) == 1
    assert len(result["curves"]["median_cell_wall_s"]["without"]) == 1
    assert set(result["trackers"]) == {"mlflow", "tensorboard"}


def test_eval_points_overhead_trains_each_cell_in_both_arms(tmp_path, tiny_suite):
    eval_points_overhead = _benchmark_module("eval_points_overhead")
    out = tmp_path / "points.json"
    assert (
        eval_points_overhead.main(
            [str(tiny_suite), "--strategies", "dann", "--points", "2", "--repeats", "1", "--json", str(out)]
        )
        == 0
    )
    rows = json.loads(out.read_text())["cells"]
    assert len(rows) == 1
    assert rows[0]["same_final_accuracy"] is True  # checkpoint evaluations do not change training
    assert rows[0]["evaluations_bytes"] > 0


def test_tiers_measures_each_tier_on_the_path_it_names(tmp_path):
    tiers = _benchmark_module("tiers")
    out = tmp_path / "tiers.json"
    arms = "head (cached features),head (recomputed),top1,all"
    assert tiers.main(["--steps", "2", "--warmup", "1", "--arms", arms, "--json", str(out)]) == 0
    result = json.loads(out.read_text())["arms"]
    names = arms.split(",")
    assert set(result) == set(names)
    assert [result[a]["feature_cache"] for a in names] == [True, False, False, False]
    trainable = [result[a]["trainable_params"] for a in names]
    assert trainable[0] == trainable[1] < trainable[2] < trainable[3] == result["all"]["total_params"]


@pytest.mark.parametrize(
    "script",
    sorted(
        p.relative_to(ROOT).as_posix() for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*.sh")
    ),
)
def test_shell_scripts_run_directly_are_executable(script):
    """Every ``*.sh`` starts with a shebang and its usage line runs it directly (``benchmarks/gpu_office31.sh
    --budget ...``): without its executable bit that is "Permission denied" at the start of a GPU window."""
    path = ROOT / script
    assert path.read_text(encoding="utf-8").startswith("#!"), f"{script} has no shebang"
    assert path.stat().st_mode & 0o111 == 0o111, f"{script} is not executable: chmod +x {script} (git keeps the mode)"


def test_peer_tllib_digits_takes_each_methods_own_digits_line_and_sets_seed_log_and_epochs(tmp_path):
    peer = _benchmark_module("peer_tllib_digits")
    (tmp_path / "mcd.sh").write_text(
        "# Digits\n"
        "CUDA_VISIBLE_DEVICES=0 python mcd.py data/digits -d Digits -s MNIST -t USPS --lr 0.01 \\\n"
        "  --trade-off 0.3 -b 128 -i 2500 --scratch --seed 0 --log logs/mcd/MNIST2USPS\n"
        "CUDA_VISIBLE_DEVICES=0 python mcd.py data/digits -d Digits -s USPS -t MNIST --lr 0.1 \\\n"
        "  --trade-off 0.3 -b 128 -i 2500 --scratch --seed 0 --log logs/mcd/USPS2MNIST\n"
    )
    args = peer.digits_line(tmp_path, "mcd", "usps->mnist")
    assert args[:7] == ["-d", "Digits", "-s", "USPS", "-t", "MNIST", "--lr"] and args[7] == "0.1"
    run = peer.with_run_args(args, 2, tmp_path / "log", 1)
    assert run[-6:] == ["--seed", "2", "--log", str(tmp_path / "log"), "--epochs", "1"]
    assert run.count("--seed") == 1 and "logs/mcd/USPS2MNIST" not in run
    (tmp_path / "jan.sh").write_text("# Office31\nCUDA_VISIBLE_DEVICES=0 python jan.py data/office31 -d Office31\n")
    with pytest.raises(SystemExit, match="jan.sh has no '# Digits' line for MNIST -> USPS"):
        peer.digits_line(tmp_path, "jan", "mnist->usps")
