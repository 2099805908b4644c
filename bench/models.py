"""Building backbones from their registered presets, and each preset's training recipe."""

from __future__ import annotations

from torch import nn

from bench.registry import BACKBONES, BenchError

# The recipe of a preset its backbone does not register one for (``recipes={preset: {...}}``). Backbones
# register recipes chosen on validation data (see backbones/convtransformer.py for how).
DEFAULT_RECIPE = dict(lr=2e-3, weight_decay=0.01, warmup_epochs=1.0, patience=0, dropout=0.1, label_smoothing=0.0,
                      freq_masks=0, freq_mask_width=0, time_masks=0, time_mask_width=0)


def preset_config(backbone: str, preset: str) -> dict:
    """The preset's configuration dict (a copy), with a clear error for an unknown preset."""
    presets = BACKBONES.get(backbone).extra["presets"]
    if preset not in presets:
        raise BenchError(f"unknown preset {preset!r} for backbone {backbone}. Available: {', '.join(presets)}")
    return dict(presets[preset])


def recipe(backbone: str, preset: str) -> dict:
    """The training recipe of ``backbone`` at ``preset``: every ``TrainConfig`` field a run leaves unset
    (learning rate, warm-up, weight decay, dropout, label smoothing, SpecAugment, patience)."""
    preset_config(backbone, preset)
    registered = BACKBONES.get(backbone).extra.get("recipes") or {}
    return DEFAULT_RECIPE | registered.get(preset, {})


def build_backbone(backbone: str, preset: str, input_dim: int, num_classes: int, **overrides) -> nn.Module:
    """Build ``backbone`` at ``preset``; keyword overrides replace preset values (timm style)."""
    config = preset_config(backbone, preset) | overrides
    return BACKBONES.get(backbone).obj(input_dim=input_dim, num_classes=num_classes, **config)
