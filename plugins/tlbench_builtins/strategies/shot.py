"""``shot`` and ``shot_im``: source hypothesis transfer, adapting a source model without the source data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import (
    Batch,
    ParamGroup,
    SetupContext,
    StepContext,
    StepOutput,
    Strategy,
    TargetPass,
    TransferModel,
    UserError,
    hookimpl,
)


def information_maximization(logits: Tensor, epsilon: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """SHOT's information-maximisation loss ``L_ent - L_div`` and its two terms (Liang et al. 2020, Eq. 2-3).

    ``L_ent`` is the mean entropy of the predictions (each confident), ``L_div`` the entropy of
    their mean (all classes used): ``-sum_k p̄_k log(p̄_k + ε)``. Entropies are taken as
    ``-sum p log(p + ε)``, as the authors' ``loss.Entropy`` does.
    """
    p = F.softmax(logits, dim=1)
    ent = -(p * torch.log(p + epsilon)).sum(dim=1).mean()
    mean_p = p.mean(dim=0)
    div = -(mean_p * torch.log(mean_p + epsilon)).sum()
    return ent - div, ent, div


def clustering_pseudo_labels(
    probs: Tensor,
    features: Tensor,
    threshold: int = 0,
    distance: Literal["cosine", "euclidean"] = "cosine",
    rounds: int = 2,
) -> Tensor:
    """SHOT's self-supervised pseudo-labels (Liang et al. 2020, Eq. 4-6; ``obtain_label`` in tim-learn/SHOT).

    Class centroids are first the prediction-weighted means of the target features
    (``c_k = sum_x p_k(x) f(x) / sum_x p_k(x)``); each image takes the nearest centroid's class;
    then, ``rounds - 1`` times, the centroids are the means of the images so labelled and the
    labels are taken again. Only classes predicted for more than ``threshold`` images keep a
    centroid. With ``cosine`` a constant 1 is appended to each feature and features are
    L2-normalised (the authors' code), and distance is one minus cosine similarity. Computed in
    float64, so that a tie is not decided by rounding.
    """
    k = probs.shape[1]
    feats = features.double()
    if distance == "cosine":
        feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype, device=feats.device)], dim=1)
        feats = feats / feats.norm(dim=1, keepdim=True)
    weights = probs.double()
    predict = probs.argmax(dim=1)
    for _ in range(rounds):
        centroids = weights.T @ feats / (1e-8 + weights.sum(dim=0)[:, None])
        kept = torch.nonzero(torch.bincount(predict, minlength=k) > threshold).squeeze(1)
        centres = centroids[kept]
        if distance == "cosine":
            dist = 1 - (feats @ centres.T) / centres.norm(dim=1)[None, :].clamp_min(1e-12)
        else:
            dist = torch.cdist(feats, centres)
        predict = kept[dist.argmin(dim=1)]
        weights = F.one_hot(predict, k).double()
    return predict


class Shot(Strategy):
    """SHOT: the source classifier frozen, the feature extractor adapted to the target (Liang et al. 2020).

    Liang, Hu & Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
    Unsupervised Domain Adaptation", ICML 2020. Reference implementation (defaults):
    tim-learn/SHOT, ``object/image_target.py``.

    A source-free method (protocol ``source_free``): the source model is this cell's teacher, a
    ``source_only`` cell of the same backbone, pair and seed trained on the labelled source
    (with label smoothing 0.1, as SHOT's ``image_source.py``) that the runner trains once and
    every source-free cell of the pair and seed shares. The cell starts as a copy of it and sees
    unlabelled target images only. The classifier (the source hypothesis) never trains; the
    backbone (at ``backbone_lr_scale``, SHOT's 0.1) and the bottleneck minimise

        ``ent_par * (L_ent - L_div) + cls_par * CE(logits, pseudo-labels)``

    (:func:`information_maximization`; pseudo-labels by :func:`clustering_pseudo_labels` on the
    embeddings of every target image, recomputed ``interval`` times over training: the engine's
    whole-target pass, ``Strategy.target_refreshes``). ``shot_im`` is the same with ``cls_par: 0``.

    Differences from the reference: tlbench's head (bottleneck Linear-BN-ReLU, plain linear
    classifier) instead of SHOT's Linear-BN bottleneck and weight-normalised classifier; the
    source model trains with the suite's recipe, not SHOT's source schedule.

    Parameters:
        teacher_strategy ("source_only"): the registered strategy that trains the source model.
        teacher_params ({label_smoothing: 0.1}): its parameters.
        cls_par (0.3): weight of the pseudo-label cross-entropy (0 gives SHOT-IM).
        ent_par (1.0): weight of the information-maximisation loss.
        epsilon (1e-5): inside the entropies' logarithms.
        interval (15): how many times over training the pseudo-labels are recomputed.
        threshold (0): a class keeps a centroid when more than this many images are predicted as it.
        distance ("cosine"): ``cosine`` or ``euclidean``, for the centroids.
    """

    @dataclass
    class Params:
        teacher_strategy: str = "source_only"
        teacher_params: dict[str, Any] = field(default_factory=lambda: {"label_smoothing": 0.1})
        cls_par: float = 0.3
        ent_par: float = 1.0
        epsilon: float = 1e-5
        interval: int = 15
        threshold: int = 0
        distance: Literal["cosine", "euclidean"] = "cosine"

        def __post_init__(self) -> None:
            if self.cls_par < 0 or self.ent_par < 0:
                raise UserError(f"shot: params.cls_par and ent_par must be >= 0, got {self.cls_par}, {self.ent_par}")
            if self.interval < 1:
                raise UserError(f"shot: params.interval must be a positive count, got {self.interval}")

    name = "shot"
    protocols = ("source_free",)
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: at trainable head, the bottleneck alone adapts
    needs_teacher = True
    teacher_in_steps = False  # the source model only initialises the cell: features can be served

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        if ctx.teacher is None:
            raise UserError(f"{self.name} needs its trained source model (the teacher cell); none was given")
        model.load_state_dict(ctx.teacher.state_dict())  # the cell starts as the source model
        self.pseudo_labels: Tensor | None = None

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        """The feature extractor (backbone and bottleneck); the classifier, the source hypothesis, stays."""
        return [
            ParamGroup("backbone", list(model.backbone.parameters()), lr_scale=model.backbone_lr_scale),
            ParamGroup("bottleneck", list(model.bottleneck.parameters())),
        ]

    @property
    def target_refreshes(self) -> int:
        return self.params.interval if self.params.cls_par > 0 else 0

    def refresh(self, target: TargetPass, ctx: StepContext) -> None:
        probs = F.softmax(target.logits.float(), dim=1)
        self.pseudo_labels = clustering_pseudo_labels(
            probs, target.embedding, self.params.threshold, self.params.distance
        )

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        if batch.target is None or batch.target_index is None:
            raise ValueError(f"{self.name} needs target images: the batch has no 'weak' target view")
        logits = ctx.model(batch.target)
        im, ent, div = information_maximization(logits.float(), self.params.epsilon)
        loss = self.params.ent_par * im
        metrics: dict[str, Tensor | float] = {"entropy": ent.detach(), "diversity": div.detach()}
        if self.params.cls_par > 0:
            if self.pseudo_labels is None:
                raise RuntimeError(f"{self.name}: no pseudo-labels before the first step (the engine refreshes them)")
            pseudo = self.pseudo_labels[batch.target_index]
            ce = F.cross_entropy(logits, pseudo)
            loss = loss + self.params.cls_par * ce
            metrics["pseudo_ce"] = ce.detach()
            if ctx.score_pseudo_labels is not None:
                ctx.score_pseudo_labels(batch.target_index, pseudo, torch.ones_like(pseudo, dtype=torch.bool))
        return StepOutput(loss, metrics)


class ShotIm(Shot):
    """SHOT-IM: SHOT without its pseudo-labels, information maximisation alone (Liang et al. 2020, Table 6).

    The ``shot`` strategy with ``cls_par: 0`` by default (its other parameters as ``shot``'s).
    """

    @dataclass
    class Params(Shot.Params):
        cls_par: float = 0.0

    name = "shot_im"


@hookimpl
def register_strategies(register):
    register(Shot)
    register(ShotIm)
