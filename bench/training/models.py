"""Building backbones from their registered presets, and each preset's training recipe."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from bench.data.features import FeatureConfig
from bench.registry import BACKBONES, BenchError

# Training recipes per preset name, used by every backbone that does not register its own
# (``recipes={preset: {...}}`` in its registration). Chosen on validation UA only (EmoDB,
# ConvTransformer, seed 0, folds 1-5; docs/recipes.md): label smoothing and SpecAugment
# regularize every size; larger models get a lower peak learning rate. The final epoch's weights are
# kept, with no early stopping: on a 2-speaker validation split the best epoch's UA is a maximum over
# noisy values (4-5 points above the last epochs' mean) and picks lucky early epochs, while the cosine
# schedule ends on stable weights. The epochs come from the run (the studies: 30). Masks: 2 frequency
# masks of up to 12 of 80 mel bins, 2 time masks of up to 40 frames (0.4 s, at most a fifth of the
# utterance). Mixup and speed perturbation (``bench.training.trainer.fit``) did not help the lightweight model on
# validation (round 4), so they are off here; a backbone turns them on for a preset where they did
# (the ConvTransformer's large). Feature noise was not searched.
_AUGMENT = dict(label_smoothing=0.1, freq_masks=2, freq_mask_width=12, time_masks=2, time_mask_width=40)
_AUGMENT_OFF = dict(mixup_alpha=0.0, speed_perturb=0.0, noise_std=0.0)
_REGULARIZE = dict(weight_decay=0.05, warmup_epochs=2.0, patience=0, keep_weights="last", dropout=0.1, **_AUGMENT,
                   **_AUGMENT_OFF)
PRESET_RECIPES = {
    "tiny": dict(lr=3e-3, **_REGULARIZE),
    "lightweight": dict(lr=2e-3, **_REGULARIZE),
    "medium": dict(lr=1.5e-3, **_REGULARIZE),
    "large": dict(lr=1e-3, **_REGULARIZE),
}
# Presets of plug-in backbones with other names: the lightweight recipe.
DEFAULT_RECIPE = PRESET_RECIPES["lightweight"]


def preset_config(backbone: str, preset: str) -> dict:
    """The preset's configuration dict (a copy), with a clear error for an unknown preset."""
    presets = BACKBONES.get(backbone).extra["presets"]
    if preset not in presets:
        raise BenchError(f"unknown preset {preset!r} for backbone {backbone}. Available: {', '.join(presets)}")
    return dict(presets[preset])


def recipe(backbone: str, preset: str) -> dict:
    """The training recipe of ``backbone`` at ``preset``: every ``TrainConfig`` field a run leaves unset
    (learning rate, warm-up, weight decay, dropout, label smoothing, SpecAugment, mixup, speed
    perturbation, feature noise, patience, which epoch's weights to keep)."""
    preset_config(backbone, preset)
    registered = BACKBONES.get(backbone).extra.get("recipes") or {}
    return PRESET_RECIPES.get(preset, DEFAULT_RECIPE) | registered.get(preset, {})


def model_inputs(backbone: str, features: FeatureConfig) -> tuple[FeatureConfig, dict]:
    """The features the pipeline extracts for ``backbone`` and the build keywords that go with them. With
    ``features.deltas``, a backbone registered with ``computes_deltas=True`` (its front-end reads them as
    channels) gets the plain frames and ``deltas=N``; any other gets each frame with its deltas appended."""
    if features.deltas and BACKBONES.get(backbone).extra.get("computes_deltas"):
        return replace(features, deltas=0), {"deltas": features.deltas}
    return features, {}


def build_backbone(backbone: str, preset: str, input_dim: int, num_classes: int, **overrides) -> nn.Module:
    """Build ``backbone`` at ``preset``; keyword overrides replace preset values (timm style)."""
    config = preset_config(backbone, preset) | overrides
    return BACKBONES.get(backbone).obj(input_dim=input_dim, num_classes=num_classes, **config)
