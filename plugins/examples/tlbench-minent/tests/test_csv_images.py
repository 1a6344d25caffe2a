"""The csv_images dataset: domains from CSV lists, clear errors, and tlbench's dataset contract."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench import UserError
from tlbench.testing import check_dataset
from tlbench_minent import CsvImages


def write_image(path: Path, value: int, size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), value, dtype=np.uint8)
    pixels[0, 0] = (value * 7) % 256  # not flat: resizing must keep it an image
    Image.fromarray(pixels).save(path)


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *(f"{p},{label}" for p, label in rows)]) + "\n")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """<tmp>/lists/{photos,sketches}.csv; images under <tmp>/images; labels 2, 10, 1 (numeric sort: 1, 2, 10)."""
    rows: dict[str, list[tuple[str, str]]] = {"photos": [], "sketches": []}
    value = 10
    for domain in rows:
        for label in ("2", "10", "1"):
            for i in range(2):
                value += 10
                write_image(tmp_path / "images" / domain / f"{label}_{i}.png", value)
                rows[domain].append((f"../images/{domain}/{label}_{i}.png", label))
        write_csv(tmp_path / "lists" / f"{domain}.csv", rows[domain])
    return tmp_path


def test_conforms_to_the_dataset_contract(tree):
    check_dataset(CsvImages, tree, path="lists")


def test_domains_classes_and_labels_follow_the_csv(tree):
    ds = CsvImages(tree, path="lists")
    assert ds.domains() == ["photos", "sketches"]
    dom = ds.load("photos", 8)
    assert dom.classes == ["1", "2", "10"]
    assert dom.labels.tolist() == [1, 1, 2, 2, 0, 0]  # rows 2, 2, 10, 10, 1, 1
    assert dom.images.shape == (6, 3, 8, 8) and dom.images.dtype == torch.uint8
    assert dom.images[0, 0, 4, 4].item() == 20 and dom.images[1, 0, 4, 4].item() == 30


def test_absolute_paths_extra_columns_and_a_byte_order_mark(tmp_path):
    image = tmp_path / "elsewhere" / "a.png"
    write_image(image, 100)
    csv_file = tmp_path / "lists" / "only.csv"
    csv_file.parent.mkdir()
    csv_file.write_text(f"\ufeffsplit,Label,Path\ntrain,cat,{image}\n\ntrain,dog,{image}\n", encoding="utf-8")
    dom = CsvImages(path=str(tmp_path / "lists")).load("only", 4)
    assert dom.classes == ["cat", "dog"] and dom.labels.tolist() == [0, 1]


def test_a_missing_image_is_named_with_its_csv_line(tree):
    (tree / "images" / "sketches" / "10_1.png").unlink()
    with pytest.raises(UserError, match=r"sketches\.csv:5: image .*10_1\.png does not exist"):
        CsvImages(tree, path="lists").check()


def test_a_header_without_label_is_refused(tmp_path):
    write_csv(tmp_path / "d.csv", [("a.png", "x")], header="path,class")
    with pytest.raises(UserError, match=r"d\.csv has no column 'label' .*found: path, class"):
        CsvImages(path=str(tmp_path)).check()


def test_an_empty_label_is_refused_with_its_line(tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "d.csv").write_text("path,label\na.png,x\na.png,\n")
    with pytest.raises(UserError, match=r"d\.csv:3: empty label"):
        CsvImages(path=str(tmp_path)).check()


def test_options_are_checked():
    with pytest.raises(UserError, match="needs dataset option path"):
        CsvImages()
    with pytest.raises(UserError, match="relative but no data root"):
        CsvImages(path="lists")
    with pytest.raises(UserError, match="on_bad_image must be 'error' or 'skip'"):
        CsvImages(path="/x", on_bad_image="ignore")
    with pytest.raises(UserError, match="unknown option"):
        CsvImages(path="/x", folder="/y")


def test_a_folder_without_csv_files_is_refused(tmp_path):
    with pytest.raises(UserError, match="has no <domain>.csv files"):
        CsvImages(tmp_path, path=".").domains()


def test_a_class_missing_from_a_domain_warns_and_keeps_label_indices(tree):
    write_csv(tree / "lists" / "sketches.csv", [("../images/sketches/10_0.png", "10")])
    ds = CsvImages(tree, path="lists")
    with pytest.warns(UserWarning, match="domain 'sketches' has no image of class"):
        ds.check()
    assert ds.load("sketches", 8).labels.tolist() == [2]


def test_fingerprint_changes_when_an_image_or_a_list_changes(tree):
    before = CsvImages(tree, path="lists").fingerprint("photos")
    image = tree / "images" / "photos" / "2_0.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after_image = CsvImages(tree, path="lists").fingerprint("photos")
    assert after_image != before
    # another domain's list defines the class list too, so it is part of the fingerprint
    write_csv(tree / "lists" / "sketches.csv", [("../images/sketches/1_0.png", "0")])
    assert CsvImages(tree, path="lists").fingerprint("photos") != after_image


def test_an_unreadable_image_is_skipped_only_on_request(tree):
    (tree / "images" / "photos" / "1_1.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="1_1.png: cannot read image"):
        CsvImages(tree, path="lists").load("photos", 8)
    with pytest.warns(UserWarning, match="skipping"):
        dom = CsvImages(tree, path="lists", on_bad_image="skip").load("photos", 8)
    assert len(dom) == 5 and dom.labels.tolist() == [1, 1, 2, 2, 0] and len(dom.skipped) == 1
