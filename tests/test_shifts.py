"""Shift plugins: deterministic for a seed, shape and dtype kept, severity that means something."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlbench.plugins.registry import Registry
from tlbench_builtins.shifts import binarize, corruptions, photo_blend

RANDOM = {"noise", "rotate", "photo_blend"}  # use the generator
FIXED = {"blur", "contrast", "brightness", "invert", "jpeg", "binarize"}  # the same for every seed


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(
        entry_points=False, plugins={"corruptions": corruptions, "photo_blend": photo_blend, "binarize": binarize}
    )


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Eight 32×32 crops of a real photo: natural statistics, mid-range values."""
    from sklearn.datasets import load_sample_image

    img = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)
    crops = [img[:, 60 * i : 60 * i + 128, 70 * i : 70 * i + 128] for i in range(4)]
    crops = torch.stack(crops).float()
    small = F.interpolate(crops, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    small = small.round().clamp(0, 255).to(torch.uint8)
    return torch.cat([small, small.flip(-1)])


def _apply(registry, name, images, severity=3, seed=0):
    return registry.get("shift", name)().apply(images, severity, torch.Generator().manual_seed(seed))


def test_all_registered(registry):
    assert set(registry.names("shift")) == RANDOM | FIXED


@pytest.mark.parametrize("name", sorted(RANDOM | FIXED))
def test_deterministic_shape_dtype_and_changes_images(registry, photos, name):
    before = photos.clone()
    a = _apply(registry, name, photos, seed=1)
    b = _apply(registry, name, photos, seed=1)
    assert torch.equal(photos, before)  # the input is never modified in place
    assert a.shape == photos.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert (a.float() - photos.float()).abs().mean() > 2
    other = _apply(registry, name, photos, seed=2)
    assert torch.equal(a, other) == (name in FIXED)


@pytest.mark.parametrize("name", sorted(RANDOM | FIXED))
def test_empty_and_odd_sizes(registry, name):
    empty = torch.zeros(0, 3, 9, 7, dtype=torch.uint8)
    assert _apply(registry, name, empty).shape == empty.shape
    odd = torch.randint(0, 256, (3, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert _apply(registry, name, odd, severity=5).shape == odd.shape


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


@pytest.mark.parametrize("name", ["noise", "photo_blend", "jpeg", "blur"])
def test_severity_moves_further_from_the_original(registry, photos, name):
    distances = [_distance(_apply(registry, name, photos, severity=s), photos) for s in range(1, 6)]
    assert distances == sorted(distances) and distances[0] < distances[-1], distances


def test_noise_std_grows_as_published(registry):
    grey = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)
    stds = [float((_apply(registry, "noise", grey, severity=s).float() - 128).std()) for s in range(1, 6)]
    assert stds == sorted(stds)
    for std, expected in zip(stds[:3], corruptions.GaussianNoise.stds):  # above that, clipping at 0/255 bites
        assert std == pytest.approx(expected * 255, rel=0.05)


def test_contrast_and_brightness(registry, photos):
    stds = [
        float(_apply(registry, "contrast", photos, severity=s).float().std(dim=(1, 2, 3)).mean()) for s in range(1, 6)
    ]
    assert stds == sorted(stds, reverse=True)
    means = [float(_apply(registry, "brightness", photos, severity=s).float().mean()) for s in range(1, 6)]
    assert means == sorted(means) and means[0] > float(photos.float().mean())


def test_blur_removes_high_frequencies(registry, photos):
    def roughness(x):
        return float((x[..., 1:].float() - x[..., :-1].float()).abs().mean())

    values = [roughness(_apply(registry, "blur", photos, severity=s)) for s in range(1, 6)]
    assert values == sorted(values, reverse=True) and values[-1] < 0.6 * roughness(photos)


def test_invert_is_its_own_inverse(registry, photos):
    assert corruptions.Invert.has_severity is False
    once = _apply(registry, "invert", photos)
    assert torch.equal(once, 255 - photos) and torch.equal(_apply(registry, "invert", once), photos)


def test_binarize_whitens_every_pixel_that_is_not_black(registry):
    """tf-dann's MNIST: ``images > 0``; a faint anti-aliased edge (1 of 255) becomes stroke, black stays."""
    grey = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2).expand(1, 3, 2, 2).contiguous()
    out = _apply(registry, "binarize", grey)
    assert out[0, :, 0, 0].tolist() == [0, 0, 0]
    assert out[0, :, 0, 1].tolist() == out[0, :, 1, 0].tolist() == out[0, :, 1, 1].tolist() == [255, 255, 255]
    colour = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    colour[0, 2] = 7  # one channel lit: the pixel is lit, and stays grey
    assert _apply(registry, "binarize", colour).flatten().tolist() == [255, 255, 255]
    assert torch.equal(_apply(registry, "binarize", out), out)  # binary images are kept as they are
    assert binarize.Binarize.has_severity is False


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_rotate_moves_a_dot_by_the_severity_angle(registry, severity):
    size, r = 41, 12
    img = torch.zeros(64, 3, size, size, dtype=torch.uint8)
    c = size // 2
    img[:, :, c, c + r] = 255  # a dot right of the centre
    out = _apply(registry, "rotate", img, severity=severity, seed=5).float().sum(1)
    angle = math.radians(15 * severity)
    seen = set()
    for image in out:
        y, x = divmod(int(image.flatten().argmax()), size)
        dy, dx = y - c, x - c
        assert math.hypot(dy, dx) == pytest.approx(r, abs=1.5)
        assert abs(dx) == pytest.approx(r * math.cos(angle), abs=1.5)
        assert abs(dy) == pytest.approx(r * math.sin(angle), abs=1.5)
        seen.add(dy > 0)
    assert seen == {True, False}  # both directions occur


def test_photo_blend_full_strength_is_mnist_m(registry):
    """At severity 5 a black image becomes the photo patch itself: |0 - patch| = patch."""
    black = torch.zeros(6, 3, 24, 24, dtype=torch.uint8)
    out = _apply(registry, "photo_blend", black, severity=5, seed=3)
    assert len({bytes(p.flatten().numpy()) for p in out}) == len(out)
    for patch in out:
        assert _is_crop_of_a_photo(patch)


def _is_crop_of_a_photo(patch: torch.Tensor) -> bool:
    photos = photo_blend.sample_photos()
    h, w = patch.shape[-2:]
    for photo in photos:
        corner = (photo == patch[:, :1, :1]).all(0)  # places whose pixel equals the patch's top-left one
        for y, x in corner.nonzero().tolist():
            if torch.equal(photo[:, y : y + h, x : x + w], patch):
                return True
    return False


def test_photo_blend_images_larger_than_the_photos(registry):
    big = torch.full((1, 3, 500, 700), 50, dtype=torch.uint8)
    assert _apply(registry, "photo_blend", big, severity=2).shape == big.shape
