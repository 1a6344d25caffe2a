"""Data input a hostile user tried (issue 35), each held to its promise: one line and exit 2 before any
cell trains, nothing written inside the data root, and no archive decompressed before what it declares
is known to fit in memory.

Archives that lie are written by hand here: an .npy header declaring a huge shape, followed by a few
deflated bytes, so each fixture is a few hundred bytes and no test allocates what the header declares.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npformat
from test_bad_input import folder_suite, make_folders, run_bad, tiny
from test_reliability import NPZ_SUITE, _npz

from tlbench.cli import main
from tlbench.data.domains import array_to_images, files_fingerprint, resize_uint8
from tlbench.errors import UserError
from tlbench.matrix.preflight import check_tracker_paths
from tlbench.plugins.registry import get_registry


def lying_npz(path: Path, declared: dict[str, tuple[tuple[int, ...], str]], real: dict[str, np.ndarray]) -> Path:
    """An .npz whose ``declared`` arrays have a header saying (shape, dtype) and 1 KiB of zeros for data,
    beside ``real`` arrays saved whole."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, (shape, dtype) in declared.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                header = {"descr": npformat.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
                npformat.write_array_header_1_0(f, header)
                f.write(b"\0" * 1024)
        for key, array in real.items():
            buf = io.BytesIO()
            np.save(buf, array)
            archive.writestr(f"{key}.npy", buf.getvalue())
    return path


def npz_suite(tmp_path: Path, src: Path, tgt: Path) -> Path:
    return tiny(tmp_path, NPZ_SUITE.format(src=src, tgt=tgt))


# -- trackers never write inside the data root ------------------------------------------------------
@pytest.mark.parametrize(
    ("tracker", "option"),
    [
        ("mlflow", "tracking_uri: 'sqlite:///{root}/ml.db'"),
        ("mlflow", "tracking_uri: 'file://{root}/mlruns'"),
        ("mlflow", "tracking_uri: '{root}/mlruns'"),
        ("tensorboard", "log_dir: '{root}/tb'"),
    ],
)
def test_a_tracker_store_inside_the_data_root_is_refused_before_training(capsys, tmp_path, tracker, option):
    root = tmp_path / "root"
    make_folders(root / "folders", {"src": ["a", "b"], "tgt": ["a", "b"]})
    suite = folder_suite(tmp_path, Path("folders"))
    given = option.format(root=root)
    suite.write_text(suite.read_text() + f"trackers:\n  - {{name: {tracker}, options: {{{given}}}}}\n")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    line = run_bad(capsys, tmp_path, suite, "--data-root", str(root))
    written = root / given.split("/")[-1].rstrip("'")
    assert line == (
        f"tlbench: error: tracker {tracker!r} would write {written}, inside the data root {root}, which "
        "tlbench only reads; point its options (in the suite's trackers) outside it"
    )
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing created there


def test_tracker_locations_are_checked_where_they_point(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    fine = [
        ("mlflow", {}),  # <out>/mlflow
        ("mlflow", {"tracking_uri": "http://127.0.0.1:5000"}),
        ("mlflow", {"tracking_uri": f"sqlite:///{tmp_path / 'elsewhere' / 'ml.db'}"}),
        ("tensorboard", {"log_dir": "s3://bucket/runs"}),
        ("tensorboard", {}),
    ]
    check_tracker_paths(fine, tmp_path / "out", str(root), get_registry())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/env.db")
    with pytest.raises(UserError, match=f"would write {root / 'env.db'}, inside the data root"):
        check_tracker_paths([("mlflow", {})], tmp_path / "out", str(root), get_registry())
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(root)  # a database store keeps its artifacts in ./mlruns
    with pytest.raises(UserError, match=f"would write {root / 'mlruns'}, inside the data root"):
        check_tracker_paths(
            [("mlflow", {"tracking_uri": f"sqlite:///{tmp_path}/ml.db"})], tmp_path / "out", str(root), get_registry()
        )


# -- archives that declare more than they hold --------------------------------------------------------
def test_a_decompression_bomb_is_refused_before_decompressing(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("tlbench.data.memory.available_memory", lambda: 1 << 30)
    labels = np.zeros(60000, dtype=np.int64)
    labels[1] = 1
    src = lying_npz(tmp_path / "bomb.npz", {"x": ((60000, 160, 160), "u1")}, {"y": labels})
    tgt = _npz(tmp_path / "tgt.npz", [0, 1, 0, 1])
    assert src.stat().st_size < 10_000  # declares 1.4 GiB
    line = run_bad(capsys, tmp_path, npz_suite(tmp_path, src, tgt))
    assert line == (
        f"tlbench: error: dataset 'npz': {src} declares x of shape (60000, 160, 160) uint8, y of shape "
        "(60000,) int64, which needs at least 5.7 GiB of memory to load, and 1.0 GiB are available; use a "
        "smaller file (fewer or smaller images) or free memory"
    )


def test_an_archive_declaring_a_trillion_labels_is_one_line(capsys, tmp_path):
    src = lying_npz(tmp_path / "labels.npz", {"y": ((10**12,), "<i8")}, {"x": np.zeros((4, 8, 8), dtype=np.uint8)})
    tgt = _npz(tmp_path / "tgt.npz", [0, 1, 0, 1])
    line = run_bad(capsys, tmp_path, npz_suite(tmp_path, src, tgt))
    assert line.startswith(
        f"tlbench: error: dataset 'npz': {src} declares y of shape (1000000000000,) int64, which needs at "
        "least 7,450.6 GiB of memory to load, and "
    )


@pytest.mark.parametrize(
    ("content", "kind"),
    [(b"hello, this is text\n", "a text file"), (None, "a single .npy array"), (b"", "empty")],
)
def test_a_file_that_is_no_npz_archive_says_what_it_is(capsys, tmp_path, content, kind):
    src = tmp_path / "src.npz"
    if content is None:
        with open(src, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        src.write_bytes(content)
    line = run_bad(capsys, tmp_path, npz_suite(tmp_path, src, _npz(tmp_path / "tgt.npz", [0, 1])))
    assert line == (
        f"tlbench: error: dataset 'npz': {src} is not an .npz archive (it is {kind}); an .npz is a zip of "
        ".npy arrays, as numpy.savez(file, x=images, y=labels) writes"
    )


def test_decoding_a_grey_domain_allocates_one_copy_and_resizes_in_chunks(monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (5, 9, 7), dtype=np.uint8)
    images = array_to_images(x)
    assert images.shape == (5, 3, 9, 7) and images.is_contiguous()
    assert all(torch.equal(images[:, c], torch.from_numpy(x)) for c in range(3))
    whole = torch.nn.functional.interpolate(
        images.float(), size=(4, 4), mode="bilinear", antialias=True, align_corners=False
    )
    monkeypatch.setattr("tlbench.data.domains.RESIZE_CHUNK", 2)
    assert torch.equal(resize_uint8(images, 4), whole.round_().clamp_(0, 255).to(torch.uint8))


# -- folders ----------------------------------------------------------------------------------------
def test_a_class_folder_linking_to_its_parent_is_called_a_loop(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    (data / "src" / "loop").symlink_to("..")
    (data / "tgt" / "loop").symlink_to("..")
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data))
    assert line == (
        f"tlbench: error: dataset 'image_folder': class folder {data / 'src' / 'loop'} is a link to {data}, "
        "which contains the link itself (a loop); remove the link, or point it at a folder of images"
    )
    (data / "src" / "loop").unlink()  # a link to a folder of images elsewhere is read as any class folder
    (data / "src" / "loop").symlink_to(make_folders(tmp_path / "shared", {"pool": ["loop"]}) / "pool" / "loop")
    dataset = get_registry().get("dataset", "image_folder")(None, path=str(data))
    assert {c: len(fs) for c, fs in dataset.class_files("src").items()} == {"a": 3, "b": 3, "loop": 3}


def test_a_domain_folder_named_in_invalid_utf8_is_one_line_under_data_prepare(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    os.rename(data / "tgt", os.fsencode(data) + b"/t\xffgt")
    suite = folder_suite(tmp_path, data)
    suite.write_text(suite.read_text().replace("pairs: [src->tgt]", "pairs: all"))
    code = main(["data", "prepare", str(suite), "--cache", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err + captured.out
    assert captured.err == (
        f"tlbench: error: dataset 'image_folder': domain folder {data}/t\\xffgt has a name that is not "
        "valid UTF-8; rename it (its name becomes a domain or class name in the results)\n"
    )


def test_whatever_a_dataset_raises_under_data_prepare_is_one_line(capsys, tmp_path, monkeypatch):
    from tlbench.data.cache import clear_memory_cache

    def broken(self, domain, size):
        raise RuntimeError("decoder crashed\nsecond line")

    clear_memory_cache()
    monkeypatch.setattr(get_registry().get("dataset", "image_folder"), "load", broken)
    suite = folder_suite(tmp_path, make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]}))
    code = main(["data", "prepare", str(suite), "--cache", str(tmp_path / "cache")])
    assert code == 2 and capsys.readouterr().err == (
        "tlbench: error: dataset 'image_folder': domain 'src' cannot be loaded (RuntimeError: decoder crashed)\n"
    )


def test_an_image_file_named_in_invalid_utf8_is_fingerprinted(tmp_path):
    image = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    image.write_bytes(b"not decoded here")
    assert len(files_fingerprint([image])) == 16


@pytest.mark.parametrize("dataset", ["image_folder", "npz"])
def test_a_path_too_long_for_the_file_system_is_one_line(capsys, tmp_path, dataset):
    long = f"{tmp_path}/{'a' * 5000}"
    if dataset == "image_folder":
        suite, shown = folder_suite(tmp_path, Path(long)), "path"
    else:
        suite, shown = npz_suite(tmp_path, Path(long), _npz(tmp_path / "tgt.npz", [0, 1])), "file"
    line = run_bad(capsys, tmp_path, suite)
    assert line.startswith(f"tlbench: error: dataset '{dataset}': {shown} {long[:100]}... (5")
    assert "characters) " in line and "cannot be used (File name too long)" in line and len(line) < 400
