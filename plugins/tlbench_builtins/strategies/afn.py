"""``afn``: Adaptive Feature Norm, enlarging the embeddings' norms step by step on both domains."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl

#: the constant TLlib's ``tllib.modules.entropy.entropy`` adds inside the log
ENTROPY_EPS = 1e-5


def stepwise_norm_loss(h: Tensor, delta: float = 1.0) -> Tensor:
    """SAFN's norm loss of features ``h`` (N×E): ``mean_i (||h_i|| - (||h_i||.detach() + delta))^2``.

    The target radius is each feature's current norm, detached, plus ``delta``: the value is
    always ``delta^2``, and the gradient with respect to ``h_i`` is ``-2 delta h_i / (N ||h_i||)``,
    a push of every feature outward along its own direction by a step proportional to ``delta``
    (0 for a zero feature). Computed in float32.
    """
    norms = h.float().norm(p=2, dim=1)
    return (norms - (norms.detach() + delta)).pow(2).mean()


def prediction_entropy(logits: Tensor) -> Tensor:
    """Mean entropy of ``softmax(logits)``, ``-sum_c p_c log(p_c + 1e-5)`` per row (TLlib's ``entropy``)."""
    p = F.softmax(logits.float(), dim=1)
    return -(p * (p + ENTROPY_EPS).log()).sum(dim=1).mean()


def l2_preserving_dropout(h: Tensor, p: float, training: bool) -> Tensor:
    """Dropout whose kept units are scaled by ``1 / sqrt(1 - p)`` instead of ``1 / (1 - p)``.

    It keeps the expected squared L2 norm of ``h`` (AFN's "L2-preserved dropout", TLlib's AFN
    ``Block``): ordinary dropout, then a factor ``sqrt(1 - p)``, in training only.
    """
    if not training or p == 0.0:
        return h
    return F.dropout(h, p, training=True) * math.sqrt(1.0 - p)


class Afn(Strategy):
    """AFN: enlarge the embeddings' norms step by step on both domains (Xu et al. 2019, SAFN).

    Xu, Li, Yang and Lin, "Larger Norm More Transferable: An Adaptive Feature Norm Approach for
    Unsupervised Domain Adaptation", ICCV 2019; implementation after TLlib's
    ``tllib/normalization/afn.py`` (``AdaptiveFeatureNorm``, ``Block``) and
    ``examples/domain_adaptation/image_classification/afn.py``.

    The stepwise adaptive feature norm (SAFN): for features ``h`` the norm loss is
    ``mean_i (||h_i|| - (||h_i||.detach() + delta))^2`` (:func:`stepwise_norm_loss`), which moves
    each feature's norm up by a step towards its current norm plus ``delta``. Loss = CE(source) +
    ``trade_off_norm`` * (L_norm(h_source) + L_norm(h_target)) + ``trade_off_entropy`` *
    mean entropy of the target predictions. In tlbench ``h`` is the bottleneck embedding after an
    L2-preserving dropout (:func:`l2_preserving_dropout`, ``dropout``), and the logits are the
    classifier applied to that ``h``: TLlib's AFN head is a ``Block`` (Linear–BN–ReLU–dropout,
    1000 units) whose output feeds both the norm loss and the classifier, and tlbench's bottleneck
    is the same Linear–BN–ReLU without the dropout, which the strategy adds (in training only; a
    test forward has none, as in TLlib). As TLlib does, source and target images go through the
    model in two separate forward passes (each BatchNorm sees one domain's batch).

    Differences from TLlib: the bottleneck width is the recipe's ``bottleneck_dim`` (TLlib's AFN
    default 1000); TLlib initialises the bottleneck and classifier with N(0, 0.01) weights
    (BatchNorm weights N(1, 0.01)), tlbench keeps the model's own initialisation; TLlib's
    ``--trade-off-entropy`` default is None (off), here 0.0.

    TLlib's AFN recipe (``afn.py`` argparse; a suite's ``recipe``, not parameters): SGD lr 0.001
    for every layer (``backbone_lr_scale: 1.0``), constant (``lr_gamma: 0``), weight decay 5e-4,
    momentum 0.9 on the bottleneck and classifier and none on the backbone (tlbench has one
    momentum for all groups), no Nesterov, batch 32, 20 epochs of 500 iterations
    (``steps: 10000``), ``bottleneck_dim: 1000``. Its digits line (``afn.sh``, MNIST→USPS, LeNet
    from scratch) uses ``delta`` 0.3 (TLlib's ``-r``), ``trade_off_entropy`` 0.03, lr 0.01, batch
    128 and 20 epochs of 2500 iterations (USPS→MNIST and SVHN→MNIST: ``delta`` 0.1).

    Parameters:
        trade_off_norm (0.05): weight of the norm loss (TLlib's ``--trade-off-norm`` default; its
            DomainNet lines use 0.01).
        delta (1.0): the step ``Δr`` by which each feature's target norm exceeds its current one
            (TLlib's ``-r/--delta`` default; its VisDA-2017 and MNIST→USPS lines use 0.3).
        trade_off_entropy (0.0): weight of the entropy of the target predictions (TLlib's
            default None, i.e. off; its Office-31 lines use 0.1, its digits lines 0.03).
        dropout (0.5): L2-preserving dropout probability on the embedding before the norm loss
            and the classifier (TLlib's ``--dropout-p`` default in its AFN ``Block``); 0 turns it off.
    """

    @dataclass
    class Params:
        trade_off_norm: float = 0.05
        delta: float = 1.0
        trade_off_entropy: float = 0.0
        dropout: float = 0.5

        def __post_init__(self) -> None:
            if self.trade_off_norm < 0:
                raise UserError(f"afn: params.trade_off_norm must be >= 0, got {self.trade_off_norm}")
            if self.delta <= 0:
                raise UserError(f"afn: params.delta must be > 0 (the norm's step), got {self.delta}")
            if self.trade_off_entropy < 0:
                raise UserError(f"afn: params.trade_off_entropy must be >= 0, got {self.trade_off_entropy}")
            if not 0.0 <= self.dropout < 1.0:
                raise UserError(f"afn: params.dropout must lie in [0, 1), got {self.dropout}")

    name = "afn"
    protocols = ("uda",)  # its norm and entropy terms use an unlabelled target domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def _features_and_logits(self, x: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """The embedding after the L2-preserving dropout, and the classifier's logits on it."""
        out = ctx.model.forward_all(x)
        if self.params.dropout == 0.0 or not ctx.model.training:
            return out.embedding, out.logits
        h = l2_preserving_dropout(out.embedding, self.params.dropout, training=True)
        return h, ctx.model.classifier(h)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        if batch.target is None:
            raise ValueError("afn needs target images: the batch has no 'weak' target view")
        h_s, logits_s = self._features_and_logits(batch.source, ctx)
        h_t, logits_t = self._features_and_logits(batch.target, ctx)
        cls_loss = F.cross_entropy(logits_s, batch.source_labels)
        norm_loss = stepwise_norm_loss(h_s, self.params.delta) + stepwise_norm_loss(h_t, self.params.delta)
        entropy = prediction_entropy(logits_t)
        loss = cls_loss + self.params.trade_off_norm * norm_loss
        if self.params.trade_off_entropy > 0:
            loss = loss + self.params.trade_off_entropy * entropy
        source_acc = (logits_s.detach().argmax(1) == batch.source_labels).float().mean()
        return StepOutput(
            loss,
            {
                "source_ce": cls_loss.detach(),
                "source_acc": source_acc,
                "source_norm": h_s.detach().float().norm(p=2, dim=1).mean(),
                "target_norm": h_t.detach().float().norm(p=2, dim=1).mean(),
                "target_entropy": entropy.detach(),
            },
        )


@hookimpl
def register_strategies(register):
    register(Afn)
