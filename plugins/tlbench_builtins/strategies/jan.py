"""``jan``: joint multi-kernel MMD of the bottleneck embedding and the softmax prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl
from tlbench_builtins.strategies.mmd import DEFAULT_ALPHAS, multi_kernel_matrix, progressive_weight

#: tllib's fixed bandwidth of the prediction layer's Gaussian kernel (``GaussianKernel(sigma=0.92)``).
PREDICTION_SIGMA = 0.92


def gaussian_kernel_matrix(z: Tensor, sigma: float) -> Tensor:
    """``exp(-||zi - zj||^2 / (2 sigma^2))`` over all pairs of ``z``, with a fixed bandwidth ``sigma``."""
    sq_dist = (z.unsqueeze(0) - z.unsqueeze(1)).pow(2).sum(-1)
    return torch.exp(-sq_dist / (2.0 * sigma * sigma))


def jmmd_from_kernel(k: Tensor, n: int, *, linear: bool = False) -> Tensor:
    """tllib's JMMD estimate from the joint kernel matrix ``k`` of ``n`` source rows then the target rows.

    ``linear=False`` (tllib's index matrix for the quadratic case), with ``m`` target rows::

        sum_{i!=j} k(si,sj) / (n(n-1)) + sum_{i!=j} k(ti,tj) / (m(m-1)) - 2 sum_{i,j} k(si,tj) / (nm)
        + 1/(n-1) + 1/(m-1)

    the unbiased estimate MMD²_u plus a constant (tllib adds ``2 / (n - 1)`` "to make up for the
    diagonal", its ``n == m`` case of the last line): an estimate of the joint MMD biased by
    exactly that constant, which moves no gradient. ``linear=True``: tllib's cyclic pairing, the
    mean over ``i`` of ``k(si,si+1) + k(ti,ti+1) - k(si,ti+1) - k(si+1,ti)`` (mod n), plus the same
    ``2 / (n - 1)``; it needs ``n == m`` (as in tllib, whose batches are equal).
    """
    m = len(k) - n
    if n < 2 or m < 2:
        raise ValueError(f"jmmd needs at least 2 samples on each side, got {n} and {m}")
    if linear:
        if n != m:
            raise ValueError(f"the linear jmmd estimate needs as many source as target samples, got {n} and {m}")
        i = torch.arange(n, device=k.device)
        j = (i + 1) % n
        return (k[i, j] + k[n + i, n + j] - k[i, n + j] - k[j, n + i]).mean() + 2.0 / (n - 1)
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]
    return (
        (kss.sum() - kss.diagonal().sum()) / (n * (n - 1))
        + (ktt.sum() - ktt.diagonal().sum()) / (m * (m - 1))
        - 2.0 * kst.mean()
        + 1.0 / (n - 1)
        + 1.0 / (m - 1)
    )


def jmmd(
    embedding_s: Tensor,
    embedding_t: Tensor,
    prob_s: Tensor,
    prob_t: Tensor,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    sigma: float = PREDICTION_SIGMA,
    *,
    linear: bool = False,
) -> Tensor:
    """Joint MMD of (embedding, prediction) between source and target, computed in float32.

    The joint kernel is the elementwise product of the embedding's multi-kernel matrix (tlbench's
    ``mmd``: Gaussians at ``alphas`` times the batch's detached mean squared distance, summed) and
    the predictions' one Gaussian of fixed bandwidth ``sigma``; see :func:`jmmd_from_kernel`.
    With ``linear`` unequal batches are cut to the smaller one, as ``mmd`` does.
    """
    with torch.autocast(device_type=embedding_s.device.type, enabled=False):
        if linear:
            n = min(len(embedding_s), len(embedding_t))
            embedding_s, embedding_t, prob_s, prob_t = embedding_s[:n], embedding_t[:n], prob_s[:n], prob_t[:n]
        embedding = torch.cat([embedding_s, embedding_t]).float()
        prob = torch.cat([prob_s, prob_t]).float()
        k = multi_kernel_matrix(embedding, alphas) * gaussian_kernel_matrix(prob, sigma)
        return jmmd_from_kernel(k, len(embedding_s), linear=linear)


class Jan(Strategy):
    """JAN: align the joint distribution of embeddings and predictions with a joint multi-kernel MMD.

    Long, Zhu, Wang and Jordan, "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017;
    reference implementation tllib (thuml/Transfer-Learning-Library) ``tllib/alignment/jan.py``
    (``JointMultipleKernelMaximumMeanDiscrepancy``, with ``tllib/alignment/dan.py``'s index matrix
    and ``tllib/modules/kernels.py``) and ``examples/domain_adaptation/image_classification/jan.py``.

    Source and target images go through the model as one batch. Loss = CE(source) + λ * JMMD,
    the joint MMD over two layers, the bottleneck embedding ``z`` and the softmax prediction
    ``ŷ``: the joint kernel is the product ``k((z,ŷ),(z',ŷ')) = k_z(z,z') * k_ŷ(ŷ,ŷ')``, with
    ``k_z`` the sum of five Gaussians of bandwidth² ``alphas`` (2^-3 .. 2^1) times the batch's
    mean squared distance (detached; tlbench's ``mmd`` kernel) and ``k_ŷ`` one Gaussian of fixed
    ``sigma`` 0.92. The estimate is tllib's: the unbiased quadratic-time MMD²_u plus the constant
    ``2 / (n - 1)`` tllib adds, so it is biased by that constant (no gradient). Gradients reach the
    classifier through the predictions, which are not detached (as in tllib). λ is ``trade_off``,
    constant as in tllib; ``ramp: true`` raises it from 0 with ``2 / (1 + exp(-10 p)) - 1`` (p the
    fraction of training done) as the paper does (and tlbench's ``mmd`` by default, measured for
    DAN only; this default follows tllib, JAN's ramp is unmeasured here).

    Differences from tllib: its JAN bottleneck ends with Dropout(0.5), tlbench's TransferModel has
    none; the adversarial variant JAN-A (tllib's ``--adversarial``, ``Theta`` layers trained through
    gradient reversal) is not offered; unequal source and target batches use ``n`` and ``m`` in the
    quadratic estimate (tllib assumes them equal). tllib's digits recipe (jan.sh "# Digits")
    changes no parameter of this strategy: only the recipe (lr 0.01, 0.1 on USPS→MNIST, 0.03 on
    SVHN→MNIST; batch 128; 2,500 iterations per epoch; LeNet/DTN from scratch).

    Parameters:
        trade_off (1.0): weight λ of the JMMD term (tllib's ``--trade-off`` default).
        ramp (False): ramp the weight up with the schedule above (the paper's); False keeps it
            constant (tllib's).
        linear (False): use the linear-time estimate instead of the quadratic one (tllib's
            ``--linear``, off by default).
        alphas ((0.125, 0.25, 0.5, 1.0, 2.0)): bandwidth multipliers of the embedding's Gaussian
            kernels (tllib's ``GaussianKernel(alpha=2 ** k)`` for k = -3 .. 1).
        sigma (0.92): bandwidth of the prediction layer's Gaussian kernel (tllib's fixed 0.92).
    """

    @dataclass
    class Params:
        trade_off: float = 1.0
        ramp: bool = False
        linear: bool = False
        alphas: tuple[float, ...] = DEFAULT_ALPHAS
        sigma: float = PREDICTION_SIGMA

        def __post_init__(self) -> None:
            self.alphas = tuple(float(a) for a in self.alphas)
            if self.trade_off < 0:
                raise UserError(f"jan: params.trade_off must be >= 0, got {self.trade_off}")
            if not self.alphas or min(self.alphas) <= 0:
                raise UserError(
                    f"jan: params.alphas must be a non-empty list of positive bandwidth "
                    f"multipliers, got {list(self.alphas)}"
                )
            if self.sigma <= 0:
                raise UserError(f"jan: params.sigma must be a positive bandwidth (tllib's is 0.92), got {self.sigma}")

    name = "jan"
    protocols = ("uda",)  # it aligns a source with a target domain: fine-tuning has one domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        out, n_source = joint.outputs, joint.n_source
        prob = F.softmax(out.logits.float(), dim=1)
        transfer = jmmd(
            out.embedding[:n_source],
            out.embedding[n_source:],
            prob[:n_source],
            prob[n_source:],
            self.params.alphas,
            self.params.sigma,
            linear=self.params.linear,
        )
        weight = self.params.trade_off * (progressive_weight(ctx.progress) if self.params.ramp else 1.0)
        loss = joint.source_ce + weight * transfer
        return StepOutput(
            loss,
            {
                "source_ce": joint.source_ce.detach(),
                "source_acc": joint.source_acc,
                "jmmd": transfer.detach(),
                "jmmd_weight": weight,
            },
        )


@hookimpl
def register_strategies(register):
    register(Jan)
