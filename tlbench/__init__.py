"""tlbench: benchmark transfer-learning strategies for image classification.

This module is the public API a plugin may import; everything a plugin needs is here. Names are
imported on first use (PEP 562), so ``import tlbench`` (and ``tlbench --help``) does not pay for
torch until a name that needs it is touched. Where each name lives: docs/architecture.md.
"""

# ruff: noqa: F401  (the TYPE_CHECKING block re-exports names for type checkers)
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

try:
    __version__ = _version("tlbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from tlbench.errors import TlbenchError, UserError, WeightsUnavailableError
from tlbench.plugins.hookspecs import hookimpl

#: public name -> the module that defines it
_LAZY: dict[str, str] = {
    # strategies
    **dict.fromkeys(
        (
            "Strategy",
            "ParamGroup",
            "Batch",
            "StepContext",
            "StepOutput",
            "SetupContext",
            "SupervisedParams",
            "Update",
            "JointPass",
            "TargetPass",
        ),
        "tlbench.training.strategy",
    ),
    **dict.fromkeys(("TransferModel", "Outputs"), "tlbench.models.transfer"),
    # data
    **dict.fromkeys(
        (
            "Dataset",
            "Domain",
            "DomainSpec",
            "Shift",
            "array_to_images",
            "decode_image_files",
            "encode_jpeg_roundtrip",
            "files_fingerprint",
            "resize_uint8",
        ),
        "tlbench.data.domains",
    ),
    **dict.fromkeys(("ClassFolderDataset", "class_folder_files", "split_folders"), "tlbench.data.class_folders"),
    # weights, reports, launchers
    **dict.fromkeys(("WeightSource", "load_state_dict_file"), "tlbench.models.weights"),
    **dict.fromkeys(
        ("Backbone", "BackboneProvider", "IMAGENET_MEAN", "IMAGENET_STD", "filter_names"), "tlbench.models.backbones"
    ),
    "Reporter": "tlbench.reporting.reporter",
    "Tracker": "tlbench.reporting.tracker",
    **dict.fromkeys(("Validator", "ValidatorInputs", "softmax", "entropy"), "tlbench.reporting.validator"),
    "Launcher": "tlbench.matrix.launcher",
    # the types the cell hooks and trackers receive
    "Cell": "tlbench.spec.cell",
    "CellRecord": "tlbench.spec.record",
    **dict.fromkeys(("Leaderboard", "Footnote"), "tlbench.reporting.leaderboard"),
    **dict.fromkeys(("atomic_write_text", "atomic_write_bytes", "csv_safe"), "tlbench.data.files"),
}

__all__ = ["__version__", "hookimpl", *_LAZY, "TlbenchError", "UserError", "WeightsUnavailableError"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tlbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from tlbench.data.class_folders import ClassFolderDataset, class_folder_files, split_folders
    from tlbench.data.domains import (
        Dataset,
        Domain,
        DomainSpec,
        Shift,
        array_to_images,
        decode_image_files,
        encode_jpeg_roundtrip,
        files_fingerprint,
        resize_uint8,
    )
    from tlbench.data.files import atomic_write_bytes, atomic_write_text, csv_safe
    from tlbench.matrix.launcher import Launcher
    from tlbench.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneProvider, filter_names
    from tlbench.models.transfer import Outputs, TransferModel
    from tlbench.models.weights import WeightSource, load_state_dict_file
    from tlbench.reporting.leaderboard import Footnote, Leaderboard
    from tlbench.reporting.reporter import Reporter
    from tlbench.reporting.tracker import Tracker
    from tlbench.reporting.validator import Validator, ValidatorInputs, entropy, softmax
    from tlbench.spec.cell import Cell
    from tlbench.spec.record import CellRecord
    from tlbench.training.strategy import (
        Batch,
        JointPass,
        ParamGroup,
        SetupContext,
        StepContext,
        StepOutput,
        Strategy,
        SupervisedParams,
        TargetPass,
        Update,
    )
