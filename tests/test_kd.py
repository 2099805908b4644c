"""Knowledge distillation: the loss against a hand computation, the method's objective training the
student and projection only, and the hidden-state term's projection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.training.models import build_backbone
from methods.kd import KDParams, distillation_loss, distillation_objective, embedding_width


def hand_loss(student, teacher, labels, temperature, alpha):
    """The KD loss written out with plain loops over the batch and the classes."""
    total = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in s))
        ce = log_z - s[y]
        soft_s = [math.exp(v / temperature) for v in s]
        soft_t = [math.exp(v / temperature) for v in t]
        p_s = [v / sum(soft_s) for v in soft_s]
        p_t = [v / sum(soft_t) for v in soft_t]
        kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
        total += alpha * ce + (1 - alpha) * temperature ** 2 * kl
    return total / len(labels)


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.3), (2.5, 0.0), (3.0, 1.0)])
def test_distillation_loss_matches_hand_computation(temperature, alpha):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=generator) * 3
    teacher = torch.randn(5, 4, generator=generator) * 3
    labels = torch.tensor([0, 3, 1, 2, 3])
    loss = distillation_loss(student, teacher, labels, temperature, alpha)
    assert loss.item() == pytest.approx(hand_loss(student, teacher, labels, temperature, alpha), rel=1e-5)


def test_distillation_loss_is_zero_kl_when_student_copies_teacher():
    logits = torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert distillation_loss(logits, logits, labels, 4.0, 0.25).item() == pytest.approx(0.25 * ce.item(), rel=1e-5)


def test_gradient_of_the_kd_objective_reaches_the_student_and_projection_only():
    """The method's own loss (as handed to the trainer) freezes the teacher it is given: no gradient
    and eval mode (dropout off, so its targets are fixed), while student and projection learn."""
    torch.manual_seed(0)
    student = build_backbone("convtransformer", "tiny", 16, 4).train()
    teacher = build_backbone("convtransformer", "lightweight", 16, 4).train()  # as trained models come back
    projection = nn.Linear(32, 96)
    loss_fn = distillation_objective(teacher, KDParams(hidden_weight=0.5), None, projection)
    features, lengths, labels = torch.randn(3, 60, 16), torch.tensor([60, 41, 17]), torch.tensor([0, 3, 1])
    loss_fn(student, features, lengths, labels).backward()
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert projection.weight.grad.abs().sum() > 0
    student.eval()
    with torch.no_grad():
        assert loss_fn(student, features, lengths, labels) == loss_fn(student, features, lengths, labels)


def test_embedding_width_of_each_preset():
    assert embedding_width(build_backbone("convtransformer", "tiny", 16, 4), 16) == 32
    assert embedding_width(build_backbone("convtransformer", "lightweight", 16, 4), 16) == 96
