"""Conformance kit for plugin authors (also a pytest plugin: ``pytest11`` entry point).

Call :func:`check_strategy` from your plugin's tests to learn, in seconds on a CPU, whether a
strategy honours the contract the engine relies on::

    from tlbench.testing import check_strategy
    from my_plugin import MyStrategy

    def test_my_strategy_conforms():
        check_strategy(MyStrategy)

With pytest installed, the fixtures ``tiny_backbone``, ``tiny_model`` and ``tiny_batch_factory``
are available in every test session (timm's 99k-parameter ``test_efficientnet``, 3 classes,
3×32×32 images). The helpers behind them (:func:`make_tiny_model`, :func:`make_tiny_batch`)
work without pytest. Every failed check raises ``AssertionError`` saying what was wrong.

One module per kind: ``strategies`` (:func:`check_strategy`), ``datasets`` (:func:`check_dataset`,
:func:`check_shift`), ``backbones`` (:func:`check_backbone`), ``reporters`` (:func:`check_reporter`,
:func:`sample_records`), ``validators`` (:func:`check_validator`); the tiny parts in ``tiny``; :func:`run_cli` runs the
command line in a test (``cli``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tlbench.models.transfer import TransferModel
from tlbench.testing.backbones import BACKBONE_CHECK_SIZE, check_backbone
from tlbench.testing.cli import run_cli
from tlbench.testing.datasets import DATASET_CHECK_SIZE, SHIFT_CHECK_SHAPES, check_dataset, check_shift
from tlbench.testing.reporters import check_reporter, sample_records
from tlbench.testing.strategies import VALID_TARGET_VIEWS, apply_engine_trainability, check_strategy, engine_start_step
from tlbench.testing.tiny import (
    TINY_BACKBONE,
    TINY_BATCH_SIZE,
    TINY_BOTTLENECK,
    TINY_CLASSES,
    TINY_IMAGE_SIZE,
    make_tiny_backbone,
    make_tiny_batch,
    make_tiny_model,
)
from tlbench.testing.validators import check_validator, random_inputs
from tlbench.training.strategy import Batch

__all__ = [
    "check_validator",
    "random_inputs",
    "check_strategy",
    "make_tiny_backbone",
    "make_tiny_model",
    "make_tiny_batch",
    "engine_start_step",
    "apply_engine_trainability",
    "VALID_TARGET_VIEWS",
    "check_dataset",
    "check_shift",
    "check_reporter",
    "sample_records",
    "check_backbone",
    "run_cli",
    "BACKBONE_CHECK_SIZE",
    "DATASET_CHECK_SIZE",
    "SHIFT_CHECK_SHAPES",
    "TINY_BACKBONE",
    "TINY_CLASSES",
    "TINY_BOTTLENECK",
    "TINY_IMAGE_SIZE",
    "TINY_BATCH_SIZE",
]


# -- pytest fixtures -------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # the checks above work without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def tiny_backbone() -> nn.Module:
        """timm ``test_efficientnet`` with ``num_classes=0`` (256-d pooled features), seed 0."""
        return make_tiny_backbone()

    @pytest.fixture
    def tiny_model() -> TransferModel:
        """A :class:`TransferModel` on the tiny backbone: 3 classes, 16-unit bottleneck."""
        return make_tiny_model()

    @pytest.fixture
    def tiny_batch_factory() -> Callable[..., Batch]:
        """:func:`make_tiny_batch`: call it with the target views (and size, seed...) you need."""
        return make_tiny_batch
