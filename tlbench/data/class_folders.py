"""Datasets laid out as ``<domain>/<class>/<image>`` (Office-31, Office-Home, DomainNet, a user's folders):
listing the class folders, checking what they hold, an official ``train/``/``test/`` split, and the
:class:`ClassFolderDataset` base class that decodes them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from tlbench.data.domains import (
    IMAGE_SUFFIXES,
    TEST,
    TRAIN,
    Dataset,
    Domain,
    decode_image_files,
    files_fingerprint,
)
from tlbench.errors import UserError


def class_folder_files(folder: Path) -> dict[str, list[Path]]:
    """``<folder>/<class>/<image>`` -> {class: sorted image files}; classes sorted, hidden entries ignored.

    An image name that is not a regular file (a FIFO would block the decoder forever) is a
    :class:`UserError` naming it.
    """
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")):
        check_utf8_name(sub, "class folder")
        files = sorted(f for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        odd = next((f for f in files if not f.is_file()), None)
        if odd is not None:
            raise UserError(
                f"{odd} is not a regular file (a folder, a FIFO or a device); remove it or rename it "
                "without an image suffix"
            )
        out[sub.name] = files
    return out


def check_utf8_name(path: Path, what: str) -> None:
    """A folder whose name becomes a domain or class name must be valid UTF-8: the name is written into
    records, tables and reports, which are UTF-8. Python holds an undecodable byte as a lone surrogate
    that no UTF-8 file can take, so it is refused here, naming the folder with the byte escaped."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise UserError(
            f"{what} {shown} has a name that is not valid UTF-8; rename it (its name becomes a "
            "domain or class name in the results)"
        ) from None


def split_folders(folder: Path) -> tuple[Path, Path] | None:
    """``(train, test)`` when ``folder`` holds its own split as ``train/`` and ``test/`` (or ``val/``)
    folders of class folders, else None. With both ``test/`` and ``val/``, ``test/`` is the test split."""
    train = folder / "train"
    test = next((folder / n for n in ("test", "val") if (folder / n).is_dir()), None)
    if not train.is_dir() or test is None:
        return None
    if not any(p.is_dir() and not p.name.startswith(".") for p in train.iterdir()):
        return None  # train/ holds images: it is a class called train, not a split
    return train, test


class ClassFolderDataset(Dataset):
    """A dataset whose domains are folders of class folders (Office-31, Office-Home, DomainNet, ...).

    A subclass implements :meth:`domains` and :meth:`domain_folder`; this class lists the files,
    checks that every domain has the same classes (labels are indices into the sorted class
    names, so a class missing from one domain would silently shift every label after it) and
    decodes. A domain folder that holds ``train/`` and ``test/`` (or ``val/``) folders of class
    folders has that official split (:func:`split_folders`), which the fine-tuning protocol
    honours. Option ``on_bad_image``: ``error`` (default) or ``skip``.
    """

    option_help: ClassVar[dict[str, str]] = {
        "on_bad_image": "what to do with an unreadable image file: error (default) or skip (warn, leave it out)",
    }

    def __init__(self, root: Path | None = None, **options: Any):
        super().__init__(root, **options)
        if self.options.get("on_bad_image", "error") not in ("error", "skip"):
            raise UserError(
                f"dataset {self.name!r}: on_bad_image must be 'error' or 'skip', got {self.options['on_bad_image']!r}"
            )
        self._files: dict[str, dict[str, list[Path]]] = {}
        self._test_files: dict[str, set[Path]] = {}

    def domain_folder(self, domain: str) -> Path:
        """The folder holding the class folders of a canonical domain (a :class:`UserError` if missing)."""
        raise NotImplementedError

    def class_files(self, domain: str) -> dict[str, list[Path]]:
        """{class: image files} of one domain, listed once per dataset object."""
        if domain not in self._files:
            folder = self.domain_folder(domain)
            check_utf8_name(folder, f"dataset {self.name!r}: domain folder")
            files, self._test_files[domain] = self._split_class_files(folder)
            if not any(files.values()):
                raise UserError(
                    f"dataset {self.name!r}: domain {domain!r} has no images in {folder} "
                    f"(expected {folder}/<class>/<image>{'|'.join(IMAGE_SUFFIXES)})"
                )
            empty = next((c for c, fs in files.items() if not fs), None)
            if empty is not None:
                self._refuse_empty_class(folder / empty)
            self._files[domain] = files
        return self._files[domain]

    def _refuse_empty_class(self, folder: Path) -> None:
        """A class folder without images: empty, or a link to a folder of folders (``..``, a domain)."""
        if folder.is_symlink():
            target = folder.resolve()
            where = (
                "which contains the link itself (a loop)"
                if folder.parent.resolve().is_relative_to(target)
                else "a folder without images of its own"
            )
            raise UserError(
                f"dataset {self.name!r}: class folder {folder} is a link to {target}, {where}; "
                "remove the link, or point it at a folder of images"
            )
        raise UserError(
            f"dataset {self.name!r}: class folder {folder} has no images "
            f"({'|'.join(IMAGE_SUFFIXES)}); add images or remove the folder"
        )

    def _split_class_files(self, folder: Path) -> tuple[dict[str, list[Path]], set[Path]]:
        """{class: files} of a domain folder and which files are its official test split (none without one)."""
        split = split_folders(folder)
        if split is None:
            return class_folder_files(folder), set()
        train, test = class_folder_files(split[0]), class_folder_files(split[1])
        for have, lack in ((train, split[1]), (test, split[0])):
            missing = sorted(set(have) - set(class_folder_files(lack)))
            if missing:
                raise UserError(
                    f"dataset {self.name!r}: class {missing[0]!r} is missing from {lack}; its train/ "
                    f"and {split[1].name}/ folders need the same class folders"
                )
        return {c: train[c] + test[c] for c in train}, {f for fs in test.values() for f in fs}

    def classes(self) -> list[str]:
        """The sorted class names, the same in every domain, or a :class:`UserError` naming the odd one."""
        per_domain = {d: set(self.class_files(d)) for d in self.domains()}
        union = set().union(*per_domain.values())
        for domain, present in per_domain.items():
            missing = sorted(union - present)
            if missing:
                others = [d for d, p in per_domain.items() if missing[0] in p]
                raise UserError(
                    f"dataset {self.name!r}: class {missing[0]!r} (in {', '.join(others)}) is missing "
                    f"from domain {domain!r} ({self.domain_folder(domain)}); every domain needs the "
                    f"same class folders ({len(missing)} missing there)"
                )
        return sorted(union)

    def check(self) -> None:
        self.classes()

    def fingerprint(self, domain: str) -> str:
        return files_fingerprint([f for fs in self.class_files(domain).values() for f in fs])

    def load(self, domain: str, size: int) -> Domain:
        classes = self.classes()
        index = {c: i for i, c in enumerate(classes)}
        paths, labels = [], []
        for cls, files in self.class_files(domain).items():
            paths += files
            labels += [index[cls]] * len(files)
        images, kept, skipped = decode_image_files(paths, size, on_error=self.options.get("on_bad_image", "error"))
        test = self._test_files.get(domain)
        split = torch.tensor([TEST if p in test else TRAIN for p in paths], dtype=torch.uint8)[kept] if test else None
        return Domain(domain, images, torch.tensor(labels, dtype=torch.int64)[kept], classes, skipped, split)
