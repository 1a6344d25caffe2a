"""Domains stored as NumPy archives: ``x`` (uint8 N×H×W or N×H×W×3) and ``y`` (integer labels).

An optional ``split`` array (0 train, 1 test per image, as USPS ships its 7,291 + 2,007) is the
domain's official split, which the fine-tuning protocol honours.

The digit benchmarks (MNIST, USPS, MNIST-M, SVHN) are usually distributed, or easily saved,
this way. Classes are the label values ``"0"`` to the largest label over all the domains.
"""

from __future__ import annotations

import zipfile
from math import prod
from pathlib import Path
from stat import S_ISREG
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.lib import format as npformat

from tlbench import Dataset, Domain, UserError, array_to_images, files_fingerprint, hookimpl, resize_uint8

#: what a file that is not a zip archive is, by its first bytes
_NOT_ZIP = ((b"\x93NUMPY", "a single .npy array"), (b"\x80", "a pickle"), (b"PK", "a damaged zip archive"))
#: the .npy header readers of numpy's public API, by format version
_READ_HEADER = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}


def declared_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of every array in an .npz archive, read from the .npy headers inside the
    zip: only their first bytes are decompressed, so what loading would allocate is known before
    allocating it. A file that is no .npz (text, a lone .npy) is a :class:`UserError` saying what it is."""
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"dataset 'npz': {path} is not an .npz archive (it is {_kind_of(path)}); an .npz is a zip of "
            ".npy arrays, as numpy.savez(file, x=images, y=labels) writes"
        )
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in (m for m in archive.namelist() if m.endswith(".npy")):  # numpy.savez's members
                with archive.open(member) as f:
                    version = npformat.read_magic(f)
                    if version not in _READ_HEADER:
                        raise ValueError(f"{member}: .npy format version {version} is not supported")
                    shape, _, dtype = _READ_HEADER[version](f)
                out[member.removesuffix(".npy")] = (tuple(shape), dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise UserError(f"dataset 'npz': cannot read {path} ({type(exc).__name__}: {exc})") from None
    return out


def _kind_of(path: Path) -> str:
    """What a file that is not a zip archive looks like, for a message: "a text file", "a pickle"..."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    for magic, kind in _NOT_ZIP:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a zip archive"


def nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes an array of this shape and dtype takes, as a Python int (10**12 labels do not overflow)."""
    return prod(shape) * dtype.itemsize


def decoded_bytes(shape: tuple[int, ...], size: int) -> int:
    """Bytes :func:`array_to_images` and :func:`resize_uint8` allocate for images of this declared shape:
    N×3×H×W, then N×3×size×size (grey images are given three channels)."""
    if len(shape) < 3:
        return 0
    n, h, w = shape[:3]
    return 3 * n * (h * w + size * size)


class Npz(Dataset):
    """One ``.npz`` file per domain, named in option ``files``."""

    name = "npz"
    option_help: ClassVar[dict[str, str]] = {
        "files": "mapping domain name -> .npz file (relative to the data root or absolute) holding x and y",
    }

    def __init__(self, root: Path | None = None, **options: Any):
        super().__init__(root, **options)
        files = options.get("files")
        if not isinstance(files, dict) or not files:
            raise UserError(
                "dataset 'npz' needs dataset option files: a mapping of domain names to .npz files, "
                "e.g. {mnist: digits/mnist5k.npz, usps: digits/usps.npz}"
            )
        self.files: dict[str, Path] = {}
        for domain, path in files.items():
            p = Path(str(path)).expanduser()
            if not p.is_absolute():
                if self.root is None:
                    raise UserError(
                        f"dataset 'npz': file {p} of domain {domain!r} is relative but no data root "
                        f"is set; give an absolute path or set the data root"
                    )
                p = self.root / p
            self.files[str(domain)] = p
        self._num_classes: int | None = None

    def domains(self) -> list[str]:
        return list(self.files)

    def _file(self, domain: str) -> Path:
        """The domain's file, checked to be a regular file the OS can name (a 5,000-character path
        would raise ENAMETOOLONG from every stat)."""
        path = self.files[domain]
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise UserError(f"dataset 'npz': file {path} of domain {domain!r} does not exist") from None
        except OSError as exc:
            shown = str(path) if len(str(path)) <= 200 else f"{str(path)[:100]}... ({len(str(path))} characters)"
            raise UserError(
                f"dataset 'npz': file {shown} of domain {domain!r} cannot be used ({exc.strerror}); "
                "give the path of an .npz file"
            ) from None
        if not S_ISREG(info.st_mode):
            raise UserError(f"dataset 'npz': {path} of domain {domain!r} is not a regular file; give an .npz file")
        return path

    def _arrays(
        self, domain: str, keys: tuple[str, ...], optional: tuple[str, ...] = (), size: int | None = None
    ) -> dict[str, np.ndarray]:
        """The named arrays of the domain's archive, after checking that what their headers declare fits
        in memory (``size``: the images are also decoded to N×3×size×size)."""
        path = self._file(domain)
        declared = declared_arrays(path)
        missing = [k for k in keys if k not in declared]
        if missing:
            raise UserError(
                f"dataset 'npz': {path} has no array {missing[0]!r} (has: "
                f"{', '.join(declared)}); expected x (uint8 images) and y (labels)"
            )
        wanted = [k for k in (*keys, *optional) if k in declared]
        need = sum(nbytes(*declared[k]) for k in wanted)
        if size is not None and "x" in declared:
            need += decoded_bytes(declared["x"][0], size)
        what = ", ".join(f"{k} of shape {declared[k][0]} {declared[k][1]}" for k in wanted)
        self.require_memory(need, f"{path} declares {what}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in wanted}
        except MemoryError:
            raise UserError(
                f"dataset 'npz': {path} declares {what}, which does not fit in memory; use a smaller file"
            ) from None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UserError(f"dataset 'npz': cannot read {path} ({type(exc).__name__}: {exc})") from exc

    def _labels(self, domain: str) -> np.ndarray:
        y = self._arrays(domain, ("y",))["y"]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise UserError(
                f"dataset 'npz': y in {self.files[domain]} must be a 1-D array of labels >= 0, "
                f"got shape {y.shape} {y.dtype}"
            )
        return y

    def num_classes(self) -> int:
        """One more than the largest label of any domain, so that every domain has the same classes."""
        if self._num_classes is None:
            self._num_classes = 1 + max(int(self._labels(d).max(initial=-1)) for d in self.domains())
        return self._num_classes

    def check(self) -> None:
        """Labels must be the classes 0..K-1 with images of each: a stray label of 200000 would otherwise
        build a 200,001-class head without a word."""
        present = set().union(*(np.unique(self._labels(d)).tolist() for d in self.domains()))
        absent = sorted(set(range(self.num_classes())) - present)
        if absent:
            raise UserError(
                f"dataset 'npz': the largest label is {self.num_classes() - 1}, but {len(absent)} of the "
                f"classes 0..{self.num_classes() - 1} have no image in any domain (e.g. {absent[0]}); "
                "labels must be 0..K-1 (renumber y)"
            )

    def fingerprint(self, domain: str) -> str:
        return files_fingerprint([self._file(domain)])

    def load(self, domain: str, size: int) -> Domain:
        arrays = self._arrays(domain, ("x", "y"), optional=("split",), size=size)
        x, y = arrays["x"], self._labels(domain)
        if len(x) != len(y):
            raise UserError(f"dataset 'npz': {self.files[domain]} has {len(x)} images but {len(y)} labels")
        try:
            images = array_to_images(x)
        except UserError as exc:
            raise UserError(f"dataset 'npz': x in {self.files[domain]}: {exc}") from None
        classes = [str(i) for i in range(self.num_classes())]
        return Domain(
            domain,
            resize_uint8(images, size),
            torch.from_numpy(y.astype(np.int64)),
            classes,
            split=self._split(domain, arrays.get("split"), len(y)),
        )

    def _split(self, domain: str, split: np.ndarray | None, n: int) -> torch.Tensor | None:
        """The archive's official split (0 train, 1 test), checked, or None when it has none."""
        if split is None:
            return None
        if split.shape != (n,) or not np.isin(split, (0, 1)).all():
            raise UserError(
                f"dataset 'npz': split in {self.files[domain]} must hold 0 (train) or 1 (test) for each "
                f"of its {n} images, got shape {split.shape}; fix it or remove the array"
            )
        return torch.from_numpy(split.astype(np.uint8))


@hookimpl
def register_datasets(register):
    register(Npz)
