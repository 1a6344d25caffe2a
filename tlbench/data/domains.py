"""Domains, the dataset and shift plugin contracts, and domain specs such as ``digits+rotate:3``.

A domain is decoded once into a uint8 tensor (N×3×S×S) plus int64 labels; everything after that
(augmentation, batching) is tensor work on the training device. Datasets turn a data root into
such domains; shifts derive a new domain from any domain, deterministically for a seed and a
severity from 1 to 5.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from tlbench.data import memory
from tlbench.errors import UserError
from tlbench.plugins.registry import Plugin

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


#: values of :attr:`Domain.split`: an image of the dataset's official training or test split
TRAIN, TEST = 0, 1


@dataclass
class Domain:
    """Decoded images of one domain: ``images`` uint8 N×3×S×S, ``labels`` int64 N.

    ``split`` is the dataset's own train/test split when it has one (uint8 N: :data:`TRAIN` or
    :data:`TEST`, e.g. USPS's 7,291 + 2,007, or an image folder's ``train/`` and ``test/``), else
    None; the fine-tuning protocol honours it instead of drawing its own.
    """

    name: str
    images: Tensor
    labels: Tensor
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # files skipped as unreadable, with reasons
    split: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"domain {self.name!r}: images must be uint8 N×3×H×W, got "
                f"{tuple(self.images.shape)} {self.images.dtype}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"domain {self.name!r}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise UserError(f"domain {self.name!r} has no images")
        if self.split is not None and (
            len(self.split) != len(self.labels) or not bool(((self.split == TRAIN) | (self.split == TEST)).all())
        ):
            raise ValueError(
                f"domain {self.name!r}: split must hold {TRAIN} (train) or {TEST} (test) for each "
                f"of its {len(self.labels)} images"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor, name: str | None = None) -> Domain:
        split = None if self.split is None else self.split[index]
        return Domain(name or self.name, self.images[index], self.labels[index], self.classes, self.skipped, split)

    def renamed(self, name: str, images: Tensor | None = None) -> Domain:
        """The same labels, classes and split under another name (and, for a shifted domain, other pixels)."""
        return Domain(
            name, self.images if images is None else images, self.labels, self.classes, self.skipped, self.split
        )


class Dataset(Plugin):
    """Base class of dataset plugins.

    A subclass sets ``name`` and, when it reads files, implements :meth:`domains`,
    :meth:`fingerprint` and :meth:`load`. ``options`` comes from the suite's
    ``dataset_options`` mapping; ``root`` is the data root (read only, never written).
    """

    plugin_kind: ClassVar[str] = "dataset"
    name: ClassVar[str] = ""
    #: short names accepted in pairs, e.g. {"A": "amazon"}
    aliases: ClassVar[dict[str, str]] = {}
    #: option names this dataset accepts in the suite's ``dataset_options`` (name -> meaning)
    option_help: ClassVar[dict[str, str]] = {}

    def __init__(self, root: Path | None = None, **options: Any):
        unknown = sorted(set(options) - set(self.option_help))
        if unknown:
            raise UserError(
                f"dataset {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(self.option_help) or 'none'}"
            )
        self.root = Path(root) if root is not None else None
        self.options = options

    def domains(self) -> list[str]:
        """Canonical domain names."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise a :class:`UserError` if the data is not where it should be (called before any training)."""

    def fingerprint(self, domain: str) -> str:
        """A string that changes when the domain's files change (names, sizes, modification times)."""
        raise NotImplementedError

    def load(self, domain: str, size: int) -> Domain:
        """Decode the domain's images, resized to ``size``×``size``, into a :class:`Domain`."""
        raise NotImplementedError

    def require_memory(self, need: int, what: str) -> None:
        """Refuse to load what cannot fit in memory, before allocating it: a compressed file that
        declares more than it holds (a 1.5 MB archive of 1.5 GB of zeros) would otherwise have the
        kernel kill the process without a word. ``need`` is a lower bound in bytes of what loading
        allocates, ``what`` says what declares it (``"x.npz declares x of shape (60000, 160, 160) uint8"``).
        Where the free memory is unknown (not Linux), nothing is refused."""
        available = memory.available_memory()
        if available is not None and need > available:
            raise UserError(
                f"dataset {self.name!r}: {what}, which needs at least {_bytes(need)} of memory to load, and "
                f"{_bytes(available)} are available; use a smaller file (fewer or smaller images) or free memory"
            )

    def resolve(self, domain: str) -> str:
        """Canonical name for a domain name or alias, or a :class:`UserError` listing the valid ones."""
        names = self.domains()
        if domain in names:
            return domain
        if domain in self.aliases:
            return self.aliases[domain]
        lowered = {n.lower(): n for n in names}
        if domain.lower() in lowered:
            return lowered[domain.lower()]
        valid = names + [f"{a} ({n})" for a, n in self.aliases.items()]
        raise UserError(f"dataset {self.name!r} has no domain {domain!r}; valid: {', '.join(valid)}")


class Shift(Plugin):
    """Base class of domain-shift plugins: a deterministic transform of uint8 images.

    ``apply`` gets uint8 N×3×H×W images, a severity from 1 to 5 and a seeded generator, and
    returns uint8 images of the same shape. Same inputs, same seed: same output.
    """

    plugin_kind: ClassVar[str] = "shift"
    name: ClassVar[str] = ""
    #: whether the shift takes a severity (``rotate:3``); a shift like ``invert`` does not
    has_severity: ClassVar[bool] = True

    def apply(self, images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


# -- domain specs -------------------------------------------------------------------------------
DEFAULT_SEVERITY = 3
#: a shift, bare or qualified by its plugin (``tlbench:rotate:3``), with an optional severity
_SHIFT_RE = re.compile(r"^(?P<name>(?:[A-Za-z0-9][\w.\-]*:)?[A-Za-z_][\w\-]*)(?::(?P<sev>\d+))?$")


@dataclass(frozen=True)
class DomainSpec:
    """A base domain plus a chain of shifts: ``digits+rotate:3+noise:2``.

    A shift written without a severity (``invert``) keeps ``None`` and is applied at
    :data:`DEFAULT_SEVERITY`; the text form stays as written, so ids and tables read naturally.
    """

    base: str
    shifts: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> DomainSpec:
        parts = [p.strip() for p in text.strip().split("+")]
        if not parts[0]:
            raise UserError(f"domain {text!r}: the base domain is missing (expected e.g. 'digits+rotate:3')")
        shifts = []
        for part in parts[1:]:
            m = _SHIFT_RE.match(part)
            if not m:
                raise UserError(f"domain {text!r}: bad shift {part!r}; expected NAME or NAME:SEVERITY (1-5)")
            sev = int(m["sev"]) if m["sev"] is not None else None
            if sev is not None and not 1 <= sev <= 5:
                raise UserError(f"domain {text!r}: severity {sev} of {m['name']!r} is out of range 1-5")
            shifts.append((m["name"], sev))
        return cls(parts[0], tuple(shifts))

    def __str__(self) -> str:
        return "+".join([self.base] + [n if s is None else f"{n}:{s}" for n, s in self.shifts])


def parse_pair(text: str) -> tuple[str, str]:
    """``'A->W'`` -> ``('A', 'W')`` with a clear error for anything else."""
    if text.count("->") != 1:
        raise UserError(f"bad pair {text!r}: write SOURCE->TARGET, e.g. 'A->W' or 'digits->digits+rotate:3'")
    src, tgt = (s.strip() for s in text.split("->"))
    if not src or not tgt:
        raise UserError(f"bad pair {text!r}: both a source and a target domain are needed")
    return src, tgt


# -- decoding helpers for dataset plugins ------------------------------------------------------
#: images resized at once by :func:`resize_uint8`: its float32 copy stays small whatever the domain's size
RESIZE_CHUNK = 256


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize uint8 N×3×H×W images to size×size (antialiased bilinear), staying uint8.

    In chunks of :data:`RESIZE_CHUNK` images: a float32 copy of a whole domain is twelve times a grey
    domain's bytes, and each image is resized on its own anyway."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], RESIZE_CHUNK):
        chunk = images[start : start + RESIZE_CHUNK].float()
        resized = torch.nn.functional.interpolate(
            chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[start : start + RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def array_to_images(x: np.ndarray) -> Tensor:
    """uint8 N×H×W (grey) or N×H×W×3 arrays -> uint8 N×3×H×W tensor (grey becomes three channels).

    One copy, the result: a grey channel is broadcast to three as it is copied."""
    if x.dtype != np.uint8:
        raise UserError(f"images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise UserError(f"images must be N×H×W or N×H×W×3, got shape {x.shape}")
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    return images.expand(-1, 3, -1, -1).contiguous()


def _bytes(n: int) -> str:
    """A size for a message: GiB from one GiB up, else MiB."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def decode_image_file(path: Path, size: int) -> Tensor:
    """Decode one image file to uint8 3×size×size (square resize, as the DA literature's ResizeImage)."""
    return torch.from_numpy(_decode_hwc(path, size)).permute(2, 0, 1)


def _decode_hwc(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        # Let the JPEG decoder downscale by a power of two first (DCT scaling): large photos
        # (Office-31's DSLR images are 1000 px) decode several times faster, to within a
        # fraction of a grey level of a full decode followed by the same resize.
        im.draft("RGB", (size, size))
        im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8).copy()


def decode_image_files(
    paths: Sequence[Path], size: int, *, on_error: str = "error"
) -> tuple[Tensor, list[int], list[str]]:
    """Decode many files; returns (images, indices kept, messages about skipped files).

    ``on_error='error'`` stops at the first unreadable file, naming it; ``'skip'`` warns and
    leaves it out, so a corrupt file never turns into a silently wrong label.
    """
    out, kept, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            out.append(_decode_hwc(path, size))
            kept.append(i)
        except Exception as exc:
            msg = f"{path}: cannot read image ({type(exc).__name__}: {exc})"
            if on_error != "skip":
                raise UserError(
                    msg + "; fix or remove the file, or set dataset_options.on_bad_image: skip in the suite"
                ) from exc
            warnings.warn("skipping " + msg, stacklevel=2)
            skipped.append(msg)
    if not out:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), kept, skipped
    images = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return images, kept, skipped


def files_fingerprint(paths: Sequence[Path]) -> str:
    """Hash of names, sizes and modification times: cheap, and changes when a file changes."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        # os.fsencode: a file name that is not valid UTF-8 (an archive made on a Latin-1 system) hashes as its bytes
        h.update(os.fsencode(f"{p.as_posix()}|{st.st_size}|{st.st_mtime_ns}\n"))
    return h.hexdigest()[:16]


def encode_jpeg_roundtrip(image: Tensor, quality: int) -> Tensor:
    """JPEG-compress and decode one uint8 3×H×W image (used by the jpeg shift)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
