"""Scoring a model on a split: class probabilities and the declared scores (WA, UA, F1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bench.training.devices import autocast
from bench.training.metrics import scores
from bench.training.splits import Split, batches


def predict(model: nn.Module, split: Split, batch_size: int = 16, device: torch.device | str = "cpu",
            amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode class probabilities ``(N, C)`` and predictions ``(N,)`` in the split's order.

    Small batches: on 2 CPU cores every backbone evaluated 1.4-2x faster at 16 than at 64."""
    model.eval()
    probabilities = [None] * len(split)
    with torch.inference_mode(), autocast(device, amp):
        for feats, lengths, _, idx in batches(split, batch_size):
            probs = torch.softmax(model(feats.to(device), lengths.to(device)).float(), dim=-1).cpu()
            for row, i in zip(probs, idx.tolist()):
                probabilities[i] = row
    probs = torch.stack(probabilities).numpy()
    return probs, probs.argmax(1)


def evaluate(model: nn.Module, split: Split, num_classes: int, device: torch.device | str = "cpu",
             amp: bool = False) -> dict:
    """Scores of ``model`` on ``split``, plus ``loss`` (mean cross-entropy per utterance); with groups,
    probabilities are averaged per group before scoring."""
    return scores_of(predict(model, split, device=device, amp=amp)[0], split, num_classes)


def scores_of(probs: np.ndarray, split: Split, num_classes: int) -> dict:
    """Scores and ``loss`` of class probabilities ``(N, C)`` in the split's order (see :func:`evaluate`)."""
    preds = probs.argmax(1)
    labels = split.labels.numpy()
    loss = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    if split.groups is not None:
        groups = sorted(set(split.groups))
        index = {g: k for k, g in enumerate(groups)}
        members = np.array([index[g] for g in split.groups])
        probs = np.stack([probs[members == k].mean(0) for k in range(len(groups))])
        labels = np.array([labels[members == k][0] for k in range(len(groups))])
        preds = probs.argmax(1)
    return scores(labels, preds, num_classes) | {"loss": loss}
