"""Protocol ``test_time``: the target as a stream of test batches, and the predictions it is scored on.

A test-time cell (Tent, Wang et al. ICLR 2021; BN-adapt, Schneider et al. NeurIPS 2020) starts from
its source model and meets every target image once, in a fixed order drawn from the cell's seed,
``batch_size`` at a time, at the test view (no augmentation). The strategy predicts each batch when
it arrives and may then adapt on it (``StepOutput.predictions``: logits made before the step's
update); the cell's accuracy is that of those online predictions, so no batch is predicted after the
model has learnt from it. No label reaches the strategy: batches carry no target label and the
source side is empty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tlbench.training.augment import Augmenter
from tlbench.training.loop import StepObserver
from tlbench.training.strategy import Batch, StepOutput


def stream_bounds(target_images: int, batch_size: int) -> list[int]:
    """Where each batch of a stream of ``target_images`` images starts, and the end: ``batch_size`` at
    a time, the last batch smaller; a last batch of one image joins the one before it (a batch
    normalised by its own statistics needs two images, and every image must be predicted)."""
    bounds = list(range(0, target_images, batch_size)) + [target_images]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return bounds


def stream_steps(target_images: int, batch_size: int) -> int:
    """Batches in a stream of ``target_images`` images (:func:`stream_bounds`)."""
    return len(stream_bounds(target_images, batch_size)) - 1


class TestStream:
    """Serves step ``s`` the ``s``-th batch of the target in a fixed order (a permutation drawn from
    ``seed``), at the test view; every image exactly once over the stream."""

    __test__ = False  # not a pytest test class

    def __init__(self, images: Tensor, augmenter: Augmenter, batch_size: int, seed: int):
        self.images, self.augmenter, self.batch_size = images, augmenter, batch_size
        self.bounds = stream_bounds(len(images), batch_size)
        g = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(images), generator=g).to(images.device)
        self._no_labels = torch.zeros(0, dtype=torch.long, device=images.device)

    def indices(self, step: int) -> Tensor:
        """The target images of step ``step``'s batch."""
        return self.order[self.bounds[step] : self.bounds[step + 1]]

    def batch(self, step: int) -> Batch:
        index = self.indices(step)
        target = self.augmenter.test(self.images[index])
        return Batch(source=target[:0], source_labels=self._no_labels, target=target, target_index=index)

    @property
    def images_per_step(self) -> int:
        return self.batch_size


class OnlinePredictions(StepObserver):
    """Keeps each step's predictions (``StepOutput.predictions``) in the stream's order: what a
    test-time cell is scored on."""

    def __init__(self, stream: TestStream, num_images: int, strategy_name: str):
        self.stream, self.strategy_name = stream, strategy_name
        self.predicted = torch.full((num_images,), -1, dtype=torch.long, device=stream.order.device)

    def after_step(self, step: int, loss: Tensor, out: StepOutput) -> None:
        if out.predictions is None:
            raise ValueError(
                f"strategy {self.strategy_name!r} returned no predictions under protocol test_time "
                "(StepOutput.predictions: its logits on batch.target before the step's update)"
            )
        self.predicted[self.stream.indices(step)] = out.predictions.detach().argmax(1)

    def accuracy(self, labels: Tensor) -> float:
        """Percent of target images whose online prediction is their label (every image is predicted once)."""
        if bool((self.predicted < 0).any()):
            raise RuntimeError("the test stream ended before every target image was predicted")
        return 100.0 * (self.predicted == labels.to(self.predicted.device)).float().mean().item()
