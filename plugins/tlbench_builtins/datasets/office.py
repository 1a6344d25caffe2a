"""Office-31 and Office-Home: the standard domain-adaptation image benchmarks, read from folders.

Both are folders of class folders per domain, as their official archives unpack. Labels are
the indices of the sorted class names, the same in every domain.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

from tlbench import ClassFolderDataset, UserError, hookimpl


class _OfficeDataset(ClassFolderDataset):
    """Shared logic: find ``<root>/<folder>/<domain>[/images]/<class>/*``, check the counts."""

    folder_names: ClassVar[tuple[str, ...]] = ()  # candidate names of the dataset folder under the root
    domain_folders: ClassVar[dict[str, tuple[str, ...]]] = {}  # domain -> candidate folder names
    expected_counts: ClassVar[dict[str, int]] = {}
    expected_classes: ClassVar[int] = 0
    url: ClassVar[str] = ""
    option_help: ClassVar[dict[str, str]] = {
        **ClassFolderDataset.option_help,
        "path": "the dataset folder, relative to the data root or absolute (default: found under the data root)",
    }

    def __init__(self, root: Path | None = None, **options: Any):
        super().__init__(root, **options)
        self._base: Path | None = None

    def domains(self) -> list[str]:
        return list(self.domain_folders)

    def _candidates(self) -> list[Path]:
        if "path" in self.options:
            path = Path(str(self.options["path"])).expanduser()
            return [path if path.is_absolute() or self.root is None else self.root / path]
        if self.root is None:
            return []
        return [self.root / name for name in self.folder_names]

    def base_folder(self) -> Path:
        """The dataset folder, or one :class:`UserError` saying where it was looked for and how to get it."""
        if self._base is None:
            candidates = self._candidates()
            found = next((c for c in candidates if c.is_dir()), None)
            if found is None:
                where = " or ".join(str(c) for c in candidates) or "nowhere (no data root is set)"
                layout = f"<{self.folder_names[0]}>/{{{','.join(self.domains())}}}/[images/]<class>/*.jpg"
                raise UserError(
                    f"dataset {self.name!r} not found: looked for {where}; expected layout "
                    f"{layout}; download it from {self.url} and unpack it under the data root "
                    f"(or set dataset option path)"
                )
            self._base = found
        return self._base

    def domain_folder(self, domain: str) -> Path:
        base = self.base_folder()
        for name in self.domain_folders[domain]:
            for folder in (base / name / "images", base / name):
                if folder.is_dir():
                    return folder
        raise UserError(
            f"dataset {self.name!r}: domain {domain!r} not found in {base}; expected "
            f"{base}/{self.domain_folders[domain][0]}/[images/]<class>/<image>"
        )

    def check(self) -> None:
        """Every domain present with the same classes; a warning when counts differ from the published ones."""
        classes = self.classes()
        if self.expected_classes and len(classes) != self.expected_classes:
            warnings.warn(
                f"dataset {self.name!r} has {len(classes)} classes in {self.base_folder()}, "
                f"the published version has {self.expected_classes}",
                stacklevel=2,
            )
        for domain, expected in self.expected_counts.items():
            count = sum(len(files) for files in self.class_files(domain).values())
            if count != expected:
                warnings.warn(
                    f"dataset {self.name!r}: domain {domain!r} has {count} images in "
                    f"{self.domain_folder(domain)}, the published version has {expected}; "
                    f"results will not compare with published numbers",
                    stacklevel=2,
                )


class Office31(_OfficeDataset):
    """Office-31 (Saenko et al., ECCV 2010): amazon, dslr, webcam; 31 classes, 4,110 images."""

    name = "office31"
    aliases = {"A": "amazon", "D": "dslr", "W": "webcam"}
    folder_names = ("office31", "Office31", "office-31", "OFFICE31")
    domain_folders = {"amazon": ("amazon",), "dslr": ("dslr",), "webcam": ("webcam",)}
    expected_counts = {"amazon": 2817, "dslr": 498, "webcam": 795}
    expected_classes = 31
    url = "https://faculty.cc.gatech.edu/~judy/domainadapt/"


class OfficeHome(_OfficeDataset):
    """Office-Home (Venkateswara et al., CVPR 2017): Art, Clipart, Product, Real_World; 65 classes."""

    name = "office_home"
    aliases = {"Ar": "Art", "Cl": "Clipart", "Pr": "Product", "Rw": "Real_World"}
    folder_names = ("office_home", "OfficeHome", "office-home", "OfficeHomeDataset_10072016")
    domain_folders = {
        "Art": ("Art",),
        "Clipart": ("Clipart",),
        "Product": ("Product",),
        "Real_World": ("Real_World", "Real World", "RealWorld"),
    }
    expected_counts = {"Art": 2427, "Clipart": 4365, "Product": 4439, "Real_World": 4357}
    expected_classes = 65
    url = "https://www.hemanthdv.org/officeHomeDataset.html"


@hookimpl
def register_datasets(register):
    register(Office31)
    register(OfficeHome)
