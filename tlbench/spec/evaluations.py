"""Checkpoint evaluations: what validators need from a cell, kept with its record (never the weights).

At each of a cell's ``recipe.eval_points`` checkpoints the engine stores the model's outputs on the
target's checkpoint images (every one up to ``recipe.eval_points_images``, else a fixed random subset:
:func:`tlbench.training.checkpoints.checkpoint_subset`) and on the source's held-out split: logits, and
embeddings (the classifier's input) projected to at most :data:`STORED_EMBED_DIM` dimensions by a fixed random
projection (Johnson and Lindenstrauss: distances and angles are kept up to a small distortion), in float16. Office-31's
largest domain (2,817 images) at five points is about 3 MB. The source labels of the held-out split
are kept; the target labels are **not**: the only trace of them is ``target_acc``, the accuracy at each
point, the oracle that validator tables measure against (for reference, never for selection).

The file is ``cells/<id>/evaluations.npz`` (numpy's format: arrays only, read with
``allow_pickle=False``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

#: embeddings wider than this are stored through a fixed random projection to this many dimensions
STORED_EMBED_DIM = 64
#: the seed of that projection: the same in every cell and at every checkpoint
PROJECTION_SEED = 0
_ARRAYS = ("steps", "target_acc", "target_logits", "target_embed", "source_logits", "source_embed", "source_labels")


@dataclass
class CheckpointEvaluations:
    """K checkpoints of one cell. ``steps[k]``: steps done; ``target_acc[k]``: accuracy (%) on the target
    (the oracle, computed with target labels); the rest as the module says, (K, N, ·) each."""

    steps: np.ndarray  # (K,) int64
    target_acc: np.ndarray  # (K,) float64, percent
    target_logits: np.ndarray  # (K, Nt, C) float16
    target_embed: np.ndarray  # (K, Nt, d) float16
    source_logits: np.ndarray  # (K, Ns, C) float16 (Ns = 0 without a held-out split)
    source_embed: np.ndarray  # (K, Ns, d) float16
    source_labels: np.ndarray  # (Ns,) int64

    def __len__(self) -> int:
        return len(self.steps)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{name: getattr(self, name) for name in _ARRAYS})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CheckpointEvaluations:
        """The evaluations ``to_bytes`` wrote; ``ValueError`` for a file of another shape."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {name: z[name] for name in _ARRAYS}
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"not a checkpoint-evaluations file ({exc})") from None
        k = len(arrays["steps"])
        if any(len(arrays[n]) != k for n in _ARRAYS if n != "source_labels"):
            raise ValueError("checkpoint arrays disagree on the number of checkpoints")
        return cls(**arrays)


def projection(dim: int) -> np.ndarray | None:
    """The fixed (dim × STORED_EMBED_DIM) Gaussian projection, or None when ``dim`` is small enough."""
    if dim <= STORED_EMBED_DIM:
        return None
    rng = np.random.default_rng(PROJECTION_SEED)
    return (rng.standard_normal((dim, STORED_EMBED_DIM)) / np.sqrt(STORED_EMBED_DIM)).astype(np.float32)


def compact_embeddings(embed: np.ndarray) -> np.ndarray:
    """Embeddings (N × E, float32) as stored: projected when wide, float16."""
    proj = projection(embed.shape[1])
    return (embed if proj is None else embed @ proj).astype(np.float16)
