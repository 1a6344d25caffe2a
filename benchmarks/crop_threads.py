"""The training crop's ``roi_align`` in one call against the boxes split over two threads (issue 17).

    python benchmarks/crop_threads.py [--batch 32] [--stored 256] [--size 224] [--repeats 5]

torchvision's CPU ``roi_align`` resamples the boxes one after another on one core;
``tlbench.training.augment.crop_boxes`` splits them over torch's threads. Prints the milliseconds of
each form (alternating, twice) and whether their pixels are bit for bit the same.
"""

from __future__ import annotations

import argparse
import time

import torch

from tlbench.training.augment import crop_boxes, random_crop_boxes


def timed_ms(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--stored", type=int, default=256, help="stored image side (the recipe's resize)")
    parser.add_argument("--size", type=int, default=224, help="crop side")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.stored, args.stored), dtype=torch.uint8, generator=g)
    boxes = random_crop_boxes(args.batch, args.stored, args.stored, g)
    threads = torch.get_num_threads()

    def crop(count: int) -> torch.Tensor:
        torch.set_num_threads(count)
        try:
            return crop_boxes(images, boxes, args.size)
        finally:
            torch.set_num_threads(threads)

    print(f"bit for bit the same: {torch.equal(crop(1), crop(threads))} ({threads} threads)")
    for _ in range(2):
        for count in (1, threads):
            print(f"{count} thread(s): {timed_ms(lambda: crop(count), args.repeats):.0f} ms")


if __name__ == "__main__":
    main()
