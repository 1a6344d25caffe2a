"""Every built-in dataset, shift and reporter passes the conformance kit plugin authors use
(tlbench.testing), and the kit catches the mistakes it promises to catch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench import Dataset, Domain, Reporter, Shift
from tlbench.plugins.registry import get_registry
from tlbench.testing import check_dataset, check_reporter, check_shift

BUILTIN_PACKAGE = "tlbench_builtins."


def builtin_names(kind: str) -> list[str]:
    """Names registered by the built-in plugins (a third-party package installed next to them is its own business)."""
    registry = get_registry()
    return [
        n
        for n in registry.names(kind)
        if registry.plugins[registry.entry(kind, n).plugin].module.startswith(BUILTIN_PACKAGE)
    ]


def write_png(path: Path, seed: int, size: int = 10, suffix: str = ".png") -> None:
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def class_tree(
    folder: Path,
    domains: dict[str, str],
    classes: tuple[str, ...] = ("cup", "mug"),
    per_class: int = 2,
    suffix: str = ".png",
) -> None:
    """``<folder>/<domain folder>/<class>/img<i>`` for ``domains`` = {domain: folder below ``folder``}."""
    seed = 0
    for sub in domains.values():
        for cls in classes:
            for i in range(per_class):
                seed += 1
                write_png(folder / sub / cls / f"img{i}", seed, suffix=suffix)


# -- what each built-in dataset needs: (root, options) of a tiny generated copy ---------------------
def _office31(tmp: Path) -> tuple[Path, dict[str, Any]]:
    class_tree(tmp / "office31", {d: f"{d}/images" for d in ("amazon", "dslr", "webcam")}, suffix=".jpg")
    return tmp, {}


def _office_home(tmp: Path) -> tuple[Path, dict[str, Any]]:
    folders = {"Art": "Art", "Clipart": "Clipart", "Product": "Product", "Real_World": "Real World"}
    class_tree(tmp / "OfficeHome", folders, classes=("Alarm_Clock", "Backpack"), suffix=".jpg")
    return tmp, {}


def _image_folder(tmp: Path) -> tuple[Path, dict[str, Any]]:
    class_tree(tmp / "mine", {"clean": "clean", "noisy": "noisy"}, classes=("a", "b", "c"))
    return tmp, {"path": "mine"}


def _npz(tmp: Path) -> tuple[Path, dict[str, Any]]:
    rng = np.random.default_rng(0)
    np.savez(tmp / "grey.npz", x=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), y=np.array([0, 1, 2, 0, 1, 2]))
    np.savez(tmp / "rgb.npz", x=rng.integers(0, 256, (4, 9, 9, 3), dtype=np.uint8), y=np.array([2, 1, 0, 0]))
    return tmp, {"files": {"grey": "grey.npz", "rgb": "rgb.npz"}}


def _sklearn_digits(tmp: Path) -> tuple[None, dict[str, Any]]:
    return None, {}


DATA_FOR: dict[str, Callable[[Path], tuple[Path | None, dict[str, Any]]]] = {
    "office31": _office31,
    "office_home": _office_home,
    "image_folder": _image_folder,
    "npz": _npz,
    "sklearn_digits": _sklearn_digits,
}


@pytest.mark.filterwarnings("ignore:dataset 'office")  # the miniatures differ from the published counts
@pytest.mark.parametrize("name", builtin_names("dataset"))
def test_builtin_dataset_conforms(name, tmp_path):
    if name not in DATA_FOR:
        pytest.fail(f"built-in dataset {name!r} has no tiny data in tests/test_conformance.py DATA_FOR; add one")
    root, options = DATA_FOR[name](tmp_path)
    check_dataset(get_registry().get("dataset", name), root, **options)


@pytest.mark.data
@pytest.mark.filterwarnings("ignore:dataset 'office31'")
def test_office31_conforms_on_real_jpegs(shared_data, tmp_path):
    """A miniature of links to the real Office-31 files (one per class) keeps this fast."""
    for domain in ("amazon", "dslr", "webcam"):
        for cls_dir in sorted((shared_data / "office31" / domain / "images").iterdir()):
            first = sorted(cls_dir.iterdir())[0]
            link = tmp_path / "office31" / domain / "images" / cls_dir.name / first.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(first)
    check_dataset(get_registry().get("dataset", "office31"), tmp_path)


@pytest.mark.data
def test_npz_conforms_on_the_real_digit_archives(shared_data):
    files = {"mnist": "digits/mnist5k.npz", "usps": "digits/usps.npz"}
    if not all((shared_data / f).is_file() for f in files.values()):
        pytest.skip(f"digits/mnist5k.npz or digits/usps.npz missing under {shared_data}")
    check_dataset(get_registry().get("dataset", "npz"), shared_data, files=files)


@pytest.mark.parametrize("name", builtin_names("shift"))
def test_builtin_shift_conforms(name):
    check_shift(get_registry().get("shift", name))


@pytest.mark.parametrize("name", builtin_names("reporter"))
def test_builtin_reporter_conforms(name):
    check_reporter(get_registry().get("reporter", name))


def test_every_kind_has_builtins_to_check():
    assert {"sklearn_digits", "office31", "npz"} <= set(builtin_names("dataset"))
    assert {"invert", "rotate", "photo_blend"} <= set(builtin_names("shift"))
    assert {"markdown", "csv"} <= set(builtin_names("reporter"))


# -- the kit catches broken plugins ------------------------------------------------------------------
class GoodDataset(Dataset):
    """Two synthetic domains of 6 images, 3 classes; subclasses below break one rule each."""

    name = "good"
    aliases: ClassVar[dict[str, str]] = {"L": "left"}

    def domains(self) -> list[str]:
        return ["left", "right"]

    def fingerprint(self, domain: str) -> str:
        return f"synthetic-{domain}"

    def classes(self, domain: str) -> list[str]:
        return ["a", "b", "c"]

    def labels(self, domain: str) -> torch.Tensor:
        return torch.tensor([0, 1, 2, 0, 1, 2])

    def load(self, domain: str, size: int) -> Domain:
        g = torch.Generator().manual_seed(len(domain))
        images = torch.randint(0, 256, (6, 3, size, size), generator=g, dtype=torch.uint8)
        return Domain(domain, images, self.labels(domain), self.classes(domain))


def test_a_conforming_dataset_passes():
    check_dataset(GoodDataset)


class _NoSuperInit(GoodDataset):
    """Broken on purpose (see the test that uses _NoSuperInit)."""

    def __init__(self, root=None, **options):  # forgets Dataset.__init__: typos in options pass silently
        self.root, self.options = root, options


class _OSErrorOnMissingData(GoodDataset):
    """Broken on purpose (see the test that uses _OSErrorOnMissingData)."""

    option_help: ClassVar[dict[str, str]] = {"path": "a file under the root"}

    def check(self) -> None:
        (self.root / self.options.get("path", "x")).read_bytes()  # FileNotFoundError: not a UserError


class _LabelsOutOfRange(GoodDataset):
    """Broken on purpose (see the test that uses _LabelsOutOfRange)."""

    def labels(self, domain: str) -> torch.Tensor:
        return torch.tensor([0, 1, 2, 3, 1, 2])


class _ClassesDiffer(GoodDataset):
    """Broken on purpose (see the test that uses _ClassesDiffer)."""

    def classes(self, domain: str) -> list[str]:
        return ["a", "b", "c"] if domain == "left" else ["a", "c", "b"]


class _RandomFingerprint(GoodDataset):
    """Broken on purpose (see the test that uses _RandomFingerprint)."""

    def fingerprint(self, domain: str) -> str:
        return str(torch.rand(1).item())


class _WrongSize(GoodDataset):
    """Broken on purpose (see the test that uses _WrongSize)."""

    def load(self, domain: str, size: int) -> Domain:
        return super().load(domain, size + 1)


class _NondeterministicLoad(GoodDataset):
    """Broken on purpose (see the test that uses _NondeterministicLoad)."""

    def load(self, domain: str, size: int) -> Domain:
        images = torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8)
        return Domain(domain, images, self.labels(domain), self.classes(domain))


class _PlusInName(GoodDataset):
    """Broken on purpose (see the test that uses _PlusInName)."""

    def domains(self) -> list[str]:
        return ["left", "right+flipped"]


class _Int32Labels(GoodDataset):
    """Broken on purpose (see the test that uses _Int32Labels)."""

    def labels(self, domain: str) -> torch.Tensor:
        return torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)


class _BadAlias(GoodDataset):
    """Broken on purpose (see the test that uses _BadAlias)."""

    aliases: ClassVar[dict[str, str]] = {"C": "centre"}


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_NoSuperInit, "accepted the unknown option"),
        (_OSErrorOnMissingData, "raised FileNotFoundError.*must be a tlbench.UserError"),
        (_LabelsOutOfRange, "labels span 0..3 but there are 3 classes"),
        (_ClassesDiffer, "every domain needs the same class list"),
        (_RandomFingerprint, "fingerprint\\('left'\\) is not stable"),
        (_WrongSize, "images must be uint8 N×3×12×12"),
        (_NondeterministicLoad, "different images or labels on a second call"),
        (_PlusInName, "domain name 'right\\+flipped' cannot be used in a pair"),
        (_Int32Labels, "labels must be int64"),
        (_BadAlias, "aliases\\['C'\\] = 'centre' is not one of domains"),
    ],
)
def test_check_dataset_catches(cls, message):
    options = {"path": "missing.bin"} if "path" in cls.option_help else {}
    with pytest.raises(AssertionError, match=message):
        check_dataset(cls, Path("/nonexistent-root") if options else None, **options)


def test_check_dataset_needs_loadable_data(tmp_path):
    folder = get_registry().get("dataset", "image_folder")
    with pytest.raises(AssertionError, match="refused the data given to check_dataset: .*does not exist"):
        check_dataset(folder, tmp_path, path="absent")


class GoodShift(Shift):
    """Adds seeded noise whose strength grows with the severity."""

    name = "good_noise"

    def apply(self, images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(images.shape, generator=generator) * 10 * severity
        return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


class _GlobalRandom(GoodShift):
    """Broken on purpose (see the test that uses _GlobalRandom)."""

    def apply(self, images, severity, generator):
        return (images.float() + torch.randn(images.shape) * 10).clamp(0, 255).to(torch.uint8)


class _InPlace(GoodShift):
    """Broken on purpose (see the test that uses _InPlace)."""

    def apply(self, images, severity, generator):
        return images.mul_(1).add_(1)


class _Float(GoodShift):
    """Broken on purpose (see the test that uses _Float)."""

    def apply(self, images, severity, generator):
        return images.float()


class _IgnoresSeverity(GoodShift):
    """Broken on purpose (see the test that uses _IgnoresSeverity)."""

    def apply(self, images, severity, generator):
        return 255 - images


class _BadName(GoodShift):
    """Broken on purpose (see the test that uses _BadName)."""

    name = "two words"


class _ColonName(GoodShift):
    """Broken on purpose (see the test that uses _ColonName)."""

    name = "blur:3"


def test_a_conforming_shift_passes():
    check_shift(GoodShift)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_GlobalRandom, "draw randomness only from the generator"),
        (_InPlace, "modified its input in place"),
        (_Float, "must return uint8"),
        (_IgnoresSeverity, "all give the same output.*has_severity = False"),
        (_BadName, "the registry's rule holds for it"),
        (_ColonName, "the registry's rule holds for it"),  # ':' is also what a domain spec's severity uses
    ],
)
def test_check_shift_catches(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_shift(cls)


class _UndeclaredFile(Reporter):
    """Writes two files, returns one."""

    name = "undeclared"

    def write(self, board, out_dir):
        (Path(out_dir) / "extra.txt").write_text("x")
        path = Path(out_dir) / "board.txt"
        path.write_text(board.title)
        return [path]


class _ReturnsNothing(Reporter):
    """Writes a file and forgets to say so."""

    name = "silent"

    def write(self, board, out_dir):
        (Path(out_dir) / "board.txt").write_text(board.title)
        return []


class _WritesOutside(Reporter):
    """Writes next to the output folder."""

    name = "outside"

    def write(self, board, out_dir):
        path = Path(out_dir).parent / "board.txt"
        path.write_text(board.title)
        return [path]


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_UndeclaredFile, "left files it did not return"),
        (_ReturnsNothing, "must return the list of files it wrote"),
        (_WritesOutside, "is outside the output folder"),
    ],
)
def test_check_reporter_catches(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_reporter(cls)
