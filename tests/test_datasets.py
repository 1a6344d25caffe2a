"""Dataset plugins: Office-31 (real data), Office-Home (a generated miniature), image folders, npz, sklearn digits."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench import UserError
from tlbench.plugins.registry import Registry
from tlbench_builtins.datasets import image_folder, npz, office, sklearn_digits


def _data_root() -> Path:
    env = os.environ.get("TLBENCH_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


DATA = _data_root()
needs_office31 = pytest.mark.skipif(not (DATA / "office31").is_dir(), reason=f"real data not found at {DATA}/office31")
needs_digits = pytest.mark.skipif(not (DATA / "digits").is_dir(), reason=f"real data not found at {DATA}/digits")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(
        entry_points=False,
        plugins={"office": office, "image_folder": image_folder, "npz": npz, "sklearn_digits": sklearn_digits},
    )


def _write_image(path: Path, seed: int, size: int = 12) -> np.ndarray:
    """A small random RGB image; PNG keeps its pixels exact, JPEG is lossy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _make_tree(root: Path, domains: dict[str, list[str]], per_class: int = 2, suffix: str = ".png") -> None:
    seed = 0
    for domain, classes in domains.items():
        for cls in classes:
            for i in range(per_class):
                seed += 1
                _write_image(root / domain / cls / f"img{i}{suffix}", seed)


# -- Office-31 ------------------------------------------------------------------------------------
@needs_office31
def test_office31_real_counts_classes_and_aliases(registry):
    ds = registry.get("dataset", "office31")(DATA)
    counts = {d: sum(len(f) for f in ds.class_files(d).values()) for d in ds.domains()}
    assert counts == {"amazon": 2817, "dslr": 498, "webcam": 795}
    classes = ds.classes()
    assert len(classes) == 31 and classes == sorted(classes) and classes[:3] == ["back_pack", "bike", "bike_helmet"]
    assert [ds.resolve(a) for a in ("A", "D", "W", "Amazon")] == ["amazon", "dslr", "webcam", "amazon"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real data matches the published counts: no warning
        ds.check()
    assert ds.fingerprint("dslr") == ds.fingerprint("dslr") != ds.fingerprint("webcam")


@needs_office31
def test_office31_decodes_real_jpegs_in_the_official_layout(tmp_path, registry):
    """A miniature with links to real Office-31 JPEGs (2 per class) keeps the test fast."""
    for domain in ("amazon", "dslr", "webcam"):
        for cls_dir in sorted((DATA / "office31" / domain / "images").iterdir()):
            for f in sorted(cls_dir.iterdir())[:2]:
                link = tmp_path / "office31" / domain / "images" / cls_dir.name / f.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(f)
    ds = registry.get("dataset", "office31")(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.check()
    assert sorted(str(w.message).split("the published version has ")[1][:4] for w in caught) == ["2817", "498;", "795;"]
    d = ds.load("dslr", 20)
    assert d.images.shape == (62, 3, 20, 20) and d.images.dtype == torch.uint8
    assert d.labels.tolist() == [i for i in range(31) for _ in range(2)]
    assert d.classes[0] == "back_pack" and float(d.images.float().std()) > 10  # real pictures, not blank


def test_office31_missing_folder_says_where_and_how(tmp_path, registry):
    ds = registry.get("dataset", "office31")(tmp_path)
    with pytest.raises(UserError) as err:
        ds.check()
    msg = str(err.value)
    assert str(tmp_path / "office31") in msg
    assert "{amazon,dslr,webcam}/[images/]<class>/*.jpg" in msg
    assert "https://faculty.cc.gatech.edu/~judy/domainadapt/" in msg
    assert "\n" not in msg


def test_office31_without_images_level_and_path_option(tmp_path, registry):
    _make_tree(tmp_path / "elsewhere", {d: ["cup", "mug"] for d in ("amazon", "dslr", "webcam")}, per_class=1)
    ds = registry.get("dataset", "office31")(tmp_path, path="elsewhere")
    d = ds.load(ds.resolve("W"), 8)
    assert d.classes == ["cup", "mug"] and d.labels.tolist() == [0, 1]


def test_office31_unknown_domain_lists_valid_ones(tmp_path, registry):
    ds = registry.get("dataset", "office31")(tmp_path)
    with pytest.raises(UserError, match="valid: amazon, dslr, webcam, A \\(amazon\\)"):
        ds.resolve("X")


# -- Office-Home (generated miniature) ---------------------------------------------------------------
def test_office_home_miniature(tmp_path, registry):
    classes = ["Alarm_Clock", "Backpack", "Batteries"]
    _make_tree(tmp_path / "office_home", {d: classes for d in ("Art", "Clipart", "Product")}, suffix=".jpg")
    _make_tree(tmp_path / "office_home", {"Real World": classes}, suffix=".png")  # the archive's own spelling
    ds = registry.get("dataset", "office_home")(tmp_path)
    assert [ds.resolve(a) for a in ("Ar", "Cl", "Pr", "Rw")] == ["Art", "Clipart", "Product", "Real_World"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.check()
    assert any("has 3 classes" in str(w.message) and "65" in str(w.message) for w in caught)
    d = ds.load("Real_World", 12)
    assert d.images.shape == (6, 3, 12, 12) and d.classes == classes
    assert d.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # PNG at its own size: the decoded pixels are exactly the written ones
    expected = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    assert torch.equal(d.images[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_class_missing_from_one_domain_is_named(tmp_path, registry):
    _make_tree(
        tmp_path / "office_home",
        {"Art": ["Bed", "Bike"], "Clipart": ["Bed", "Bike"], "Product": ["Bed"], "Real_World": ["Bed", "Bike"]},
    )
    ds = registry.get("dataset", "office_home")(tmp_path)
    with pytest.raises(UserError, match="class 'Bike' .* missing from domain 'Product'"):
        ds.load("Art", 8)


def test_domain_without_images_is_an_error(tmp_path, registry):
    _make_tree(tmp_path / "data", {"a": ["x"], "b": ["x"]})
    for f in (tmp_path / "data" / "b" / "x").iterdir():
        f.unlink()
    ds = registry.get("dataset", "image_folder")(tmp_path, path="data")
    with pytest.raises(UserError, match="domain 'b' has no images"):
        ds.load("b", 8)


# -- bad images --------------------------------------------------------------------------------------
def _tree_with_corrupt_file(root: Path) -> Path:
    _make_tree(root / "data", {"src": ["cat", "dog"], "tgt": ["cat", "dog"]})
    bad = root / "data" / "src" / "cat" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    return bad


def test_corrupt_image_is_named(tmp_path, registry):
    _tree_with_corrupt_file(tmp_path)
    ds = registry.get("dataset", "image_folder")(tmp_path, path="data")
    with pytest.raises(UserError, match="broken.jpg.*on_bad_image: skip"):
        ds.load("src", 8)


def test_corrupt_image_skipped_keeps_labels_right(tmp_path, registry):
    bad = _tree_with_corrupt_file(tmp_path)
    ds = registry.get("dataset", "image_folder")(tmp_path, path=str(tmp_path / "data"), on_bad_image="skip")
    with pytest.warns(UserWarning, match="broken.jpg"):
        d = ds.load("src", 8)
    assert len(d) == 4 and d.labels.tolist() == [0, 0, 1, 1]
    assert len(d.skipped) == 1 and str(bad) in d.skipped[0]


def test_bad_option_values(tmp_path, registry):
    with pytest.raises(UserError, match="on_bad_image must be 'error' or 'skip'"):
        registry.get("dataset", "office31")(tmp_path, on_bad_image="ignore")
    with pytest.raises(UserError, match="unknown option.*colour"):
        registry.get("dataset", "office31")(tmp_path, colour="red")
    with pytest.raises(UserError, match="needs dataset option path"):
        registry.get("dataset", "image_folder")(tmp_path)


# -- image_folder --------------------------------------------------------------------------------------
def test_image_folder_domains_and_labels(tmp_path, registry):
    _make_tree(tmp_path / "mine", {"photos": ["a", "b", "c"], "sketches": ["a", "b", "c"]}, per_class=1)
    ds = registry.get("dataset", "image_folder")(tmp_path, path="mine")
    assert ds.domains() == ["photos", "sketches"]
    ds.check()
    d = ds.load("sketches", 6)
    assert d.images.shape == (3, 3, 6, 6) and d.labels.tolist() == [0, 1, 2] and d.classes == ["a", "b", "c"]
    assert ds.fingerprint("photos") != ds.fingerprint("sketches")
    with pytest.raises(UserError, match="does not exist"):
        registry.get("dataset", "image_folder")(tmp_path, path="absent").domains()


# -- npz ------------------------------------------------------------------------------------------------
@needs_digits
def test_npz_real_digits(registry):
    ds = registry.get("dataset", "npz")(
        DATA,
        files={
            "mnist": "digits/mnist5k.npz",
            "usps": "digits/usps.npz",
            "mnistm": str(DATA / "digits" / "mnistm_test.npz"),
        },
    )
    ds.check()
    mnist = ds.load("mnist", 28)
    raw = np.load(DATA / "digits" / "mnist5k.npz")
    assert mnist.images.shape == (5000, 3, 28, 28) and mnist.classes == [str(i) for i in range(10)]
    assert torch.equal(mnist.images[:, 0], torch.from_numpy(raw["x"]))  # same size: pixels unchanged
    assert torch.equal(mnist.images[:, 0], mnist.images[:, 2])  # grey became three equal channels
    assert torch.equal(mnist.labels, torch.from_numpy(raw["y"]).long())
    usps = ds.load("usps", 20)
    assert usps.images.shape == (9298, 3, 20, 20) and usps.labels.bincount().tolist()[0] > 0
    mnistm = ds.load("mnistm", 32)
    assert mnistm.images.shape == (9001, 3, 32, 32)
    assert not torch.equal(mnistm.images[:, 0], mnistm.images[:, 1])  # real colour


def test_npz_errors(tmp_path, registry):
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 4, 4), np.uint8))
    np.savez(tmp_path / "float.npz", x=np.zeros((2, 4, 4), np.float32), y=np.array([0, 1]))
    ds = registry.get("dataset", "npz")(tmp_path, files={"a": "nolabels.npz", "b": "float.npz", "c": "absent.npz"})
    with pytest.raises(UserError, match="nolabels.npz has no array 'y'"):
        ds.load("a", 4)
    with pytest.raises(UserError, match="float.npz.*uint8"):
        ds.load("b", 4)
    with pytest.raises(UserError, match="absent.npz of domain 'c' does not exist"):
        ds.fingerprint("c")
    with pytest.raises(UserError, match="needs dataset option files"):
        registry.get("dataset", "npz")(tmp_path)


def test_npz_classes_span_all_domains(tmp_path, registry):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, 1]))
    np.savez(tmp_path / "b.npz", x=np.zeros((1, 4, 4, 3), np.uint8), y=np.array([4]))
    ds = registry.get("dataset", "npz")(tmp_path, files={"a": "a.npz", "b": "b.npz"})
    assert ds.load("a", 4).classes == ["0", "1", "2", "3", "4"]


# -- sklearn digits --------------------------------------------------------------------------------------
def test_sklearn_digits(registry):
    from sklearn.datasets import load_digits

    ds = registry.get("dataset", "sklearn_digits")()
    assert ds.domains() == ["digits"]
    d = ds.load("digits", 8)
    raw = load_digits()
    assert d.images.shape == (1797, 3, 8, 8) and d.classes == [str(i) for i in range(10)]
    assert int(d.images.max()) == 255 and int(d.images.min()) == 0
    assert torch.equal(d.images[:, 1], torch.from_numpy(np.rint(raw.images * 255 / 16).astype(np.uint8)))
    assert torch.equal(d.labels, torch.from_numpy(raw.target).long())
    assert ds.load("digits", 16).images.shape == (1797, 3, 16, 16)
