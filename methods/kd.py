"""``kd``: knowledge distillation. The plain model of the run's preset (the student) learns from the
trained large model (the teacher, shared with pruning and low-rank through the model cache):

    loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))
           + hidden_weight * MSE(P(student.embed(x)), teacher.embed(x))

on logits s (student) and t (teacher), with an optional hidden-state term through a learned linear
projection P (trained with the student, not deployed). The deployed model is the plain student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.measure import costs
from bench.method import FINETUNE_FIELDS, Method
from bench.registry import METHODS, param
from bench.training.splits import class_weights

__all__ = ["KD", "KDParams", "distillation_loss", "distillation_objective"]


@dataclass
class KDParams:
    temperature: float = param(4.0, "T: softens both distributions in the KL term", low=0.0, low_exclusive=True,
                               high=100.0, log=True)
    alpha: float = param(0.5, "weight of the cross-entropy on labels; 1 - alpha weighs the KL term", low=0.0,
                         high=1.0)
    hidden_weight: float = param(0.0, "weight of the MSE between the projected student embedding and the "
                                 "teacher embedding (0 = logits only)", low=0.0)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    student_logits, teacher_logits ``(B, C)``, labels ``(B,)``, weight ``(C,)`` class weights of the CE.
    """
    ce = F.cross_entropy(student_logits, labels, weight=weight)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                  F.log_softmax(teacher_logits / temperature, dim=-1), log_target=True, reduction="batchmean")
    return alpha * ce + (1.0 - alpha) * temperature ** 2 * kl


def distillation_objective(teacher: nn.Module, p: KDParams, weight: torch.Tensor | None = None,
                           projection: nn.Module | None = None) -> Callable:
    """The student's training loss ``loss_fn(student, feats, lengths, labels)`` for the shared trainer:
    :func:`distillation_loss` against ``teacher`` plus, with a ``projection``, ``hidden_weight`` times
    the MSE of the projected student embedding to the teacher's. The teacher is frozen here (eval mode,
    no gradients): only the student and the projection learn."""
    teacher.eval().requires_grad_(False)

    def loss_fn(student: nn.Module, feats: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(feats, lengths)
        class_weight = None if weight is None else weight.to(feats.device)  # training may run on CUDA
        loss = distillation_loss(student(feats, lengths), teacher_logits, labels, p.temperature, p.alpha, class_weight)
        if projection is not None:
            with torch.no_grad():
                teacher_embedding = teacher.embed(feats, lengths)
            hidden = F.mse_loss(projection(student.embed(feats, lengths)), teacher_embedding)
            loss = loss + p.hidden_weight * hidden
        return loss
    return loss_fn


def embedding_width(model: nn.Module, input_dim: int) -> int:
    """The width of ``model.embed``'s output, found by running it on a short input."""
    features, lengths = costs.example_input(input_dim, 100)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        width = model.embed(features, lengths).shape[-1]
    model.train(was_training)
    return width


@METHODS.register("kd", "knowledge distillation: the preset's plain model learns from the trained large model "
                  "(logit KL, optional hidden-state term)", params=KDParams)
class KD(Method):
    uses_large_model = True
    teacher_forward_per_step = True
    deploys_preset_model = True
    record_fields = {
        "kd_temperature": "softmax temperature of the distillation loss",
        "kd_alpha": "weight of the distillation loss against the label loss",
        "kd_hidden_weight": "weight of the hidden-state matching loss",
        "kd_teacher_params": "parameters of the teacher (the trained large model)",
        "kd_projection_params": "parameters of the training-only projections for hidden-state matching",
        **FINETUNE_FIELDS,
    }
    params: KDParams

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        # Composed after another method (e.g. prune+kd), its deploy model is the student.
        return start if start is not None else ctx.new_model()

    def train(self, model: nn.Module, ctx) -> nn.Module:
        p = self.params
        teacher = ctx.large_model()
        weight = class_weights(ctx.data.train.labels, ctx.data.num_classes) if ctx.spec.train.class_weighting else None
        projection = None
        if p.hidden_weight > 0:
            torch.manual_seed(ctx.spec.seed)
            projection = nn.Linear(embedding_width(model, ctx.data.input_dim),
                                   embedding_width(teacher, ctx.data.input_dim))
        loss_fn = distillation_objective(teacher, p, weight, projection)
        ctx.fit(model, loss_fn=loss_fn, extra_parameters=list(projection.parameters()) if projection else None,
                desc="kd", companions=[teacher])
        self.teacher_params = costs.count_params(teacher)
        self.projection_params = costs.count_params(projection) if projection is not None else 0
        self.epochs = ctx.spec.train.epochs
        return model

    def record(self) -> dict:
        p = self.params
        return {"kd_temperature": p.temperature, "kd_alpha": p.alpha, "kd_hidden_weight": p.hidden_weight,
                "kd_teacher_params": self.teacher_params, "kd_projection_params": self.projection_params,
                "finetune_epochs": self.epochs,
                "finetune_note": "the student trains for the run's epochs on the run's training split, like every "
                                 "method that (fine-)tunes"}
