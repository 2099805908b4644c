"""The shared trainer: AdamW, linear warm-up + cosine decay, best epoch chosen on validation UA."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from bench.metrics import scores
from bench.registry import BenchError


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; part of every run key and record."""

    epochs: int = 6  # the default grid must finish in < 10 min on 2 cores; use more for real studies
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    patience: int = 0  # stop after this many epochs without validation gain; 0 = never
    class_weighting: bool = False  # weight the loss by inverse class frequency (imbalanced corpora)

    def __post_init__(self):
        if self.epochs < 1:
            raise BenchError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise BenchError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise BenchError(f"learning rate must be > 0, got {self.lr}")


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


def predict(model: nn.Module, split: Split, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode class probabilities ``(N, C)`` and predictions ``(N,)`` in the split's order.

    Small batches: on 2 CPU cores every backbone evaluated 1.4-2x faster at 16 than at 64."""
    model.eval()
    probabilities = [None] * len(split)
    with torch.inference_mode():
        for feats, lengths, _, idx in batches(split, batch_size):
            probs = torch.softmax(model(feats, lengths).float(), dim=-1)
            for row, i in zip(probs, idx.tolist()):
                probabilities[i] = row
    probs = torch.stack(probabilities).numpy()
    return probs, probs.argmax(1)


def evaluate(model: nn.Module, split: Split, num_classes: int) -> dict:
    """Scores of ``model`` on ``split``; with groups, probabilities are averaged per group first."""
    return scores_of(predict(model, split)[0], split, num_classes)


def scores_of(probs: np.ndarray, split: Split, num_classes: int) -> dict:
    """Scores of class probabilities ``(N, C)`` in the split's order (see :func:`evaluate`)."""
    preds = probs.argmax(1)
    labels = split.labels.numpy()
    if split.groups is not None:
        groups = sorted(set(split.groups))
        index = {g: k for k, g in enumerate(groups)}
        members = np.array([index[g] for g in split.groups])
        probs = np.stack([probs[members == k].mean(0) for k in range(len(groups))])
        labels = np.array([labels[members == k][0] for k in range(len(groups))])
        preds = probs.argmax(1)
    return scores(labels, preds, num_classes)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(class_weights: torch.Tensor | None = None) -> LossFn:
    def loss(model, feats, lengths, labels):
        return nn.functional.cross_entropy(model(feats, lengths), labels, weight=class_weights)
    return loss


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


@dataclass
class FitResult:
    best_epoch: int
    best_val_ua: float
    epochs_run: int
    train_seconds: float
    history: list[dict]


def fit(model: nn.Module, train: Split, val: Split, num_classes: int, config: TrainConfig, seed: int,
        loss_fn: LossFn | None = None, extra_parameters: list[nn.Parameter] | None = None,
        progress: bool = True, desc: str = "train",
        on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None,
        start_epoch: int = 0, resume_state: dict | None = None) -> FitResult:
    """Train ``model`` in place and load the weights of its best validation-UA epoch.

    ``loss_fn(model, feats, lengths, labels)`` replaces cross-entropy (e.g. distillation);
    ``extra_parameters`` are optimized too (e.g. a distillation projection). ``on_epoch_end``
    lets callers checkpoint; ``start_epoch`` and ``resume_state`` resume from such a checkpoint.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if loss_fn is None:
        weights = class_weights(train.labels, num_classes) if config.class_weighting else None
        loss_fn = cross_entropy_loss(weights)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters or [])
    # The fused kernel updates every tensor in one pass: 1 ms per step instead of 3 ms on 2 CPU cores.
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, int(config.warmup_epochs * steps_per_epoch)))
    state = resume_state or {"best_ua": -1.0, "best_epoch": 0, "best_weights": None, "history": []}
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        generator.set_state(resume_state["generator"])
        torch.set_rng_state(resume_state["torch_rng"])  # dropout draws from the global RNG
    started = time.perf_counter()
    bar = tqdm(range(start_epoch, config.epochs), desc=desc, disable=not progress, unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        total_loss = 0.0
        for feats, lengths, labels, _ in batches(train, config.batch_size, generator):
            loss = loss_fn(model, feats, lengths, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 5.0)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(labels)
        val_ua = evaluate(model, val, num_classes)["ua"]
        state["history"].append({"epoch": epoch + 1, "train_loss": total_loss / len(train), "val_ua": val_ua})
        if val_ua > state["best_ua"]:
            state.update(best_ua=val_ua, best_epoch=epoch + 1, best_weights=copy.deepcopy(model.state_dict()))
        bar.set_postfix(loss=f"{total_loss / len(train):.3f}", val_ua=f"{val_ua:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, dict(state, optimizer=optimizer.state_dict(),
                                                  scheduler=scheduler.state_dict(), generator=generator.get_state(),
                                                  torch_rng=torch.get_rng_state()))
        if config.patience and epoch + 1 - state["best_epoch"] >= config.patience:
            break
    model.load_state_dict(state["best_weights"])
    model.eval()
    return FitResult(state["best_epoch"], state["best_ua"], len(state["history"]),
                     time.perf_counter() - started, state["history"])
