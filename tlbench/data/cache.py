"""Decoded domains, cached: decode a dataset's images once, then apply a spec's shifts.

:func:`load_domain` is the single way the harness gets a :class:`Domain`. The base domain is
decoded by its dataset plugin and kept on disk as uint8 tensors, keyed by everything that
changes the pixels (dataset, options, domain, size, the files' fingerprint), and in a small
in-process LRU. Each cache file has a sha256 sidecar: a truncated or altered file is noticed,
reported with a warning, and rebuilt rather than trusted. Files are written atomically, so
several processes may fill the same cache at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from tlbench.data.domains import DEFAULT_SEVERITY, Dataset, Domain, DomainSpec
from tlbench.data.files import load_checked, save_cached
from tlbench.errors import UserError

#: bump when the cache file layout changes; old files then simply stop matching
CACHE_FORMAT = 2  # 2: domains keep their dataset's official train/test split
#: the in-process LRU keeps at most this many bytes of decoded images (env TLBENCH_MEMORY_CACHE_MB)
DEFAULT_MEMORY_BYTES = 4 << 30


def default_cache_dir() -> Path:
    """``$TLBENCH_CACHE``, else ``~/.cache/tlbench``; never the file system's root when ``$HOME`` is empty."""
    env = os.environ.get("TLBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HOME")
    if not home or not Path(home).is_absolute() or Path(home) == Path(home).anchor:
        raise UserError(
            f"$HOME is {home!r}, so there is no ~/.cache for tlbench; set TLBENCH_CACHE to a "
            "writable folder (or pass --cache DIR)"
        )
    return Path(home) / ".cache" / "tlbench"


def usable_cache_dir(path: Path, what: str = "the cache folder") -> Path:
    """``path``, created if need be, or a one-line :class:`UserError` if it is a file or cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(
            f"{what} {path} is a file, not a folder; point TLBENCH_CACHE (or --cache) at a folder"
        ) from None
    except OSError as exc:
        raise UserError(
            f"{what} {path} cannot be created ({exc.strerror}); point TLBENCH_CACHE (or --cache) at a writable folder"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable; point TLBENCH_CACHE (or --cache) at a writable folder")
    return path


#: the caches of libraries tlbench runs, pointed into tlbench's own cache (environment variable, subfolder)
TOOL_CACHES = (("MPLCONFIGDIR", "matplotlib"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton"))


def point_tool_caches_into(cache: Path) -> None:
    """tlbench writes only to the output directory and its cache: matplotlib (imported by the plots
    reporter) would keep its font cache under $HOME, and torch's compiler (whose cache folder timm
    creates as soon as it builds a model) under the temporary folder: point both into ``cache``
    (a variable the user set is kept)."""
    for var, sub in TOOL_CACHES:
        if var not in os.environ:
            os.environ[var] = str(Path(cache) / sub)


def memory_cache_bytes() -> int:
    """The in-process LRU's byte budget: ``$TLBENCH_MEMORY_CACHE_MB`` megabytes, else the default; a value
    that is no number of megabytes (0 or more) is a one-line :class:`UserError` naming the variable."""
    env = os.environ.get("TLBENCH_MEMORY_CACHE_MB")
    if not env or not env.strip():
        return DEFAULT_MEMORY_BYTES
    try:
        megabytes = float(env)
    except ValueError:
        megabytes = math.nan
    if not math.isfinite(megabytes) or megabytes < 0:
        raise UserError(
            f"TLBENCH_MEMORY_CACHE_MB={env!r} is not a number of megabytes; set it to 0 or more (e.g. 2048; 0 "
            f"keeps no decoded domain in memory) or unset it for the default, {DEFAULT_MEMORY_BYTES >> 20}"
        )
    return int(megabytes * (1 << 20))


class _MemoryLRU:
    """Domains decoded in this process, least recently used dropped first beyond a byte budget."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Domain] = OrderedDict()

    @staticmethod
    def _budget() -> int:
        return memory_cache_bytes()

    def get(self, key: str) -> Domain | None:
        domain = self._items.get(key)
        if domain is not None:
            self._items.move_to_end(key)
        return domain

    def put(self, key: str, domain: Domain) -> None:
        self._items[key] = domain
        self._items.move_to_end(key)
        budget = self._budget()
        while len(self._items) > 1 and sum(d.images.numel() for d in self._items.values()) > budget:
            self._items.popitem(last=False)
        if budget <= 0:
            self._items.clear()

    def clear(self) -> None:
        self._items.clear()


_memory = _MemoryLRU()


def clear_memory_cache() -> None:
    """Forget the domains decoded in this process (the disk cache is untouched)."""
    _memory.clear()


def load_domain(
    dataset: Dataset, spec: DomainSpec | str, size: int, *, cache_dir: Path | None, shift_seed: int = 0, registry=None
) -> Domain:
    """The domain a spec such as ``amazon`` or ``digits+rotate:3+noise:2`` names, at ``size``×``size``.

    The base domain comes from the in-process LRU, else the disk cache under ``cache_dir``
    (``None``: no disk cache), else the dataset plugin; the shifts are then applied in order,
    each with a generator seeded from ``shift_seed``, its name and its severity, so the same
    spec and seed always give the same pixels. The returned tensors may be shared with the
    LRU: do not modify them in place. Unknown shift names raise :class:`UnknownNameError`.
    """
    if isinstance(spec, str):
        spec = DomainSpec.parse(spec)
    if registry is None and spec.shifts:
        from tlbench.plugins.registry import get_registry

        registry = get_registry()
    shifts = [
        (registry.get("shift", name), DEFAULT_SEVERITY if severity is None else severity)
        for name, severity in spec.shifts
    ]  # unknown names fail early
    base = dataset.resolve(spec.base)
    key = cache_key(dataset, base, size)
    full_key = f"{key}|{'+'.join(f'{n}:{s}' for n, s in spec.shifts)}|seed={shift_seed if spec.shifts else 0}"
    hit = _memory.get(full_key)
    if hit is not None:
        return hit.renamed(str(spec))
    domain = _memory.get(key)
    if domain is None:
        domain = _load_base(dataset, base, size, key, cache_dir)
        _memory.put(key, domain)
    elif cache_dir is not None and not cache_path(cache_dir, dataset, base, size, key).exists():
        _write(cache_path(cache_dir, dataset, base, size, key), key, domain)  # decoded for another cache
    images = domain.images
    for (shift_cls, severity), (name, _) in zip(shifts, spec.shifts):
        generator = torch.Generator().manual_seed(shift_generator_seed(shift_seed, name, severity))
        out = shift_cls().apply(images, severity, generator)
        if out.shape != images.shape or out.dtype != torch.uint8:
            raise RuntimeError(
                f"shift {name!r} returned {tuple(out.shape)} {out.dtype}, expected {tuple(images.shape)} torch.uint8"
            )
        images = out
    result = domain.renamed(str(spec), images)
    if spec.shifts:
        _memory.put(full_key, result)
    return result


def shift_generator_seed(shift_seed: int, name: str, severity: int) -> int:
    """A 63-bit seed that depends on the run's shift seed and on the shift, stable across runs and machines."""
    digest = hashlib.sha256(f"{shift_seed}|{name}|{severity}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def cache_key(dataset: Dataset, domain: str, size: int) -> str:
    """Everything that changes the decoded pixels of a base domain, as one string."""
    options = json.dumps(dataset.options, sort_keys=True, default=str)
    return json.dumps(
        {
            "format": CACHE_FORMAT,
            "dataset": dataset.name,
            "options": options,
            "domain": domain,
            "size": int(size),
            "fingerprint": dataset.fingerprint(domain),
        },
        sort_keys=True,
    )


def cache_path(cache_dir: Path, dataset: Dataset, domain: str, size: int, key: str) -> Path:
    """``<cache_dir>/domains/<dataset>/<domain>-<size>-<hash of key>.pt``."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / "domains" / _safe(dataset.name) / f"{_safe(domain)}-{size}-{digest}.pt"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "_"


def _load_base(dataset: Dataset, domain: str, size: int, key: str, cache_dir: Path | None) -> Domain:
    if cache_dir is None:
        return _decode(dataset, domain, size)
    path = cache_path(cache_dir, dataset, domain, size, key)
    cached = _read(path, key)
    if cached is not None:
        return cached
    decoded = _decode(dataset, domain, size)
    _write(path, key, decoded)
    return decoded


def _decode(dataset: Dataset, domain: str, size: int) -> Domain:
    decoded = dataset.load(domain, size)
    if tuple(decoded.images.shape[-2:]) != (size, size):
        raise RuntimeError(
            f"dataset {dataset.name!r} returned {domain!r} images of "
            f"{tuple(decoded.images.shape[-2:])}, expected {size}×{size}"
        )
    return decoded


def _read(path: Path, key: str) -> Domain | None:
    """The cached domain, or None when absent; a damaged or foreign file is reported and ignored."""
    blob = load_checked(path)
    if blob is None:
        return None
    if not isinstance(blob, dict) or blob.get("key") != key:
        warnings.warn(f"cache file {path} was written for another key; rebuilding it", stacklevel=3)
        return None
    return Domain(
        blob["name"], blob["images"], blob["labels"], list(blob["classes"]), list(blob["skipped"]), blob.get("split")
    )


def _write(path: Path, key: str, domain: Domain) -> None:
    blob: dict[str, Any] = {
        "key": key,
        "name": domain.name,
        "images": domain.images.contiguous(),
        "labels": domain.labels,
        "classes": list(domain.classes),
        "skipped": list(domain.skipped),
        "split": domain.split,
    }
    save_cached(path, blob)
