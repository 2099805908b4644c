"""``bench list``: the three registries with descriptions, parameters and backbone presets."""

from __future__ import annotations

from bench.data.features import FeatureConfig
from bench.measure.costs import count_macs, count_params
from bench.training.models import build_backbone, recipe
from bench.registry import BACKBONES, DATASETS, METHODS, Entry
from bench.studies import study_names, study_summary

LIST_SECONDS = 5.0


def _entry_lines(entry: Entry) -> list[str]:
    lines = [f"  {entry.name}: {entry.description}"]
    lines += [f"      {info.describe()}" + (f"  - {info.help}" if info.help else "") for info in entry.params]
    return lines


def _preset_lines(entry: Entry, features: FeatureConfig) -> list[str]:
    """Size and cost of each preset. MACs come from the backbone's hand-derived formula when it has one
    (tests/test_backbones.py holds it to the counter within 1 %; counting all presets takes seconds)."""
    frames = features.frames(LIST_SECONDS)
    formula = entry.extra.get("analytic_macs")
    lines = []
    for preset, config in entry.extra["presets"].items():
        model = build_backbone(entry.name, preset, features.dim, 4)
        macs = formula(config, features.dim, 4, frames) if formula else count_macs(model, features.dim, frames)
        sizes = ", ".join(f"{k}={v}" for k, v in config.items())
        lines.append(f"      preset {preset}: {count_params(model) / 1e6:.3f}M params, "
                     f"{macs / 1e6:.1f}M MACs @{LIST_SECONDS:g}s ({sizes})")
        lines.append("        recipe: " + ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                                for k, v in recipe(entry.name, preset).items()))
    return lines


def describe_registries() -> str:
    features = FeatureConfig()
    lines = ["methods:"]
    for entry in METHODS.entries():
        lines += _entry_lines(entry)
    lines.append(f"backbones (MACs for {LIST_SECONDS:g} s of audio, {features.dim}-d {features.kind}, 4 classes):")
    for entry in BACKBONES.entries():
        lines += _entry_lines(entry) + _preset_lines(entry, features)
    lines.append("datasets:")
    for entry in DATASETS.entries():
        lines += _entry_lines(entry)
    lines.append("studies (bench run --study NAME --data-root PATH; add --dry-run for the runs and compute):")
    lines += [f"  {name}: {study_summary(name)}" for name in study_names()]
    return "\n".join(lines)
