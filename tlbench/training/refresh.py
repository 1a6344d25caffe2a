"""Whole-target passes a strategy asks for (``Strategy.target_refreshes``), run by the step loop.

SHOT (Liang et al., ICML 2020) relabels every target image by clustering the model's features at
fixed intervals of training; the engine owns that pass, as it owns evaluation, so a strategy never
loops over data itself: it receives a :class:`tlbench.TargetPass` of every served target image
(test view, eval mode, no gradient) through ``Strategy.refresh``. While the backbone is frozen
the pass runs the head on the backbone's cached test-view features instead of the backbone again.
"""

from __future__ import annotations

from torch import Tensor

from tlbench.training.checkpoints import kept_modes
from tlbench.training.evaluation import ModelOutputs, head_outputs, model_outputs
from tlbench.training.loop import StepObserver
from tlbench.training.setup import CellSetup
from tlbench.training.strategy import StepContext, TargetPass


def refresh_steps(total_steps: int, refreshes: int) -> list[int]:
    """The steps before which a strategy asking for ``refreshes`` passes gets one: step 0 and every
    ``total_steps // refreshes`` steps after (SHOT's ``iter_num % interval_iter == 0``)."""
    if refreshes <= 0 or total_steps <= 0:
        return []
    return list(range(0, total_steps, max(1, total_steps // refreshes)))


class TargetRefresher(StepObserver):
    """Hands the strategy a :class:`TargetPass` before each of its :func:`refresh_steps`."""

    def __init__(
        self,
        setup: CellSetup,
        ctx: StepContext,
        target_images: Tensor,
        cached_target: Tensor | None,
        feature_steps: int,
    ):
        self.setup, self.ctx, self.images = setup, ctx, target_images
        self.cached, self.feature_steps = cached_target, feature_steps  # cached: views × N × D
        self.due = set(refresh_steps(setup.total_steps, setup.strategy.target_refreshes))

    def before_step(self, step: int) -> None:
        if step in self.due:
            self.setup.strategy.refresh(self.target_pass(step), self.ctx)

    def target_pass(self, step: int) -> TargetPass:
        """The model's outputs on every served target image, as they are before ``step``."""
        setup = self.setup
        with kept_modes(setup.model, setup.strategy):
            out: ModelOutputs
            if self.cached is not None and step < self.feature_steps:  # the frozen backbone's centre view
                out = head_outputs(setup.model, self.cached[0], setup.recipe.eval_batch_size, setup.autocast)
            else:
                out = model_outputs(
                    setup.model,
                    self.images,
                    setup.augmenter,
                    setup.recipe.eval_batch_size,
                    setup.device,
                    setup.autocast,
                )
        assert out.embedding is not None  # a TransferModel always gives its embedding
        return TargetPass(out.logits.to(setup.device), out.embedding.to(setup.device))
