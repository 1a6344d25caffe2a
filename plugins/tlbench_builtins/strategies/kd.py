"""``kd``: knowledge distillation from a trained teacher cell into the student backbone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, summed over classes, averaged over images.

    The ``T²`` factor keeps the soft-target gradients on the scale of a hard-label loss when the
    temperature changes (Hinton et al. 2015). Computed in float32.
    """
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (T * T)


class KnowledgeDistillation(Strategy):
    """Knowledge distillation: a student learns a domain-adapted teacher's soft labels (Hinton et al. 2015).

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", used here to
    transfer a domain-adapted teacher into a (typically smaller) student.

    The runner first trains the teacher cell (backbone ``teacher_backbone``, strategy
    ``teacher_strategy`` with ``teacher_params``, same domain pair and seed) and passes it, in eval
    mode, as ``ctx.teacher``. Each step runs teacher (no gradient) and student on the source and
    the weakly augmented target images; loss = ``alpha`` * T² * KL(teacher ‖ student at
    temperature T) over source and target images + (1 - ``alpha``) * CE(source labels).
    Under protocol ``finetune`` the teacher (typically a larger ``teacher_backbone`` with
    ``teacher_strategy: source_only``) is fine-tuned on the same task, budget and seed, and the
    "target" images are the task's unlabelled training images: the deployment recipe of
    distilling a large fine-tuned model into a small one.

    The teacher never trains, so its work can be done once: with ``teacher_views`` K > 0 the engine
    draws K fixed augmented views (random resized crop and flip) of every image, computes the
    teacher's logits on them once, caches them, and each step serves the student one of those
    views with the teacher's logits (FKD: Shen & Xing, ECCV 2022). Every student, seed and run
    distilling from the same trained teacher reuses them. The student then sees K views of an
    image instead of a fresh crop each time: less augmentation on long schedules (Beyer et al.,
    CVPR 2022, find consistent online teaching best), hence off by default.

    Parameters:
        teacher_backbone (""): timm name of the teacher's backbone; empty means the student's own.
        teacher_strategy ("dann"): the registered strategy that trains the teacher.
        teacher_params ({}): parameters of the teacher's strategy (its defaults when empty).
        alpha (0.5): weight of the distillation term; 1 - alpha weighs the source cross-entropy.
        temperature (4.0): softmax temperature T of both teacher and student in the KL term.
        teacher_views (0): 0 runs the teacher on every batch (Hinton et al.); K > 0 precomputes
            and caches its logits on K fixed augmented views per image (FKD), as described above.
    """

    @dataclass
    class Params:
        teacher_backbone: str = ""
        teacher_strategy: str = "dann"
        teacher_params: dict[str, Any] = field(default_factory=dict)
        alpha: float = 0.5
        temperature: float = 4.0
        teacher_views: int = 0

        def __post_init__(self) -> None:
            if self.teacher_views < 0:
                raise UserError(
                    f"kd: params.teacher_views must be 0 (teacher runs every step) or a "
                    f"positive number of cached views per image, got {self.teacher_views}"
                )
            if not 0.0 <= self.alpha <= 1.0:
                raise UserError(f"kd: params.alpha must lie in [0, 1], got {self.alpha}")
            if self.temperature <= 0:
                raise UserError(f"kd: params.temperature must be positive, got {self.temperature}")
            if not isinstance(self.teacher_params, dict):
                raise UserError(f"kd: params.teacher_params must be a mapping, got {self.teacher_params!r}")

    name = "kd"
    protocols = ("uda", "finetune")
    target_views = ("weak",)
    trains_backbone = True
    needs_teacher = True

    @property
    def teacher_views(self) -> int:
        return self.params.teacher_views

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        if ctx.teacher is None:
            raise ValueError(
                "kd needs a trained teacher: ctx.teacher is None (the runner trains the "
                "teacher cell first; check params.teacher_strategy)"
            )
        if batch.target is None:
            raise ValueError("kd needs target images: the batch has no 'weak' target view")
        n_source = len(batch.source)
        x = torch.cat([batch.source, batch.target])
        if batch.source_teacher is not None and batch.target_teacher is not None:
            teacher_logits = torch.cat([batch.source_teacher, batch.target_teacher])  # served from the cache
        else:
            with torch.no_grad():
                teacher_logits = ctx.teacher(x)
        student_logits = ctx.model(x)
        distill = distillation_loss(student_logits, teacher_logits, self.params.temperature)
        logits_s = student_logits[:n_source]
        cls_loss = F.cross_entropy(logits_s, batch.source_labels)
        loss = self.params.alpha * distill + (1.0 - self.params.alpha) * cls_loss
        with torch.no_grad():
            source_acc = (logits_s.argmax(1) == batch.source_labels).float().mean()
            agreement = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        return StepOutput(
            loss,
            {
                "source_ce": cls_loss.detach(),
                "source_acc": source_acc,
                "distill": distill.detach(),
                "teacher_agreement": agreement,
            },
        )


@hookimpl
def register_strategies(register):
    register(KnowledgeDistillation)
