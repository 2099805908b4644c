"""What identifies a run: its settings (``RunSpec``), its id, and the identity fields of its record."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from bench.data.features import FeatureConfig
from bench.registry import METHODS
from bench.reporting.results import run_id
from bench.training.models import model_inputs, preset_config, recipe
from bench.training.config import TrainConfig


@dataclass(frozen=True)
class RunSpec:
    """Everything that identifies one run. ``method`` may compose plug-ins: ``hrf+quant``."""

    method: str
    backbone: str
    preset: str
    dataset: str
    fold: int
    seed: int
    train: TrainConfig = TrainConfig()
    features: FeatureConfig = FeatureConfig()
    method_params: dict = field(default_factory=dict)  # {method name: {param: value}} (overrides)
    dataset_params: dict = field(default_factory=dict)
    teacher_preset: str = "large"
    corpus_fingerprint: str = ""  # the corpus content (``Workspace.fingerprint``); filled in by ``execute``
    # training precision (``training_precision``; filled in from the workspace like the fingerprint): bf16
    # changes the numbers, so it is part of the identity (only when not fp32, so older run ids stay valid)
    precision: str = "fp32"

    @property
    def components(self) -> list[str]:
        return self.method.split("+")

    def resolved_method_params(self) -> dict:
        """Every component's full parameter set (defaults filled in), validated."""
        return {name: asdict(p) if p is not None else {}
                for name, p in ((n, METHODS.get(n).make_params(self.method_params.get(n))) for n in self.components)}

    def key(self) -> dict:
        return {"method": self.method, "method_params": self.resolved_method_params(), "backbone": self.backbone,
                "preset": self.preset, "dataset": self.dataset, "dataset_params": self.dataset_params,
                "corpus_fingerprint": self.corpus_fingerprint,
                "fold": self.fold, "seed": self.seed, "train": asdict(self.train), "features": self.features.identity(),
                "teacher_preset": self.teacher_preset if self.uses_teacher() else None,
                # the presets' architectures: editing a preset (or a plug-in's) must not reuse old records
                "architecture": self.architecture(self.preset),
                "teacher_architecture": self.architecture(self.teacher_preset) if self.uses_teacher() else None,
                "recipe": recipe(self.backbone, self.preset),
                "teacher_recipe": recipe(self.backbone, self.teacher_preset) if self.uses_teacher() else None,
                **({"precision": self.precision} if self.precision != "fp32" else {})}

    def plain_model_name(self, preset: str) -> str:
        """File stem of the cached plain ``preset`` model this run trains or reuses (shared by every run
        with the same backbone, data, fold, seed, training settings and training precision: bf16
        autocast names other models than float32 training, whose names predate the option)."""
        parts = [self.backbone, preset, self.architecture(preset), self.dataset,
                 self.dataset_params, self.corpus_fingerprint, self.fold, self.seed,
                 asdict(self.train_config(preset)), self.features.identity()]
        key = json.dumps(parts + ([self.precision] if self.precision != "fp32" else []), sort_keys=True, default=str)
        return f"{self.backbone}-{preset}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def train_config(self, preset: str | None = None) -> TrainConfig:
        """The run's training settings with the rest from ``preset``'s recipe (default: the run's preset)."""
        return self.train.resolved(recipe(self.backbone, preset or self.preset))

    def architecture(self, preset: str) -> dict:
        """What is built at ``preset``: its configuration with the run's build keywords (``deltas``)."""
        return preset_config(self.backbone, preset) | self.build_overrides

    @property
    def extracted_features(self) -> FeatureConfig:
        """The features the pipeline extracts for this run's backbone (see ``model_inputs``)."""
        return model_inputs(self.backbone, self.features)[0]

    @property
    def build_overrides(self) -> dict:
        """Build keywords every model of this run gets from its feature settings (see ``model_inputs``)."""
        return model_inputs(self.backbone, self.features)[1]

    def uses_teacher(self) -> bool:
        return any(METHODS.get(n).obj.uses_large_model for n in self.components)

    @property
    def run_id(self) -> str:
        return run_id(self.key())


def run_identity(spec: RunSpec) -> dict:
    """The record fields that say which run it is (every record has them, failed ones too)."""
    nested = ("train", "features", "method_params", "dataset_params", "recipe", "teacher_recipe",
              "precision")  # recorded as train_precision
    return {"run_id": spec.run_id,
            **{k: v for k, v in spec.key().items() if k not in nested},  # architecture: the preset's dict
            "method_params": spec.resolved_method_params(),
            "dataset_params": spec.dataset_params,
            **{f"train_{k}": v for k, v in asdict(spec.train).items()},  # as asked; None = the preset's recipe
            "recipe": asdict(spec.train_config()),  # the settings the deploy model's preset trains with
            "teacher_recipe": asdict(spec.train_config(spec.teacher_preset)) if spec.uses_teacher() else None,
            **{f"features_{k}": v for k, v in asdict(spec.features).items()}}
