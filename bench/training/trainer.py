"""The shared trainer: AdamW, linear warm-up + cosine decay, SpecAugment and label smoothing, best epoch
chosen on validation UA (with optional early stopping), per-epoch history. Optional levers for small
corpora (each off by default): mixup, speed perturbation and additive noise on the feature frames, and
a final fit on training + validation speakers together."""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy.special import betaincinv
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from bench.method import RunFailed
from bench.training.metrics import scores
from bench.training.models import DEFAULT_RECIPE
from bench.registry import BenchError


# Settings a preset's recipe fills in when not given (``None``); see ``bench.training.models.recipe``.
RECIPE_FIELDS = ("lr", "weight_decay", "warmup_epochs", "patience", "dropout", "label_smoothing",
                 "freq_masks", "freq_mask_width", "time_masks", "time_mask_width", "keep_weights",
                 "mixup_alpha", "speed_perturb", "noise_std")
KEEP_WEIGHTS = ("best", "last")
MAX_EPOCHS, MAX_BATCH = 100_000, 65_536  # bounds on what one setting may ask of the machine


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; part of every run key and record. Fields left ``None`` come from the trained
    preset's recipe (``bench.training.models.recipe``), so explicit values override the recipe."""

    epochs: int = 6  # the default grid must finish in < 10 min on 2 cores; studies set the recipe's epochs
    # 16: twice the updates of 32 per epoch for about the same CPU time on small models; chosen for the
    # 6-epoch quick look on the embedded corpus's validation speakers (tests/benchmarks/recipe_search.py)
    batch_size: int = 16
    lr: float | None = None  # peak learning rate
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    patience: int | None = None  # stop after this many epochs without validation gain; 0 = never
    dropout: float | None = None
    label_smoothing: float | None = None
    freq_masks: int | None = None  # SpecAugment: masks per utterance, largest width (bins, at most a fifth)
    freq_mask_width: int | None = None
    time_masks: int | None = None
    time_mask_width: int | None = None  # frames, at most MASK_FRACTION of the utterance
    keep_weights: str | None = None  # "best": the best validation-UA epoch's; "last": the final epoch's
    class_weighting: bool = False  # weight the loss by inverse class frequency (imbalanced corpora)
    # Augmentation of the training batches (0 = off; see ``fit``), all drawn from a generator seeded by the run seed:
    mixup_alpha: float | None = None  # mixup: lambda ~ Beta(alpha, alpha) per batch, partners permuted
    speed_perturb: float | None = None  # tempo factor uniform in [1 - s, 1 + s] per utterance, frames resampled
    noise_std: float | None = None  # Gaussian noise of this std on the (standardized) valid frames
    final_fit: bool = False  # train on training + validation speakers; no validation, the last epoch is kept

    def __post_init__(self):
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise BenchError(f"epochs must be >= 1 and at most {MAX_EPOCHS}, got {self.epochs}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise BenchError(f"batch size must be >= 1 and at most {MAX_BATCH}, got {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise BenchError(f"learning rate must be > 0, got {self.lr}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise BenchError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise BenchError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.keep_weights is not None and self.keep_weights not in KEEP_WEIGHTS:
            raise BenchError(f"keep weights must be one of {', '.join(KEEP_WEIGHTS)}, got {self.keep_weights!r}")
        for name in ("mixup_alpha", "speed_perturb", "noise_std"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise BenchError(f"{name.replace('_', ' ')} must be a finite number >= 0 (0 = off), got {value!r}")
        if self.speed_perturb is not None and self.speed_perturb >= 1:
            raise BenchError(f"speed perturb must lie in [0, 1) (0.1: tempo factors 0.9-1.1), got {self.speed_perturb}")
        if self.final_fit and self.patience:
            raise BenchError("a final fit trains on the validation speakers too: nothing to stop early on; "
                             "give --patience 0 with it, or --no-final-fit")
        if self.final_fit and self.keep_weights == "best":
            raise BenchError("a final fit trains on the validation speakers too: no epoch to pick on validation; "
                             "give --keep-weights last with it, or --no-final-fit")
        if self.keep_weights == "last" and self.patience:
            raise BenchError("early stopping (patience > 0) keeps the best validation epoch's weights: give "
                             "--keep-weights best with it, or --patience 0")
        for name in ("weight_decay", "warmup_epochs", "patience", "freq_masks", "freq_mask_width", "time_masks",
                     "time_mask_width"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise BenchError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")

    def resolved(self, recipe: dict) -> "TrainConfig":
        """These settings with every unset (``None``) recipe field taken from ``recipe``."""
        return replace(self, **{k: recipe[k] for k in RECIPE_FIELDS if getattr(self, k) is None})


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


MASK_FRACTION = 0.2  # a time mask covers at most this share of its utterance (SpecAugment's p), a
# frequency mask at most this share of the bins


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """SpecAugment on a padded batch ``(B, T, F)``: each utterance gets its own frequency and time masks
    (filled with 0, the normalized features' mean), drawn within its own length, so that no mask falls
    on padding and a time mask never covers more than a fifth of the utterance. Returns a new tensor.

    Each mask is drawn as torchaudio's ``mask_along_axis`` draws it (width ``floor(u * W)``, start
    ``floor(u' * (size - u * W))``, with ``W`` capped at a fifth of the size), for the whole batch at once:
    one loop over utterances and masks cost a third of a small model's training step."""
    if not (config.freq_masks and config.freq_mask_width) and not (config.time_masks and config.time_mask_width):
        return feats
    batch, frames, bins = feats.shape
    # A frequency mask covers at most a fifth of the bins too (12 of 80 log-mel bins: up to 12; 16 features: 3).
    freq_width = torch.full((batch,), float(min(config.freq_mask_width or 0, int(MASK_FRACTION * bins))))
    time_width = (MASK_FRACTION * lengths.float()).floor().clamp(max=float(config.time_mask_width or 0))
    masked_bins = _masks(config.freq_masks or 0, freq_width, torch.full((batch,), float(bins)), bins)
    masked_frames = _masks(config.time_masks or 0, time_width, lengths.float(), frames)
    inside = torch.arange(frames) < lengths[:, None]  # (B, T): frequency masks stop where the utterance ends
    return feats.masked_fill((masked_frames[:, :, None] | masked_bins[:, None, :]) & inside[:, :, None], 0.0)


def _masks(count: int, widths: torch.Tensor, sizes: torch.Tensor, axis: int) -> torch.Tensor:
    """``(B, axis)`` union of ``count`` masks per row, each of width ``floor(u * widths)`` starting at
    ``floor(u' * (sizes - u * widths))`` (``u, u'`` uniform in [0, 1)): inside ``[0, sizes)``."""
    if not count:
        return torch.zeros(len(widths), axis, dtype=torch.bool)
    value = torch.rand(len(widths), count) * widths[:, None]
    start = (torch.rand(len(widths), count) * (sizes[:, None] - value)).long()
    end = start + value.long()
    index = torch.arange(axis)
    return ((index >= start[..., None]) & (index < end[..., None])).any(1)


def augment_generator(seed: int) -> torch.Generator:
    """The generator of the training batches' mixup, speed and noise draws: seeded by the run seed, but a
    stream apart from the batch-order generator (seeded with ``seed`` itself)."""
    derived = torch.randint(2 ** 62, (1,), generator=torch.Generator().manual_seed(seed)).item()
    return torch.Generator().manual_seed(derived + 1)


def speed_perturb(feats: torch.Tensor, lengths: torch.Tensor, config: TrainConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed perturbation on the feature frames of a padded batch ``(B, T, F)``: each utterance gets a
    factor drawn uniformly in ``[1 - s, 1 + s]`` (``s = config.speed_perturb``) and is resampled along
    time to ``round(length / factor)`` frames by linear interpolation, exactly what
    ``torch.nn.functional.interpolate(mode="linear", align_corners=False)`` does per utterance, here in
    one gather for the whole batch. It approximates waveform speed perturbation on the frames: a tempo
    change only (the spectrum of each frame, hence the pitch, is unchanged). Returns the re-padded batch
    (padding 0) and the new lengths; the batch itself when off."""
    if not config.speed_perturb:
        return feats, lengths
    source = lengths.to(torch.float64)
    factors = 1 + config.speed_perturb * (2 * torch.rand(len(lengths), generator=generator, dtype=torch.float64) - 1)
    new_lengths = torch.round(source / factors).long().clamp(min=1)
    frames = torch.arange(int(new_lengths.max()), dtype=torch.float64)
    # interpolate's source position of output frame j (align_corners=False): (j + 0.5) * in / out - 0.5, >= 0
    position = ((frames + 0.5) * (source / new_lengths)[:, None] - 0.5).clamp(min=0)  # (B, T')
    last = (lengths - 1)[:, None]
    below = torch.minimum(position.floor().long(), last)
    above = torch.minimum(below + 1, last)
    weight = (position - below).to(feats.dtype)[..., None]
    dims = feats.shape[2]
    out = torch.lerp(feats.gather(1, below[..., None].expand(-1, -1, dims)),
                     feats.gather(1, above[..., None].expand(-1, -1, dims)), weight)
    valid = (frames[None] < new_lengths[:, None])[..., None]
    return out.masked_fill(~valid, 0.0), new_lengths


def add_noise(feats: torch.Tensor, lengths: torch.Tensor, config: TrainConfig,
              generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of standard deviation ``config.noise_std`` added to every valid (non-padded) frame
    of a padded batch of standardized features; padding stays as it is. The batch itself when off."""
    if not config.noise_std:
        return feats
    valid = (torch.arange(feats.shape[1])[None] < lengths[:, None])[..., None]
    noise = torch.randn(feats.shape, generator=generator, dtype=feats.dtype)
    return feats + config.noise_std * noise * valid


def mixup(feats: torch.Tensor, lengths: torch.Tensor, alpha: float, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup of a padded batch: ``lam ~ Beta(alpha, alpha)`` for the batch (inverse CDF of a uniform
    from ``generator``) and a random partner ``perm[i]`` for each utterance; returns
    ``lam * feats + (1 - lam) * feats[perm]``, the lengths ``max(lengths, lengths[perm])`` (the shorter
    one counts as padded with zeros up to the longer), ``perm`` and ``lam``."""
    lam = float(betaincinv(alpha, alpha, torch.rand(1, generator=generator, dtype=torch.float64).item()))
    perm = torch.randperm(len(lengths), generator=generator)
    return lam * feats + (1 - lam) * feats[perm], torch.maximum(lengths, lengths[perm]), perm, lam


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


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a one-line error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here: use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise BenchError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 matmuls natively


def native_bf16_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16). Without them oneDNN
    emulates bf16 and autocast trains slower than float32; read from ``/proc/cpuinfo`` (False elsewhere)."""
    try:
        flags = set(cpuinfo.read_text(errors="replace").split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def check_amp(device: torch.device | str, amp: bool) -> None:
    """Refuse bf16 training where it would be emulated: a one-line error, not a slow run."""
    if amp and torch.device(device).type == "cpu" and not native_bf16_cpu():
        raise BenchError("--amp: this CPU has no native bf16 (neither AVX512-BF16 nor AMX-BF16 in /proc/cpuinfo), "
                         "so bf16 autocast would be emulated and slower than float32; drop --amp")


def training_precision(amp: bool) -> str:
    """What records call the precision a model trained in."""
    return "bf16-autocast" if amp else "fp32"


def autocast(device: torch.device | str, amp: bool):
    """bf16 autocast on ``device`` (CUDA or CPU) when ``amp``; a no-op context otherwise. The master
    weights, the optimizer and the loss stay float32 (autocast runs matmuls and convolutions in bf16)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


class TrainingMemory:
    """Peak memory a training takes above what the process held when it began: on CUDA the allocator's
    peak (``torch.cuda.max_memory_allocated``); on a Linux CPU the process's peak resident set
    (``VmHWM``, reset through ``/proc/self/clear_refs``) less its resident set at the start, so weights,
    gradients, optimizer state, activations and batches all count. ``bytes`` is None where neither
    applies (another OS), and ``how`` says which was measured."""

    STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.how = "unavailable"

    def _status_bytes(self, key: str) -> int | None:
        try:
            for line in self.STATUS.read_text().splitlines():
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            pass
        return None

    def __enter__(self) -> "TrainingMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._status_bytes("VmRSS")
        try:
            self.CLEAR_REFS.write_text("5")  # Linux >= 4.0: the peak resident set restarts from the current one
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.bytes, self.how = torch.cuda.max_memory_allocated(self.device) - self._start, "cuda allocator peak"
            return
        peak = self._status_bytes("VmHWM")
        if self._start is not None and peak is not None:
            self.bytes, self.how = max(0, peak - self._start), "process peak RSS above its start"


def on_device(device: torch.device | str, model: nn.Module, companions=(), extra_parameters=None) -> None:
    """Move ``model``, ``companions`` and loose ``extra_parameters`` to ``device`` in place."""
    for module in (model, *companions):
        module.to(device)
    with torch.no_grad():
        for parameter in extra_parameters or []:
            parameter.data = parameter.data.to(device)


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


def joined(train: Split, val: Split) -> Split:
    """Training and validation utterances as one training split (a final fit)."""
    return Split(list(train.features) + list(val.features), torch.cat([train.labels, val.labels]))


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


@dataclass
class FitResult:
    best_epoch: int  # a final fit (no validation): its last epoch
    best_val_ua: float | None  # None after a final fit
    epochs_run: int
    train_seconds: float
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
    started = time.perf_counter()
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
    return FitResult(state["best_epoch"], state["best_ua"], epochs_run, time.perf_counter() - started,
                     state["history"], epochs_run if config.keep_weights == "last" else state["best_epoch"])
