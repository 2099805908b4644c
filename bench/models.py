"""Building backbones from their registered presets."""

from __future__ import annotations

from torch import nn

from bench.registry import BACKBONES, BenchError


def preset_config(backbone: str, preset: str) -> dict:
    """The preset's configuration dict (a copy), with a clear error for an unknown preset."""
    presets = BACKBONES.get(backbone).extra["presets"]
    if preset not in presets:
        raise BenchError(f"unknown preset {preset!r} for backbone {backbone}. Available: {', '.join(presets)}")
    return dict(presets[preset])


def build_backbone(backbone: str, preset: str, input_dim: int, num_classes: int, **overrides) -> nn.Module:
    """Build ``backbone`` at ``preset``; keyword overrides replace preset values (timm style)."""
    config = preset_config(backbone, preset) | overrides
    return BACKBONES.get(backbone).obj(input_dim=input_dim, num_classes=num_classes, **config)
