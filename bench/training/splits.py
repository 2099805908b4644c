"""Training data as the trainer sees it: a split's padded features, lengths and labels (``Split``), its
batches, and class weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence


@dataclass
class Split:
    """Normalized features ``(frames, dims)`` and integer labels of one split."""

    features: list[torch.Tensor]
    labels: torch.Tensor
    groups: list[str] | None = None  # aggregation units (participants); None = per utterance

    def __len__(self) -> int:
        return len(self.features)


LENGTH_JITTER = 0.03


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Yield ``(features (B, T, F), lengths (B,), labels (B,), indices)``.

    Utterances of similar length share a batch (less padding); with a generator, batch order and
    membership are shuffled reproducibly.
    """
    lengths = torch.tensor([f.shape[0] for f in split.features])
    if generator is None:
        order = torch.argsort(lengths)
    else:  # sort by length jittered by up to +-3 %: batches vary between epochs, padding stays ~5 %
        jitter = 1 + LENGTH_JITTER * (2 * torch.rand(len(split), generator=generator) - 1)
        order = torch.argsort(lengths * jitter)
    chunks = list(order.split(batch_size))
    if generator is not None:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator)]
    for idx in chunks:
        feats = pad_sequence([split.features[i] for i in idx], batch_first=True)
        yield feats, lengths[idx], split.labels[idx], idx


def joined(train: Split, val: Split) -> Split:
    """Training and validation utterances as one training split (a final fit)."""
    return Split(list(train.features) + list(val.features), torch.cat([train.labels, val.labels]))


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)
