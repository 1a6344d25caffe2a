"""``mmd``: DAN, multi-kernel maximum mean discrepancy between source and target embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl

#: Bandwidth multipliers of the five Gaussian kernels: 2^-3 .. 2^1 (DAN / tllib).
DEFAULT_ALPHAS: tuple[float, ...] = (2.0**-3, 2.0**-2, 2.0**-1, 2.0**0, 2.0**1)


def multi_kernel_matrix(z: Tensor, alphas: Sequence[float] = DEFAULT_ALPHAS) -> Tensor:
    """Sum of Gaussian kernels ``exp(-||zi - zj||^2 / (2 * alpha * mean_sq_dist))`` over ``alphas``.

    The bandwidth scale is the mean squared distance over all pairs of ``z`` (diagonal included),
    detached, as tllib's ``GaussianKernel(track_running_stats=True)`` does.
    """
    sq_dist = (z.unsqueeze(0) - z.unsqueeze(1)).pow(2).sum(-1)
    scale = sq_dist.detach().mean().clamp_min(torch.finfo(sq_dist.dtype).tiny)
    # a tensor, not sum()'s start value 0, for the non-empty alphas that Params requires
    return cast(Tensor, sum(torch.exp(-sq_dist / (2.0 * a * scale)) for a in alphas))


def mk_mmd(x: Tensor, y: Tensor, alphas: Sequence[float] = DEFAULT_ALPHAS, *, linear: bool = False) -> Tensor:
    """Multi-kernel MMD² between samples ``x`` (n×E) and ``y`` (m×E), computed in float32.

    ``linear=False``: the unbiased quadratic-time estimate (MMD²_u of Gretton et al. 2012, JMLR)::

        sum_{i!=j} k(xi,xj) / (n(n-1)) + sum_{i!=j} k(yi,yj) / (m(m-1)) - 2 sum_{i,j} k(xi,yj) / (nm)

    It is ~0 (and may be slightly negative) when both samples come from one distribution.
    ``linear=True``: the linear-time estimate in tllib's cyclic pairing, the mean over ``i`` of
    ``k(xi,xi+1) + k(yi,yi+1) - k(xi,yi+1) - k(xi+1,yi)`` (indices mod n; needs n == m, so the
    larger sample is truncated), also unbiased but noisier.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        if linear:
            n = min(len(x), len(y))
            x, y = x[:n], y[:n]
        n, m = len(x), len(y)
        if n < 2 or m < 2:
            raise ValueError(f"mk_mmd needs at least 2 samples on each side, got {n} and {m}")
        k = multi_kernel_matrix(torch.cat([x, y]), alphas)
        if linear:
            i = torch.arange(n, device=k.device)
            j = (i + 1) % n
            h = k[i, j] + k[n + i, n + j] - k[i, n + j] - k[j, n + i]
            return h.mean()
        kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
        return (
            (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2.0 * kxy.mean()
        )


def progressive_weight(progress: float, gamma: float = 10.0) -> float:
    """``2 / (1 + exp(-gamma * p)) - 1``: 0 at the start of training, close to 1 from p ≈ 0.5 on."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class Mmd(Strategy):
    """DAN: align the domains' embeddings with a multi-kernel MMD penalty (Long et al. 2015).

    Long et al. 2015, ICML, "Learning Transferable Features with Deep Adaptation Networks".

    Source and target images go through the model as one batch; the multi-kernel MMD between the
    source and target bottleneck embeddings is minimised along with the source cross-entropy:
    loss = CE(source) + λ(p) * MK-MMD², where λ rises from 0 to ``trade_off`` along the progressive
    schedule ``2 / (1 + exp(-10 p)) - 1`` (p = fraction of training done) that Long et al. use for
    their MMD-based successor JAN (ICML 2017) after DANN: early in training the embeddings are not
    yet discriminative, and pulling the two domains together then mostly destroys class structure
    (measured here on digits with a short schedule; ``ramp: false`` gives the constant weight of
    DAN's paper and tllib's implementation). The kernel is a sum of five Gaussians whose
    bandwidths are ``alphas`` (2^-3 .. 2^1) times the batch's mean pairwise squared distance
    (tllib's ``MultipleKernelMaximumMeanDiscrepancy`` convention, with equal kernel weights).

    Parameters:
        trade_off (1.0): weight of the MMD term at the end of the ramp (tllib's default).
        ramp (True): ramp the weight up with the progressive schedule above; False keeps it constant.
        linear (False): use the linear-time estimate instead of the unbiased quadratic-time one
            (tllib's default is quadratic; DAN's paper used the linear-time one for SGD).
        alphas ((0.125, 0.25, 0.5, 1.0, 2.0)): bandwidth multipliers of the Gaussian kernels.
    """

    @dataclass
    class Params:
        trade_off: float = 1.0
        ramp: bool = True
        linear: bool = False
        alphas: tuple[float, ...] = DEFAULT_ALPHAS

        def __post_init__(self) -> None:
            self.alphas = tuple(float(a) for a in self.alphas)
            if not self.alphas or min(self.alphas) <= 0:
                raise UserError(
                    f"mmd: params.alphas must be a non-empty list of positive bandwidth "
                    f"multipliers, got {list(self.alphas)}"
                )

    name = "mmd"
    protocols = ("uda",)  # it aligns a source with a target domain: fine-tuning has one domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        transfer = mk_mmd(joint.source_embedding, joint.target_embedding, self.params.alphas, linear=self.params.linear)
        weight = self.params.trade_off * (progressive_weight(ctx.progress) if self.params.ramp else 1.0)
        loss = joint.source_ce + weight * transfer
        return StepOutput(
            loss,
            {
                "source_ce": joint.source_ce.detach(),
                "source_acc": joint.source_acc,
                "mmd": transfer.detach(),
                "mmd_weight": weight,
            },
        )


@hookimpl
def register_strategies(register):
    register(Mmd)
