"""The GPU check's throughput script runs end to end (tiny, on the CPU).

A GPU window is short and rare: a benchmark that breaks when the engine's API moves must fail
here, not there. ``build_model`` once gained a third return value and the baselines of
``benchmarks/step_throughput.py`` (steps 1-4 of ``gpu_check.sh``) stopped with a ValueError.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def step_throughput():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import step_throughput
        yield step_throughput
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("baseline", ["--from-memory", "--workers=0"])
def test_step_throughput_measures_engine_and_baseline(step_throughput, tmp_path, baseline):
    out = tmp_path / "step.json"
    rc = step_throughput.main(["--backbone", "test_efficientnet", "--strategy", "dann", "--image-size", "32",
                               "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu",
                               "--threads", "1", "--data-root", str(tmp_path / "no-data"),
                               "--cache-dir", str(tmp_path / "cache"), baseline, "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    kind = "preloaded_float_tensors" if baseline == "--from-memory" else "jpeg_dataloader"
    assert result["baseline"]["kind"] == kind
    assert result["engine"]["images_per_step"] == 8  # dann: 4 source + 4 target images a step
    assert result["engine"]["img_per_s"] > 0 and result["baseline"]["img_per_s"] > 0
    assert "generated JPEG folder" in result["data"]
