"""``csv_images``: domains listed in CSV files, one ``<domain>.csv`` per domain, rows ``path,label``.

Labelled image collections often come as a table rather than as class folders: an export from
an annotation tool, a hospital's or a lab's spreadsheet, a split file shipped with a benchmark.
This dataset reads such tables directly, so the images can stay where they are, a domain can be
any subset of them, and one image may belong to several domains.

Layout: ``<path>/<domain>.csv`` for every domain, each with a header row naming at least the
columns ``path`` and ``label`` (other columns are ignored). An image path is relative to the CSV
file's folder or absolute. Labels are class names; the classes are the sorted union of the
labels of all the domains (numerically sorted when every label is an integer), so a label
index means the same class in every domain.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from tlbench import Dataset, Domain, UserError, decode_image_files, files_fingerprint, hookimpl

REQUIRED_COLUMNS = ("path", "label")


@dataclass(frozen=True)
class ListedImage:
    path: Path
    label: str
    line: int  # line number in the CSV file, for error messages


def read_image_list(csv_file: Path) -> list[ListedImage]:
    """The rows of one domain's CSV file, or a :class:`UserError` naming the file and line."""
    try:
        text = csv_file.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is not a column name
    except FileNotFoundError:
        raise UserError(f"dataset 'csv_images': {csv_file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"dataset 'csv_images': cannot read {csv_file} ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"dataset 'csv_images': {csv_file} has no column {missing[0]!r} in its header row "
            f"(found: {', '.join(reader.fieldnames or []) or 'no header'}); expected a header "
            f"with columns path,label"
        )
    rows = []
    for row in reader:
        line = reader.line_num
        path, label = ((row.get(columns[c]) or "").strip() for c in REQUIRED_COLUMNS)
        if not path and not label:
            continue  # blank line
        if not path or not label:
            raise UserError(
                f"dataset 'csv_images': {csv_file}:{line}: empty {'path' if not path else 'label'}; "
                f"every row needs an image path and a label"
            )
        image = Path(path).expanduser()
        rows.append(ListedImage(image if image.is_absolute() else csv_file.parent / image, label, line))
    if not rows:
        raise UserError(f"dataset 'csv_images': {csv_file} lists no images; expected rows path,label")
    return rows


def sorted_classes(labels: set[str]) -> list[str]:
    """Class names in label order: numeric when every label is an integer ("2" before "10"), else text order."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


class CsvImages(Dataset):
    """Domains listed in ``<path>/<domain>.csv`` files of ``path,label`` rows (images stay where they are)."""

    name = "csv_images"
    option_help: ClassVar[dict[str, str]] = {
        "path": "folder holding one <domain>.csv per domain, relative to the data root or absolute (required)",
        "on_bad_image": "what to do with an unreadable image file: error (default) or skip (warn, leave it out)",
    }

    def __init__(self, root: Path | None = None, **options: Any):
        super().__init__(root, **options)
        if not options.get("path"):
            raise UserError(
                "dataset 'csv_images' needs dataset option path: a folder holding one "
                "<domain>.csv per domain (columns path,label)"
            )
        if options.get("on_bad_image", "error") not in ("error", "skip"):
            raise UserError(
                f"dataset 'csv_images': on_bad_image must be 'error' or 'skip', got {options['on_bad_image']!r}"
            )
        folder = Path(str(options["path"])).expanduser()
        if not folder.is_absolute():
            if self.root is None:
                raise UserError(
                    f"dataset 'csv_images': path {folder} is relative but no data root is set; "
                    f"give an absolute path or set the data root"
                )
            folder = self.root / folder
        self.folder = folder
        self._lists: dict[str, list[ListedImage]] = {}

    def domains(self) -> list[str]:
        if not self.folder.is_dir():
            raise UserError(
                f"dataset 'csv_images': folder {self.folder} does not exist; expected "
                f"{self.folder}/<domain>.csv files with columns path,label"
            )
        names = sorted(p.stem for p in self.folder.glob("*.csv") if not p.name.startswith("."))
        if not names:
            raise UserError(f"dataset 'csv_images': {self.folder} has no <domain>.csv files (columns path,label)")
        return names

    def csv_file(self, domain: str) -> Path:
        return self.folder / f"{domain}.csv"

    def images(self, domain: str) -> list[ListedImage]:
        """The listed images of one domain, read once per dataset object."""
        if domain not in self._lists:
            self._lists[domain] = read_image_list(self.csv_file(domain))
        return self._lists[domain]

    def classes(self) -> list[str]:
        return sorted_classes({item.label for d in self.domains() for item in self.images(d)})

    def check(self) -> None:
        """Every CSV readable and every listed file present; a warning for a class some domain lacks."""
        classes = self.classes()
        for domain in self.domains():
            items = self.images(domain)
            absent = next((item for item in items if not item.path.is_file()), None)
            if absent is not None:
                raise UserError(
                    f"dataset 'csv_images': {self.csv_file(domain)}:{absent.line}: image {absent.path} does not exist"
                )
            lacking = sorted(set(classes) - {item.label for item in items})
            if lacking:
                warnings.warn(
                    f"dataset 'csv_images': domain {domain!r} has no image of class(es) "
                    f"{', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}",
                    stacklevel=2,
                )

    def fingerprint(self, domain: str) -> str:
        items = self.images(domain)
        missing = next((item for item in items if not item.path.is_file()), None)
        if missing is not None:
            raise UserError(
                f"dataset 'csv_images': {self.csv_file(domain)}:{missing.line}: image {missing.path} does not exist"
            )
        # the class list is part of what a label index means, so it is part of the fingerprint
        paths = [self.csv_file(d) for d in self.domains()] + [item.path for item in items]
        return files_fingerprint(paths)

    def load(self, domain: str, size: int) -> Domain:
        classes = self.classes()
        index = {c: i for i, c in enumerate(classes)}
        items = self.images(domain)
        images, kept, skipped = decode_image_files(
            [item.path for item in items], size, on_error=self.options.get("on_bad_image", "error")
        )
        labels = torch.tensor([index[items[i].label] for i in kept], dtype=torch.int64)
        return Domain(domain, images, labels, classes, skipped)


@hookimpl
def register_datasets(register):
    register(CsvImages)
