"""Batched crops: the boxes split over torch's CPU threads give the single call's pixels, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from tlbench.training.augment import crop_boxes, random_crop_boxes


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_crops_split_over_threads_equal_one_roi_align_call(threads, n):
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 3, 40, 36), dtype=torch.uint8, generator=g)
    boxes = random_crop_boxes(n, 40, 36, g)
    rois = torch.cat([torch.arange(n, dtype=boxes.dtype)[:, None], boxes], dim=1)
    expected = roi_align(images.float(), rois, output_size=(24, 24), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    for count in (1, 2, 3):
        threads(count)
        out = crop_boxes(images, boxes, 24)
        assert out.shape == (n, 3, 24, 24)
        assert torch.equal(out, expected), f"{count} threads"
