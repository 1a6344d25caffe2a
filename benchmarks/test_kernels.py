"""Micro-benchmarks of the kernels on tlbench's hot path (pytest-benchmark).

Not part of the test suite (pytest's testpaths is ``tests``); run them with

    .venv/bin/python -m pytest benchmarks/ --benchmark-only

Each benchmark also checks the result it timed, so a fast wrong kernel fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlbench import Dataset, Domain
from tlbench.data.cache import clear_memory_cache, load_domain
from tlbench.training.augment import Augmenter, Normalizer
from tlbench_builtins.strategies.dann import reverse_gradient
from tlbench_builtins.strategies.mmd import mk_mmd

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _threads():
    """Repeatable figures on a shared machine: one intra-op thread unless TLBENCH_BENCH_THREADS says otherwise."""
    import os

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("TLBENCH_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


# -- gradient reversal ---------------------------------------------------------------------------
def test_gradient_reversal_forward_backward(benchmark):
    x = torch.randn(64, 256, requires_grad=True)
    upstream = torch.randn(64, 256)

    def run() -> torch.Tensor:
        x.grad = None
        reverse_gradient(x, 0.5).backward(upstream)
        return x.grad

    grad = benchmark(run)
    torch.testing.assert_close(grad, -0.5 * upstream)


# -- MMD -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("linear", [False, True], ids=["quadratic", "linear"])
def test_mk_mmd_forward_backward(benchmark, linear):
    g = torch.Generator().manual_seed(0)
    src = torch.randn(32, 256, generator=g, requires_grad=True)
    tgt = (torch.randn(32, 256, generator=g) + 1.0).requires_grad_()

    def run() -> torch.Tensor:
        src.grad = tgt.grad = None
        value = mk_mmd(src, tgt, linear=linear)
        value.backward()
        return value.detach()

    value = benchmark(run)
    assert value.item() > 0.05  # shifted by 1 in every dimension: clearly different samples
    assert src.grad is not None and torch.isfinite(src.grad).all()


# -- batched augmentation ------------------------------------------------------------------------
@pytest.mark.parametrize("stored,size", [(256, 224), (36, 32)], ids=["256to224", "36to32"])
@pytest.mark.parametrize("view", ["weak", "strong"])
def test_augment_batch(benchmark, view, stored, size):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, stored, stored), dtype=torch.uint8, generator=g)
    aug = Augmenter(
        size, Normalizer(MEAN, STD, "cpu"), hflip=True, scale=(0.08, 1.0), memory_format=torch.channels_last
    )
    fn = getattr(aug, view)

    out = benchmark(lambda: fn(images, g))
    assert out.shape == (64, 3, size, size) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()


# -- the decoded-image cache ---------------------------------------------------------------------
class _SyntheticDomains(Dataset):
    """One domain of deterministic uint8 images, as a dataset plugin would decode them."""

    name = "bench_synthetic"

    def domains(self) -> list[str]:
        return ["synthetic"]

    def fingerprint(self, domain: str) -> str:
        return "v1"

    def load(self, domain: str, size: int) -> Domain:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (500, 3, size, size), dtype=torch.uint8, generator=g)
        return Domain(domain, images, torch.arange(500) % 10, [str(i) for i in range(10)])


@pytest.mark.parametrize("size", [36, 256])
def test_load_domain_from_disk_cache(benchmark, tmp_path: Path, size):
    dataset = _SyntheticDomains()
    expected = load_domain(dataset, "synthetic", size, cache_dir=tmp_path)  # decode once, write the cache
    assert any((tmp_path / "domains").rglob("*.pt"))

    def run() -> Domain:
        clear_memory_cache()  # every round reads and verifies the file, as a fresh process does
        return load_domain(dataset, "synthetic", size, cache_dir=tmp_path)

    domain = benchmark(run)
    clear_memory_cache()
    assert torch.equal(domain.images, expected.images) and torch.equal(domain.labels, expected.labels)
    benchmark.extra_info["megabytes"] = domain.images.numel() / 2**20
