"""Domains stored as NumPy archives: ``x`` (uint8 N×H×W or N×H×W×3) and ``y`` (integer labels).

An optional ``split`` array (0 train, 1 test per image, as USPS ships its 7,291 + 2,007) is the
domain's official split, which the fine-tuning protocol honours.

The digit benchmarks (MNIST, USPS, MNIST-M, SVHN) are usually distributed, or easily saved,
this way. Classes are the label values ``"0"`` to the largest label over all the domains.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tlbench import Dataset, Domain, UserError, array_to_images, files_fingerprint, hookimpl, resize_uint8


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

    def _arrays(self, domain: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        path = self.files[domain]
        if not path.is_file():
            raise UserError(f"dataset 'npz': file {path} of domain {domain!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in keys if k not in archive.files]
                if missing:
                    raise UserError(
                        f"dataset 'npz': {path} has no array {missing[0]!r} (has: "
                        f"{', '.join(archive.files)}); expected x (uint8 images) and y (labels)"
                    )
                return {k: archive[k] for k in (*keys, *optional) if k in archive.files}
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
        path = self.files[domain]
        if not path.is_file():
            raise UserError(f"dataset 'npz': file {path} of domain {domain!r} does not exist")
        return files_fingerprint([path])

    def load(self, domain: str, size: int) -> Domain:
        arrays = self._arrays(domain, ("x", "y"), optional=("split",))
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
