"""tlbench: benchmark transfer-learning strategies for image classification.

This module is the public API a plugin may import; everything a plugin needs is here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("tlbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from tlbench.data import (
    ClassFolderDataset,
    Dataset,
    Domain,
    DomainSpec,
    Shift,
    array_to_images,
    class_folder_files,
    decode_image_files,
    encode_jpeg_roundtrip,
    files_fingerprint,
    resize_uint8,
)
from tlbench.errors import TlbenchError, UserError, WeightsUnavailableError
from tlbench.hookspecs import hookimpl
from tlbench.launch import Launcher
from tlbench.leaderboard import Footnote, Leaderboard
from tlbench.model import Outputs, TransferModel
from tlbench.reporting import Reporter
from tlbench.results import atomic_write_bytes, atomic_write_text
from tlbench.strategy import Batch, ParamGroup, SetupContext, StepContext, StepOutput, Strategy
from tlbench.weights import WeightSource, load_state_dict_file

__all__ = [
    "__version__",
    "hookimpl",
    # strategies
    "Strategy", "ParamGroup", "Batch", "StepContext", "StepOutput", "SetupContext",
    "TransferModel", "Outputs",
    # data
    "Dataset", "ClassFolderDataset", "Domain", "DomainSpec", "Shift",
    "array_to_images", "class_folder_files", "decode_image_files", "encode_jpeg_roundtrip", "files_fingerprint", "resize_uint8",
    # weights, reports, launchers
    "WeightSource", "load_state_dict_file", "Reporter", "Launcher",
    "Leaderboard", "Footnote", "atomic_write_text", "atomic_write_bytes",
    # errors
    "TlbenchError", "UserError", "WeightsUnavailableError",
]
