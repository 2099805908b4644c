"""Runs one grid point: data for the fold, the method's build -> train -> deploy hooks, evaluation,
measurement, and the record. Shared work (corpus, features, fold splits, trained plain models) is
cached in memory and on disk so that methods starting from the same model do not retrain it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from bench import measure
from bench.checkpoint import model_checkpoint, resumable_fit, run_checkpoint
from bench.corpus import Corpus
from bench.env import environment, git_commit
from bench.features import FeatureConfig, extract
from bench.metrics import declared_scores
from bench.models import build_backbone, preset_config, recipe
from bench.registry import DATASETS, METHODS
from bench.results import run_id
from bench.train import FitResult, Split, TrainConfig, evaluate, resolve_device

log = logging.getLogger("bench")
LATENCY_SECONDS = 5.0  # input duration for MACs and latency in run records


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
                "fold": self.fold, "seed": self.seed, "train": asdict(self.train), "features": asdict(self.features),
                "teacher_preset": self.teacher_preset if self.uses_teacher() else None,
                "recipe": recipe(self.backbone, self.preset),
                "teacher_recipe": recipe(self.backbone, self.teacher_preset) if self.uses_teacher() else None}

    def plain_model_name(self, preset: str) -> str:
        """File stem of the cached plain ``preset`` model this run trains or reuses (shared by every run
        with the same backbone, data, fold, seed and training settings)."""
        key = json.dumps([self.backbone, preset, preset_config(self.backbone, preset), self.dataset,
                          self.dataset_params, self.fold, self.seed, asdict(self.train_config(preset)),
                          asdict(self.features)], sort_keys=True, default=str)
        return f"{self.backbone}-{preset}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def train_config(self, preset: str | None = None) -> TrainConfig:
        """The run's training settings with the rest from ``preset``'s recipe (default: the run's preset)."""
        return self.train.resolved(recipe(self.backbone, preset or self.preset))

    def uses_teacher(self) -> bool:
        return any(getattr(METHODS.get(n).obj, "uses_large_model", False) for n in self.components)

    @property
    def run_id(self) -> str:
        return run_id(self.key())


@dataclass
class FoldData:
    corpus: Corpus
    train: Split
    val: Split
    test: Split

    @property
    def input_dim(self) -> int:
        return self.train.features[0].shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.corpus.classes)


class Workspace:
    """Caches shared by the runs of one process: corpora, features, normalized fold splits."""

    def __init__(self, cache_dir: Path, data_roots: dict[str, Path] | None = None, progress: bool = True,
                 defer_latency: bool = False, device: str = "cpu", amp: bool = False):
        self.cache_dir = Path(cache_dir)
        self.data_roots = data_roots or {}
        self.progress = progress
        self.defer_latency = defer_latency  # leave latency to the serialized ``bench measure`` stage
        self.device = resolve_device(device)  # training and evaluation; latency stays on the CPU
        self.amp = amp  # bf16 autocast on CUDA
        self._corpora: dict = {}
        self._folds: dict = {}

    def root_for(self, dataset: str) -> Path | None:
        if dataset in self.data_roots:
            return Path(self.data_roots[dataset])
        env = os.environ.get(f"HRF_BENCH_{dataset.upper().replace('-', '_')}_ROOT")
        return Path(env) if env else None

    def corpus(self, dataset: str, dataset_params: dict, features: FeatureConfig) -> tuple[Corpus, dict]:
        key = (dataset, json.dumps(dataset_params, sort_keys=True), features)
        if key not in self._corpora:
            entry = DATASETS.get(dataset)
            corpus = entry.obj(self.root_for(dataset), self.cache_dir, entry.make_params(dataset_params))
            self._corpora[key] = (corpus, extract(corpus, features, self.cache_dir, self.progress))
        return self._corpora[key]

    def fold_data(self, spec: RunSpec) -> FoldData:
        key = (spec.dataset, json.dumps(spec.dataset_params, sort_keys=True), spec.features, spec.fold)
        if key not in self._folds:
            corpus, features = self.corpus(spec.dataset, spec.dataset_params, spec.features)
            fold = corpus.fold(spec.fold)
            splits = {name: [i for i in getattr(fold, name) if corpus.utterances[i].id in features]
                      for name in ("train", "val", "test")}
            train_frames = torch.cat([features[corpus.utterances[i].id] for i in splits["train"]])
            mean, std = train_frames.mean(0), train_frames.std(0).clamp(min=1e-5)  # training split only
            grouped = any(u.group for u in corpus.utterances)

            def make(indices):
                utts = [corpus.utterances[i] for i in indices]
                return Split([(features[u.id] - mean) / std for u in utts],
                             torch.tensor([corpus.label_index(u) for u in utts]),
                             [u.group or u.id for u in utts] if grouped else None)

            self._folds[key] = FoldData(corpus, *(make(splits[n]) for n in ("train", "val", "test")))
        return self._folds[key]


class RunContext:
    """What a method sees of the run: the data, model builders and the shared trainer."""

    def __init__(self, spec: RunSpec, data: FoldData, workspace: Workspace):
        self.spec, self.data, self.workspace = spec, data, workspace
        self.fits: list[FitResult] = []
        self.notes: dict = {}

    def new_model(self, preset: str | None = None, **overrides) -> nn.Module:
        """A freshly initialized backbone at ``preset`` (default: the run's), seeded by the run seed, with
        the dropout of that preset's recipe."""
        torch.manual_seed(self.spec.seed)
        preset = preset or self.spec.preset
        overrides = {"dropout": self.spec.train_config(preset).dropout} | overrides
        return build_backbone(self.spec.backbone, preset, self.data.input_dim, self.data.num_classes, **overrides)

    def fit(self, model: nn.Module, loss_fn=None, extra_parameters=None, epochs: int | None = None,
            desc: str | None = None, checkpoint: Path | None = None, preset: str | None = None,
            companions: list[nn.Module] = ()) -> nn.Module:
        """Train with the shared trainer and ``preset``'s recipe (default: the run's preset), checkpointing
        every epoch (default: the run's k-th training) and resuming from the checkpoint an interrupted
        attempt left. ``companions``: modules ``loss_fn`` runs (a teacher), moved to the training device."""
        config = self.spec.train_config(preset)
        config = config if epochs is None else TrainConfig(**(asdict(config) | {"epochs": epochs}))
        path = checkpoint or run_checkpoint(self.workspace.cache_dir, self.spec.run_id, len(self.fits))
        result, resumed_from = resumable_fit(
            model, self.data.train, self.data.val, self.data.num_classes, config, self.spec.seed, path,
            loss_fn=loss_fn, extra_parameters=extra_parameters, progress=self.workspace.progress,
            desc=desc or self.spec.method, device=self.workspace.device, amp=self.workspace.amp,
            companions=companions)
        if resumed_from:
            self.notes["resumed_from_epoch"] = resumed_from
        self.fits.append(result)
        return model

    def trained_model(self, preset: str) -> nn.Module:
        """A plain model of ``preset`` trained with the run's settings, cached on disk and reused by
        every method and later run that needs it (baselines, teachers, pruning sources)."""
        spec = self.spec
        path = self.workspace.cache_dir / "models" / f"{spec.plain_model_name(preset)}.pt"
        model = self.new_model(preset)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_suffix(".lock")):  # concurrent workers needing this model train it once
            if path.exists():
                saved = torch.load(path, weights_only=False)
                model.load_state_dict(saved["state_dict"])
                self.fits.append(FitResult(**saved["fit"]))
                # The key holds settings, not code: say which code trained a reused model.
                trained_by = saved.get("git_commit", "unknown")
                self.notes.update({f"{preset}_model_cache": "hit", f"{preset}_model_git_commit": trained_by})
                log.info("reused cached %s %s model (fold %d, seed %d)", spec.backbone, preset, spec.fold, spec.seed)
                if trained_by != git_commit():
                    log.warning("the cached %s %s model was trained by commit %s, this is %s; a fresh "
                                "--cache-dir retrains it", spec.backbone, preset, trained_by, git_commit())
                return model.eval()
            checkpoint = model_checkpoint(self.workspace.cache_dir, path.stem)
            self.fit(model, desc=f"{spec.backbone}-{preset}", checkpoint=checkpoint, preset=preset)
            self.notes.update({f"{preset}_model_cache": "miss", f"{preset}_model_git_commit": git_commit()})
            log.info("trained %s %s model (fold %d, seed %d)", spec.backbone, preset, spec.fold, spec.seed)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"state_dict": model.state_dict(), "fit": asdict(self.fits[-1]), "git_commit": git_commit()}, tmp)
            os.replace(tmp, path)
            checkpoint.unlink(missing_ok=True)
        return model

    def large_model(self) -> nn.Module:
        """The trained teacher / pruning source: the ``teacher_preset`` model (default ``large``)."""
        return self.trained_model(self.spec.teacher_preset)


def measure_deploy(model: nn.Module, input_dim: int, frames: int, latency: bool = True) -> dict:
    """Deploy-model figures for the record, kept cheap: costs (params, MACs, FLOPs, size, peak memory)
    and eager 1-thread latency at LATENCY_SECONDS; ``bench measure`` covers runtimes, threads and
    durations. Without ``latency`` the record is marked ``latency_deferred`` for ``bench measure``."""
    figures = {"input_seconds": LATENCY_SECONDS, "input_frames": frames, "input_dim": input_dim,
               **measure.cost_figures(model, input_dim, frames)}
    if latency:
        with measure.exclusive():  # one timing at a time on this machine (see ``bench measure``)
            figures.update(measure.latency(model, input_dim, frames, threads=1, audio_seconds=LATENCY_SECONDS))
    else:
        figures["latency_deferred"] = True
    return figures


def execute(spec: RunSpec, workspace: Workspace) -> dict:
    """Run ``spec`` and return its record (not yet written), with the deploy model under ``_deploy_model``."""
    started = time.perf_counter()
    data = workspace.fold_data(spec)
    ctx = RunContext(spec, data, workspace)
    model, train_params, method_figures = None, 0, {}
    for name in spec.components:
        entry = METHODS.get(name)
        method = entry.obj(entry.make_params(spec.method_params.get(name)))
        model = method.build(ctx, model)
        model = method.train(model, ctx)
        train_params = max(train_params, measure.count_params(model))
        model = method.deploy(model, ctx)
        method_figures.update(method.record())
    model.eval()
    # Dynamically quantized layers run on the CPU only; everything else is evaluated on the training device.
    device = torch.device("cpu") if is_quantized(model) else workspace.device
    test = evaluate(model.to(device), data.test, data.num_classes, device, workspace.amp)
    val = evaluate(model, data.val, data.num_classes, device, workspace.amp)
    model.to("cpu")
    figures = measure_deploy(model, data.input_dim, spec.features.frames(LATENCY_SECONDS),
                             latency=not workspace.defer_latency)
    record = {
        "run_id": spec.run_id,
        **{k: v for k, v in spec.key().items() if k not in ("train", "features", "method_params", "dataset_params")},
        "method_params": spec.resolved_method_params(),
        "dataset_params": spec.dataset_params,
        **{f"train_{k}": v for k, v in asdict(spec.train).items()},  # as asked; None = the preset's recipe
        "recipe": asdict(spec.train_config()),  # the settings the deploy model's preset trained with
        "teacher_recipe": asdict(spec.train_config(spec.teacher_preset)) if spec.uses_teacher() else None,
        "train_device": str(workspace.device), "train_amp": workspace.amp and workspace.device.type == "cuda",
        **{f"features_{k}": v for k, v in asdict(spec.features).items()},
        **{k: test[k] for k in ("wa", "ua", "macro_f1", "weighted_f1")},
        **declared_scores(test, data.corpus.metrics, data.corpus.classes),
        "confusion": test["confusion"], "classes": data.corpus.classes,
        "headline_metric": data.corpus.headline_metric,
        "dataset_metrics": list(data.corpus.metrics),
        "val_ua": val["ua"], "val_wa": val["wa"],
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "skipped_files": len(data.corpus.skipped), "skipped": data.corpus.skipped,
        "train_params": train_params, **figures, **method_figures, **ctx.notes,
        "best_epoch": ctx.fits[-1].best_epoch if ctx.fits else None,
        "history": ctx.fits[-1].history if ctx.fits else [],  # the training that produced the deploy model
        "fit_seconds": sum(f.train_seconds for f in ctx.fits),
        "wall_seconds": time.perf_counter() - started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "_deploy_model": model,  # taken out and saved by the caller
    }
    return record


def is_quantized(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def save_model(model: nn.Module, path: Path) -> None:
    """Save the whole deploy model, so that ``bench measure`` can re-measure it without retraining."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model, tmp)
    os.replace(tmp, path)

