"""scikit-learn's 1,797 handwritten 8×8 digits: a dataset that needs no files (tests, smoke runs).

Pair it with a shift to get a transfer task anywhere, e.g. ``digits->digits+rotate:3``.
"""

from __future__ import annotations

import numpy as np
import torch

from tlbench import Dataset, Domain, hookimpl, resize_uint8


class SklearnDigits(Dataset):
    """One domain, ``digits``: the UCI optical digits scikit-learn ships, grey values 0-16 scaled to 0-255."""

    name = "sklearn_digits"

    def domains(self) -> list[str]:
        return ["digits"]

    def fingerprint(self, domain: str) -> str:
        import sklearn

        return f"sklearn-{sklearn.__version__}"

    def load(self, domain: str, size: int) -> Domain:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        grey = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # N×8×8
        images = torch.from_numpy(grey)[:, None].expand(-1, 3, -1, -1)
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        return Domain(domain, resize_uint8(images, size), labels, [str(i) for i in range(10)])


@hookimpl
def register_datasets(register):
    register(SklearnDigits)
