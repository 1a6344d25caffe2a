"""Same suite, seed and device: the same numbers on CPU, and the record says determinism was on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)

from tlbench.cli import main

#: what legitimately differs between two runs of the same cell
TIMING = {"train_img_per_s", "eval_img_per_s", "peak_mem_mb", "wall_s", "started_at", "train_seconds"}


def _records(out: Path) -> dict[str, dict]:
    out_records = {}
    for p in (out / "cells").glob("*/record.json"):
        r = json.loads(p.read_text())
        r["extra"] = {k: v for k, v in r["extra"].items() if k not in TIMING}
        out_records[p.parent.name] = {k: v for k, v in r.items() if k not in TIMING}
    return out_records


@pytest.mark.slow
def test_same_suite_seed_and_device_give_the_same_numbers(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    # dann: random augmentations, sampling and a domain discriminator; reports are not the point here
    suite.write_text(TINY_SUITE + "reports: [csv]\n")
    args = ["--quiet", "--device", "cpu", "--strategies", "dann", "--seeds", "0,1"]
    assert main(["run", str(suite), "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["run", str(suite), "--out", str(tmp_path / "b"), *args]) == 0
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert len(a) == 2 and a == b  # every number: accuracies, parameter counts, mean losses and metrics
    assert all(r["extra"]["deterministic"] is True for r in a.values())
    assert {r["seed"] for r in a.values()} == {0, 1}
    seed0, seed1 = sorted(a.values(), key=lambda r: r["seed"])
    assert seed0["extra"]["source_ce"] != seed1["extra"]["source_ce"]  # the seed matters, so the check has teeth

    assert (
        main(
            [
                "run",
                str(suite),
                "--out",
                str(tmp_path / "c"),
                *args[:-2],
                "--seeds",
                "0",
                "--set",
                "recipe.deterministic=false",
            ]
        )
        == 0
    )
    (c,) = _records(tmp_path / "c").values()
    assert c["extra"]["deterministic"] is False


def test_deterministic_mode_keeps_new_tensors_unfilled_and_its_numbers_do_not_depend_on_it():
    """torch's NaN fill of new tensors (a debugging aid of deterministic mode) is off: it costs time and
    no result depends on it, which the same seeded step with the fill on shows."""
    import torch
    import torch.utils.deterministic as torch_determinism

    from tlbench.testing import make_tiny_model
    from tlbench.training.setup import seed_everything

    def one_step(fill: bool) -> torch.Tensor:
        seed_everything(0, True, torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled() and not torch_determinism.fill_uninitialized_memory
        torch_determinism.fill_uninitialized_memory = fill
        model = make_tiny_model()
        x = torch.rand(4, 3, 16, 16)
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    try:
        assert torch.equal(one_step(fill=True), one_step(fill=False))
    finally:
        torch.use_deterministic_algorithms(False)
        torch_determinism.fill_uninitialized_memory = True
