"""Knowledge distillation: the loss against a hand computation, and the hidden-state term's projection."""

from __future__ import annotations

import math

import pytest
import torch

from methods.kd import distillation_loss, embedding_width


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


def test_distillation_loss_gradient_reaches_the_student_only():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distillation_loss(student, teacher.detach(), torch.tensor([0, 1, 2, 0]), 2.0, 0.5).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_embedding_width_of_each_preset():
    from bench.models import build_backbone
    assert embedding_width(build_backbone("convtransformer", "tiny", 16, 4), 16) == 32
    assert embedding_width(build_backbone("convtransformer", "lightweight", 16, 4), 16) == 96
