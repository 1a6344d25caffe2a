"""load_domain: the decoded-domain cache (disk + in-process) and shifts applied on top."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tlbench import DomainSpec, UserError
from tlbench.data.cache import cache_key, cache_path, clear_memory_cache, default_cache_dir, load_domain
from tlbench.errors import UnknownNameError
from tlbench.plugins.registry import Registry
from tlbench_builtins.datasets import npz, sklearn_digits
from tlbench_builtins.shifts import corruptions


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(
        entry_points=False, plugins={"sklearn_digits": sklearn_digits, "npz": npz, "corruptions": corruptions}
    )


@pytest.fixture(autouse=True)
def fresh_memory():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def counted(registry, monkeypatch):
    """sklearn_digits whose load() counts how often it really decodes."""
    ds = registry.get("dataset", "sklearn_digits")()
    calls = []
    real_load = ds.load

    def load(domain, size):
        calls.append((domain, size))
        return real_load(domain, size)

    monkeypatch.setattr(ds, "load", load)
    return ds, calls


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TLBENCH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tlbench"


def test_second_load_hits_the_disk_cache(tmp_path, counted):
    ds, calls = counted
    first = load_domain(ds, "digits", 12, cache_dir=tmp_path)
    assert len(calls) == 1
    files = _files(tmp_path)
    assert [f.suffix for f in files] == [".pt", ".sha256"]  # the data and its checksum, no temporary left
    clear_memory_cache()
    second = load_domain(ds, "digits", 12, cache_dir=tmp_path)
    assert len(calls) == 1  # read from disk, not decoded
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes and second.name == "digits"


def test_same_process_reuses_the_decoded_domain(tmp_path, counted):
    ds, calls = counted
    load_domain(ds, "digits", 8, cache_dir=tmp_path)
    for f in _files(tmp_path):
        f.unlink()
    load_domain(ds, "digits", 8, cache_dir=tmp_path)
    assert len(calls) == 1  # neither decoded nor read again
    load_domain(ds, "digits", 8, cache_dir=None)
    assert len(calls) == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar"])
def test_damaged_file_is_detected_and_rebuilt(tmp_path, counted, damage):
    ds, calls = counted
    first = load_domain(ds, "digits", 10, cache_dir=tmp_path)
    data = cache_path(tmp_path, ds, "digits", 10, cache_key(ds, "digits", 10))
    raw = bytearray(data.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        data.write_bytes(bytes(raw[: len(raw) // 3]))
    else:
        data.with_name(data.name + ".sha256").unlink()
    clear_memory_cache()
    with pytest.warns(UserWarning, match="unusable.*rebuilding"):
        again = load_domain(ds, "digits", 10, cache_dir=tmp_path)
    assert len(calls) == 2 and torch.equal(again.images, first.images)
    clear_memory_cache()
    load_domain(ds, "digits", 10, cache_dir=tmp_path)  # the rebuilt file is good again
    assert len(calls) == 2


def test_key_covers_size_options_and_files(tmp_path, registry):
    digits = registry.get("dataset", "sklearn_digits")()
    assert cache_key(digits, "digits", 8) != cache_key(digits, "digits", 16)
    assert cache_path(tmp_path, digits, "digits", 8, cache_key(digits, "digits", 8)) != cache_path(
        tmp_path, digits, "digits", 16, cache_key(digits, "digits", 16)
    )
    load_domain(digits, "digits", 8, cache_dir=tmp_path)
    load_domain(digits, "digits", 16, cache_dir=tmp_path)
    assert len([f for f in _files(tmp_path) if f.suffix == ".pt"]) == 2

    import numpy as np

    np.savez(tmp_path / "a.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 1]))
    one = registry.get("dataset", "npz")(tmp_path, files={"d": "a.npz"})
    other = registry.get("dataset", "npz")(tmp_path, files={"d": "b.npz"})
    assert cache_key(one, "d", 4) != cache_key(other, "d", 4)  # options differ
    before = cache_key(one, "d", 4)
    np.savez(tmp_path / "a.npz", x=np.full((3, 4, 4), 7, np.uint8), y=np.array([0, 1, 1]))
    assert cache_key(one, "d", 4) != before  # the file changed: its fingerprint too
    assert len(load_domain(one, "d", 4, cache_dir=tmp_path)) == 3


def test_shifts_apply_in_order_deterministically(tmp_path, registry):
    digits = registry.get("dataset", "sklearn_digits")()
    spec = "digits+rotate:2+noise:1"
    a = load_domain(digits, spec, 16, cache_dir=tmp_path, registry=registry)
    clear_memory_cache()
    b = load_domain(digits, DomainSpec.parse(spec), 16, cache_dir=tmp_path, registry=registry)
    assert a.name == b.name == "digits+rotate:2+noise:1"
    assert torch.equal(a.images, b.images)
    other_seed = load_domain(digits, spec, 16, cache_dir=tmp_path, shift_seed=1, registry=registry)
    assert not torch.equal(a.images, other_seed.images)
    plain = load_domain(digits, "digits", 16, cache_dir=tmp_path, registry=registry)
    assert torch.equal(a.labels, plain.labels) and not torch.equal(a.images, plain.images)
    swapped = load_domain(digits, "digits+noise:1+rotate:2", 16, cache_dir=tmp_path, registry=registry)
    assert not torch.equal(swapped.images, a.images)  # order matters
    inverted = load_domain(digits, "digits+invert", 16, cache_dir=tmp_path, registry=registry)
    assert torch.equal(inverted.images, 255 - plain.images)
    assert len([f for f in _files(tmp_path) if f.suffix == ".pt"]) == 1  # only the base domain is on disk


def test_unknown_names(tmp_path, registry):
    digits = registry.get("dataset", "sklearn_digits")()
    with pytest.raises(UnknownNameError, match="unknown shift 'rotat'; did you mean rotate"):
        load_domain(digits, "digits+rotat:2", 8, cache_dir=tmp_path, registry=registry)
    with pytest.raises(UserError, match="no domain 'mnist'"):
        load_domain(digits, "mnist", 8, cache_dir=tmp_path, registry=registry)


def test_unwritable_cache_dir_still_loads(tmp_path, registry):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    digits = registry.get("dataset", "sklearn_digits")()
    with pytest.warns(UserWarning, match="could not write cache file"):
        d = load_domain(digits, "digits", 8, cache_dir=blocker, registry=registry)
    assert len(d) == 1797
