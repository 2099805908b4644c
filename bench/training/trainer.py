"""The shared trainer: AdamW, linear warm-up + cosine decay, SpecAugment and label smoothing, best epoch
chosen on validation UA (with optional early stopping), per-epoch history. Optional levers for small
corpora (each off by default): mixup, speed perturbation and additive noise on the feature frames, and
a final fit on training + validation speakers together."""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from bench.method import RunFailed
from bench.training.augment import add_noise, augment_generator, mixup, spec_augment, speed_perturb
from bench.training.config import TrainConfig
from bench.training.devices import autocast, on_device
from bench.training.evaluate import evaluate
from bench.training.models import DEFAULT_RECIPE
from bench.training.splits import Split, batches, class_weights, joined


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ``loss_fn(model, feats, lengths, labels)``. With mixup on, the features are a mix of each utterance and
# a partner ``perm[i]`` with weight ``lam``: a loss that declares the keyword ``mix`` is called once as
# ``loss_fn(model, feats, lengths, labels, mix=(perm, lam))`` and returns the mixed loss (e.g.
# ``lam * loss(labels) + (1 - lam) * loss(labels[perm])``) from one forward pass; any other loss is
# called twice, with ``labels`` and ``labels[perm]``, and the two weighted by ``lam`` (two forwards).
LossFn = Callable[..., torch.Tensor]


def cross_entropy_loss(class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> LossFn:
    """Label-smoothed, optionally class-weighted cross-entropy; with ``mix=(perm, lam)`` the mixup loss
    ``lam * CE(labels) + (1 - lam) * CE(labels[perm])`` on one forward pass."""
    def loss(model, feats, lengths, labels, mix=None):
        weight = None if class_weights is None else class_weights.to(feats.device)
        logits = model(feats, lengths).float()
        value = nn.functional.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)
        if mix is None:
            return value
        perm, lam = mix
        partner = nn.functional.cross_entropy(logits, labels[perm], weight=weight, label_smoothing=label_smoothing)
        return lam * value + (1 - lam) * partner
    return loss


def takes_mix(loss_fn: LossFn) -> bool:
    """Whether ``loss_fn`` declares the ``mix`` keyword (computes the mixup loss itself, in one forward)."""
    try:
        return "mix" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


def mixed_loss(loss_fn: LossFn, one_pass: bool, model: nn.Module, feats: torch.Tensor, lengths: torch.Tensor,
               labels: torch.Tensor, mix: tuple[torch.Tensor, float] | None) -> torch.Tensor:
    """``loss_fn`` on a batch, mixed by ``mix=(perm, lam)`` when given (see ``LossFn``)."""
    if mix is None:
        return loss_fn(model, feats, lengths, labels)
    if one_pass:
        return loss_fn(model, feats, lengths, labels, mix=mix)
    perm, lam = mix
    return lam * loss_fn(model, feats, lengths, labels) + (1 - lam) * loss_fn(model, feats, lengths, labels[perm])


@dataclass
class FitResult:
    best_epoch: int  # a final fit (no validation): its last epoch
    best_val_ua: float | None  # None after a final fit
    epochs_run: int
    train_seconds: float  # every epoch's, those of an interrupted attempt it resumed from included
    # per epoch: epoch, train_loss, val_loss, val_ua (both None: final fit), lr (at the epoch's end), seconds
    # (the epoch's, validation included) and val_seconds (its validation's)
    history: list[dict]
    deployed_epoch: int | None = None  # whose weights the model kept (None: cached before this was recorded)
    train_flops: int | None = None  # estimated (``bench.execution.context.training_flops_per_epoch``); None: cached before
    peak_memory_bytes: int | None = None  # see ``TrainingMemory``; None: cached before, or not measurable
    peak_memory_how: str | None = None

    @property
    def validation_seconds(self) -> float:
        """Of ``train_seconds``, the time spent evaluating the validation split after each epoch."""
        return sum(entry.get("val_seconds") or 0.0 for entry in self.history)


def fit(model: nn.Module, train: Split, val: Split, num_classes: int, config: TrainConfig, seed: int,
        loss_fn: LossFn | None = None, extra_parameters: list[nn.Parameter] | None = None,
        progress: bool = True, desc: str = "train",
        on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None,
        start_epoch: int = 0, resume_state: dict | None = None,
        device: torch.device | str = "cpu", amp: bool = False, companions: list[nn.Module] = ()) -> FitResult:
    """Train ``model`` in place on ``device``; keep the weights of its best validation-UA epoch, or with
    ``config.keep_weights == "last"`` those of its final epoch.

    Recipe fields ``config`` leaves ``None`` take the lightweight recipe (the runner resolves them with the
    trained preset's recipe before calling this). Every training batch is, in this order and each only
    when its setting is on: speed-perturbed (``speed_perturb``), given Gaussian noise on its valid frames
    (``noise_std``), masked by SpecAugment, and mixed up (``mixup_alpha``; see ``LossFn``) before
    ``loss_fn(model, feats, lengths, labels)``, which replaces label-smoothed cross-entropy (e.g.
    distillation); ``extra_parameters`` are optimized too (e.g. a distillation projection). Training
    stops early after ``config.patience`` epochs without a better validation UA (0: never). With
    ``config.final_fit`` it trains on ``train`` and ``val`` together and never evaluates: the history's
    ``val_loss`` and ``val_ua`` are None, the result's ``best_val_ua`` too, its ``best_epoch`` the last.
    Mixup, speed and noise draw from one generator seeded by ``seed`` (resumed like the batch order).
    ``on_epoch_end`` lets callers checkpoint; ``start_epoch`` and ``resume_state`` resume from such a
    checkpoint. ``device``: the model, ``extra_parameters`` and ``companions`` (modules ``loss_fn`` runs,
    e.g. a teacher) move there while training and back to the CPU afterwards; ``amp``: bf16 autocast
    (:func:`autocast`) for the training steps and the per-epoch validation.
    """
    config = config.resolved(DEFAULT_RECIPE)  # the runner resolves with the trained preset's recipe first
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    augment = augment_generator(seed)
    if config.final_fit:
        train = joined(train, val)
    on_device(device, model, companions, extra_parameters)
    if loss_fn is None:
        weights = class_weights(train.labels, num_classes) if config.class_weighting else None
        loss_fn = cross_entropy_loss(weights, config.label_smoothing)
    one_pass = takes_mix(loss_fn)
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
        if "augment_generator" in resume_state:
            augment.set_state(resume_state["augment_generator"])
        torch.set_rng_state(resume_state["torch_rng"])  # dropout and SpecAugment draw from the global RNG
    bar = tqdm(range(start_epoch, config.epochs), desc=desc, disable=not progress, unit="epoch", leave=False)
    for epoch in bar:
        epoch_started = time.perf_counter()
        model.train()
        total_loss = 0.0
        for feats, lengths, labels, _ in batches(train, config.batch_size, generator):
            feats, lengths = speed_perturb(feats, lengths, config, augment)
            feats = add_noise(feats, lengths, config, augment)
            feats = spec_augment(feats, lengths, config)
            mix = None
            if config.mixup_alpha:
                feats, lengths, perm, lam = mixup(feats, lengths, config.mixup_alpha, augment)
                mix = (perm.to(device), lam)
            with autocast(device, amp):
                loss = mixed_loss(loss_fn, one_pass, model, feats.to(device), lengths.to(device), labels.to(device),
                                  mix)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 5.0)
            optimizer.step()
            scheduler.step()
            value = loss.item()
            if not math.isfinite(value):  # NaN features, a diverging learning rate: no score would mean anything
                raise RunFailed(f"the training loss became {value} at epoch {epoch + 1}: the model diverged "
                                f"(non-finite features, or a learning rate or weight decay too large)")
            total_loss += value * len(labels)
        # a final fit has no validation split left: the last epoch is the one kept
        validation_started = time.perf_counter()
        validation = {"loss": None, "ua": None} if config.final_fit else evaluate(model, val, num_classes, device, amp)
        state["history"].append({"epoch": epoch + 1, "train_loss": total_loss / len(train),
                                 "val_loss": validation["loss"], "val_ua": validation["ua"], "lr": optimizer.param_groups[0]["lr"],
                                 "seconds": time.perf_counter() - epoch_started,
                                 "val_seconds": time.perf_counter() - validation_started})
        if config.final_fit:
            state.update(best_ua=None, best_epoch=epoch + 1)
            bar.set_postfix(loss=f"{total_loss / len(train):.3f}")
        else:
            if validation["ua"] > state["best_ua"]:
                state.update(best_ua=validation["ua"], best_epoch=epoch + 1,
                             best_weights={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            bar.set_postfix(loss=f"{total_loss / len(train):.3f}", val_ua=f"{validation['ua']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, dict(state, optimizer=optimizer.state_dict(),
                                                  scheduler=scheduler.state_dict(), generator=generator.get_state(),
                                                  augment_generator=augment.get_state(),
                                                  torch_rng=torch.get_rng_state()))
        if config.patience and epoch + 1 - state["best_epoch"] >= config.patience:
            break
    if config.keep_weights != "last":
        model.load_state_dict(state["best_weights"])
    on_device("cpu", model, companions, extra_parameters)
    model.eval()
    epochs_run = len(state["history"])
    # summed over the history, so a training resumed from a checkpoint counts its earlier attempt's epochs too
    train_seconds = sum(entry["seconds"] for entry in state["history"])
    return FitResult(state["best_epoch"], state["best_ua"], epochs_run, train_seconds,
                     state["history"], epochs_run if config.keep_weights == "last" else state["best_epoch"])
