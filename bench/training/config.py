"""Training settings (``TrainConfig``): the recipe fields a preset may set, and everything else that
changes how a run trains. Part of every run's identity."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from bench.registry import BenchError

MAX_EPOCHS, MAX_BATCH = 100_000, 65_536  # bounds on what one setting may ask of the machine
# Settings a preset's recipe fills in when not given (``None``); see ``bench.training.models.recipe``.
RECIPE_FIELDS = ("lr", "weight_decay", "warmup_epochs", "patience", "dropout", "label_smoothing",
                 "freq_masks", "freq_mask_width", "time_masks", "time_mask_width", "keep_weights",
                 "mixup_alpha", "speed_perturb", "noise_std")
KEEP_WEIGHTS = ("best", "last")


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
