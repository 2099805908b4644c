"""Runs one grid point: data for the fold, the method's build -> train -> deploy hooks, evaluation,
measurement, and the record. Shared work (corpus, features, fold splits, trained plain models) is
cached in memory and on disk so that methods starting from the same model do not retrain it."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from bench import schema
from bench.data.corpus import Corpus, corpus_fingerprint
from bench.data.features import FeatureConfig, extract
from bench.execution.checkpoint import model_checkpoint, resumable_fit, run_checkpoint
from bench.execution.env import environment, git_commit
from bench.measure import costs, onnx_io
from bench.measure.costs import LATENCY_SECONDS
from bench.method import Deployed, RunFailed
from bench.paths import atomic_write, file_lock
from bench.registry import DATASETS, METHODS, BenchError
from bench.reporting.results import run_id
from bench.training.metrics import declared_scores
from bench.training.models import build_backbone, preset_config, recipe
from bench.training.trainer import (FitResult, Split, TrainConfig, TrainingMemory, check_amp, evaluate, resolve_device,
                                    scores_of, training_precision)

log = logging.getLogger("bench")


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
                "fold": self.fold, "seed": self.seed, "train": asdict(self.train), "features": asdict(self.features),
                "teacher_preset": self.teacher_preset if self.uses_teacher() else None,
                # the presets' architectures: editing a preset (or a plug-in's) must not reuse old records
                "architecture": preset_config(self.backbone, self.preset),
                "teacher_architecture": preset_config(self.backbone, self.teacher_preset) if self.uses_teacher() else None,
                "recipe": recipe(self.backbone, self.preset),
                "teacher_recipe": recipe(self.backbone, self.teacher_preset) if self.uses_teacher() else None,
                **({"precision": self.precision} if self.precision != "fp32" else {})}

    def plain_model_name(self, preset: str) -> str:
        """File stem of the cached plain ``preset`` model this run trains or reuses (shared by every run
        with the same backbone, data, fold, seed, training settings and training precision: bf16
        autocast names other models than float32 training, whose names predate the option)."""
        parts = [self.backbone, preset, preset_config(self.backbone, preset), self.dataset,
                 self.dataset_params, self.corpus_fingerprint, self.fold, self.seed,
                 asdict(self.train_config(preset)), asdict(self.features)]
        key = json.dumps(parts + ([self.precision] if self.precision != "fp32" else []), sort_keys=True, default=str)
        return f"{self.backbone}-{preset}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def train_config(self, preset: str | None = None) -> TrainConfig:
        """The run's training settings with the rest from ``preset``'s recipe (default: the run's preset)."""
        return self.train.resolved(recipe(self.backbone, preset or self.preset))

    def uses_teacher(self) -> bool:
        return any(METHODS.get(n).obj.uses_large_model for n in self.components)

    @property
    def run_id(self) -> str:
        return run_id(self.key())


@dataclass
class FoldData:
    corpus: Corpus
    fingerprint: str  # of the corpus content (``bench.data.corpus.corpus_fingerprint``)
    train: Split
    val: Split
    test: Split
    speakers: dict[str, list[str]] = field(default_factory=dict)  # per split, in the split's order

    @property
    def input_dim(self) -> int:
        return self.train.features[0].shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.corpus.classes)


class Workspace:
    """Caches shared by the runs of one process: corpus listings and their fingerprints, features,
    and the normalized splits of the latest fold (one fold at a time, so memory stays flat over a
    long grid)."""

    def __init__(self, cache_dir: Path, data_roots: dict[str, Path] | None = None, progress: bool = True,
                 defer_latency: bool = False, device: str = "cpu", amp: bool = False):
        self.cache_dir = Path(cache_dir)
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise BenchError(f"cache folder {self.cache_dir} is a file: give a folder with --cache-dir "
                             "or HRF_BENCH_CACHE")
        self.data_roots = data_roots or {}
        self.progress = progress
        self.defer_latency = defer_latency  # leave latency to the serialized ``bench measure`` stage
        self._listings: dict = {}
        # Evaluate every run's float ONNX export in ONNX Runtime (int8 models always are); 0 skips it:
        # a fresh export per new architecture costs 10 s to minutes, see docs/latency.md.
        self.onnx_check = os.environ.get("HRF_BENCH_ONNX_CHECK", "1") not in ("", "0")
        self.device = resolve_device(device)  # training and evaluation; latency stays on the CPU
        check_amp(self.device, amp)
        self.amp = amp  # bf16 autocast while training (CUDA, or a CPU with native bf16)
        self._corpora: dict = {}
        self._fold: tuple | None = None  # (key, FoldData) of the latest fold

    def root_for(self, dataset: str) -> Path | None:
        if dataset in self.data_roots:
            return Path(self.data_roots[dataset])
        env = os.environ.get(f"HRF_BENCH_{dataset.upper().replace('-', '_')}_ROOT")
        return Path(env) if env else None

    def listing(self, dataset: str, dataset_params: dict) -> tuple[Corpus, str]:
        """The dataset's corpus (utterances, labels, folds; no features) and its fingerprint,
        loaded once per process."""
        key = (dataset, json.dumps(dataset_params, sort_keys=True))
        if key not in self._listings:
            entry = DATASETS.get(dataset)
            corpus = entry.obj(self.root_for(dataset), self.cache_dir, entry.make_params(dataset_params))
            self._listings[key] = (corpus, corpus_fingerprint(corpus, self.cache_dir))
        return self._listings[key]

    def fingerprint(self, dataset: str, dataset_params: dict) -> str:
        return self.listing(dataset, dataset_params)[1]

    def check_features(self, dataset: str, dataset_params: dict, features: FeatureConfig) -> None:
        """A one-line error when ``features`` asks for front-end settings that a corpus of pre-extracted
        arrays cannot honour (they were ignored, yet recorded and part of the run id). Its arrays are
        used as they are, or summarized into functionals (``logmel-stats``)."""
        corpus = self.listing(dataset, dataset_params)[0]
        if not corpus.utterances or any(u.features is None for u in corpus.utterances):
            return
        front_end = {k: v for k, v in asdict(features).items() if k not in ("kind", "normalize")}
        default = {k: v for k, v in asdict(FeatureConfig()).items() if k not in ("kind", "normalize")}
        changed = sorted(k for k in front_end if front_end[k] != default[k])
        if features.kind not in ("logmel", "logmel-stats") or changed:
            what = f"--features {features.kind}" if features.kind not in ("logmel", "logmel-stats") else \
                ", ".join(f"{k.replace('_', '-')}={front_end[k]}" for k in changed)
            raise BenchError(f"dataset {dataset} ships pre-extracted feature arrays, so {what} cannot apply: "
                             "drop it (logmel-stats, their functionals, and --normalize do apply)")

    def corpus(self, dataset: str, dataset_params: dict, features: FeatureConfig) -> tuple[Corpus, dict]:
        key = (dataset, json.dumps(dataset_params, sort_keys=True), features)
        if key not in self._corpora:
            listing, fingerprint = self.listing(dataset, dataset_params)
            corpus = replace(listing, skipped=list(listing.skipped))  # each feature setting lists its own skips
            self._corpora[key] = (corpus, extract(corpus, features, self.cache_dir, self.progress, fingerprint))
        return self._corpora[key]

    def fold_data(self, spec: RunSpec) -> FoldData:
        key = (spec.dataset, json.dumps(spec.dataset_params, sort_keys=True), spec.features, spec.fold)
        if self._fold is None or self._fold[0] != key:
            self._fold = None  # free the previous fold's splits before building the next
            corpus, features = self.corpus(spec.dataset, spec.dataset_params, spec.features)
            fingerprint = self.fingerprint(spec.dataset, spec.dataset_params)
            fold = corpus.fold(spec.fold)
            splits = {name: [i for i in getattr(fold, name) if corpus.utterances[i].id in features]
                      for name in ("train", "val", "test")}
            present = sorted({corpus.utterances[i].label for i in splits["train"]})
            if len(present) < 2:  # one class scores 100 % UA whatever the model does
                raise BenchError(f"{spec.dataset} fold {spec.fold}: its training utterances have "
                                 f"{len(present)} class(es) ({', '.join(present) or 'none'}); a classifier needs at "
                                 f"least two: check the corpus's labels")
            normalized = normalize(corpus, features, splits, spec.features.normalize)
            grouped = any(u.group for u in corpus.utterances)

            def make(indices):
                utts = [corpus.utterances[i] for i in indices]
                return Split([normalized[u.id] for u in utts],
                             torch.tensor([corpus.label_index(u) for u in utts]),
                             [u.group or u.id for u in utts] if grouped else None)

            speakers = {n: [corpus.utterances[i].speaker for i in splits[n]] for n in ("train", "val", "test")}
            self._fold = (key, FoldData(corpus, fingerprint, *(make(splits[n]) for n in ("train", "val", "test")),
                                        speakers))
        return self._fold[1]


def normalize(corpus: Corpus, features: dict[str, torch.Tensor], splits: dict[str, list[int]],
              how: str) -> dict[str, torch.Tensor]:
    """Standardized features of the fold's utterances (``splits``: corpus indices per split).

    ``global``: one mean and standard deviation per dimension, from the training split's frames only.
    ``speaker``: each speaker's frames with that speaker's own statistics; speakers never cross
    splits, so test speakers are standardized with their own unlabeled frames, never with training
    statistics or labels."""
    utterances = [corpus.utterances[i] for i in (*splits["train"], *splits["val"], *splits["test"])]
    if how == "global":
        train_frames = torch.cat([features[corpus.utterances[i].id] for i in splits["train"]])
        mean, std = train_frames.mean(0), train_frames.std(0).clamp(min=1e-5)
        return {u.id: (features[u.id] - mean) / std for u in utterances}
    by_speaker: dict[str, list] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u)
    if len(by_speaker) == len(utterances) > 1:
        raise BenchError(f"per-speaker normalization needs speaker labels, but every utterance of {corpus.name} "
                         "has its own speaker: use --normalize global")
    normalized = {}
    for members in by_speaker.values():
        frames = torch.cat([features[u.id] for u in members])
        mean, std = frames.mean(0), frames.std(0).nan_to_num(1.0).clamp(min=1e-5)
        normalized.update({u.id: (features[u.id] - mean) / std for u in members})
    return normalized


# Where a run's wall time goes: ``seconds_<phase>`` in its record (``bench.schema.TIMING`` says what each
# covers; ``seconds_other`` is the rest).
PHASES = tuple(name.removeprefix("seconds_") for name in schema.TIMING if name != "seconds_other")


class PhaseTimes:
    """Seconds per phase of one run (:data:`PHASES`)."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def record(self, wall_seconds: float) -> dict:
        fields = {f"seconds_{name}": value for name, value in self.seconds.items()}
        return fields | {"seconds_other": max(0.0, wall_seconds - sum(self.seconds.values()))}


class RunContext:
    """What a method sees of the run: the data, model builders and the shared trainer."""

    def __init__(self, spec: RunSpec, data: FoldData, workspace: Workspace, times: PhaseTimes | None = None):
        self.spec, self.data, self.workspace = spec, data, workspace
        self.fits: list[FitResult] = []
        self.reused_fits: list[FitResult] = []  # of cached plain models a method builds on (not its own training)
        self.notes: dict = {}
        self.times = times or PhaseTimes()

    def new_model(self, preset: str | None = None, **overrides) -> nn.Module:
        """A freshly initialized backbone at ``preset`` (default: the run's), seeded by the run seed, with
        the dropout of that preset's recipe."""
        torch.manual_seed(self.spec.seed)
        preset = preset or self.spec.preset
        overrides = {"dropout": self.spec.train_config(preset).dropout} | overrides
        return build_backbone(self.spec.backbone, preset, self.data.input_dim, self.data.num_classes, **overrides)

    def epoch_flops(self, model: nn.Module, companions: list[nn.Module] = (), preset: str | None = None) -> int | None:
        """Estimated FLOPs of one training epoch of ``model`` (and forwards of ``companions``) with
        ``preset``'s recipe (default: the run's), as records count them (:func:`training_flops_per_epoch`)."""
        return training_flops_per_epoch(model, companions, self.data, self.spec.train_config(preset))

    def fit(self, model: nn.Module, loss_fn=None, extra_parameters=None, epochs: int | None = None,
            desc: str | None = None, checkpoint: Path | None = None, preset: str | None = None,
            companions: list[nn.Module] = ()) -> nn.Module:
        """Train with the shared trainer and ``preset``'s recipe (default: the run's preset), checkpointing
        every epoch (default: the run's k-th training) and resuming from the checkpoint an interrupted
        attempt left. ``companions``: modules ``loss_fn`` runs (a teacher), moved to the training device."""
        config = self.spec.train_config(preset)
        config = config if epochs is None else TrainConfig(**(asdict(config) | {"epochs": epochs}))
        # counted before training, while the models are on the CPU; the structure that trains is what counts
        per_epoch = training_flops_per_epoch(model, companions, self.data, config)
        path = checkpoint or run_checkpoint(self.workspace.cache_dir, self.spec.run_id, len(self.fits))
        trim_heap()  # memory earlier work freed is not reused unseen by this training's peak
        started = time.perf_counter()
        with TrainingMemory(self.workspace.device) as memory:
            result, resumed_from = resumable_fit(
                model, self.data.train, self.data.val, self.data.num_classes, config, self.spec.seed, path,
                loss_fn=loss_fn, extra_parameters=extra_parameters, progress=self.workspace.progress,
                desc=desc or self.spec.method, device=self.workspace.device, amp=self.workspace.amp,
                companions=companions)
        result.peak_memory_bytes, result.peak_memory_how = memory.bytes, memory.how
        elapsed = time.perf_counter() - started
        validation = min(elapsed, result.validation_seconds)  # of this attempt's epochs (a resumed fit: and earlier ones)
        self.times.seconds["training"] += elapsed - validation
        self.times.seconds["validation"] += validation
        if resumed_from:
            self.notes["resumed_from_epoch"] = resumed_from
        result.train_flops = None if per_epoch is None else per_epoch * result.epochs_run
        self.fits.append(result)
        return model

    def trained_model(self, preset: str, reused: bool = True) -> nn.Module:
        """A plain model of ``preset`` trained with the run's settings, cached on disk and reused by
        every method and later run that needs it (baselines, teachers, pruning sources). Its training
        counts as the run's ``reused_fit_seconds``, or with ``reused=False`` (the baseline, whose deploy
        model it is) as its ``fit_seconds``."""
        spec = self.spec
        path = cached_model_path(self.workspace.cache_dir, spec.plain_model_name(preset))
        model = self.new_model(preset)
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_suffix(".lock")):  # concurrent workers needing this model train it once
            saved = load_cached_model(path, model) if path.exists() else None
            if saved is not None:
                self.fits.append(FitResult(**saved["fit"]))
                if reused:
                    self.reused_fits.append(self.fits[-1])
                # The key holds settings, not code: say which code trained a reused model.
                trained_by = saved.get("git_commit", "unknown")
                self.notes.update({f"{preset}_model_cache": "hit", f"{preset}_model_git_commit": trained_by})
                log.info("reused cached %s %s model (fold %d, seed %d)", spec.backbone, preset, spec.fold, spec.seed)
                if trained_by != git_commit():
                    log.warning("the cached %s %s model was trained by commit %s, this is %s; a fresh "
                                "--cache-dir retrains it", spec.backbone, preset, trained_by, git_commit())
                return model.eval()
            if path.exists():  # a damaged file may have loaded part of its weights: start afresh
                model = self.new_model(preset)
            checkpoint = model_checkpoint(self.workspace.cache_dir, path.stem)
            self.fit(model, desc=f"{spec.backbone}-{preset}", checkpoint=checkpoint, preset=preset)
            if reused:
                self.reused_fits.append(self.fits[-1])
            self.notes.update({f"{preset}_model_cache": "miss", f"{preset}_model_git_commit": git_commit()})
            log.info("trained %s %s model (fold %d, seed %d)", spec.backbone, preset, spec.fold, spec.seed)
            cached = {"state_dict": model.state_dict(), "fit": asdict(self.fits[-1]), "git_commit": git_commit()}
            atomic_write(path, lambda tmp: torch.save(cached, tmp))
            checkpoint.unlink(missing_ok=True)
        return model

    def large_model(self) -> nn.Module:
        """The trained teacher / pruning source: the ``teacher_preset`` model (default ``large``)."""
        return self.trained_model(self.spec.teacher_preset)


def training_flops_per_epoch(model: nn.Module, companions, data: FoldData, config: TrainConfig) -> int | None:
    """Estimated FLOPs of one training epoch: per utterance, forward and backward of the model that trains
    (3 forward passes' worth, the usual rule: the backward pass costs about twice the forward) and one
    forward of each companion (a teacher), at the training split's mean length, times the utterances an
    epoch sees (training and validation speakers after a final fit). None when MACs cannot be counted."""
    utterances = list(data.train.features) + (list(data.val.features) if config.final_fit else [])
    if not utterances:
        return None
    frames = max(1, round(sum(f.shape[0] for f in utterances) / len(utterances)))
    states = [(m, m.training) for m in (model, *companions)]
    try:
        forward = 2 * costs.count_macs(model, data.input_dim, frames)
        teachers = sum(2 * costs.count_macs(c, data.input_dim, frames) for c in companions)
    except Exception:  # noqa: BLE001 - an exotic layer the counter cannot trace: no estimate, not a failed run
        return None
    finally:
        for module, training in states:
            module.train(training)
    return int((3 * forward + teachers) * len(utterances))


def cached_model_path(cache_dir: Path, cache_name: str) -> Path:
    """Where the shared plain model ``cache_name`` (``RunSpec.plain_model_name``) is cached."""
    return Path(cache_dir) / "models" / f"{cache_name}.pt"


def load_cached_model(path: Path, model: nn.Module) -> dict | None:
    """Load a cached plain model's weights into ``model`` and return the cache entry; None, with a
    warning naming the file, when it is unreadable (truncated, junk, another architecture), so that
    the model is trained again and the file replaced. Read as data (``weights_only``): a cache file that
    would run code when unpickled is refused, like any other damage."""
    try:
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        FitResult(**saved["fit"])
        return saved
    except Exception as error:  # torch and pickle raise many types for a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warning("cached model %s is unreadable (%s); training it again", path, reason)
        return None


def measure_deploy(model: nn.Module, input_dim: int, frames: int, latency: bool = True,
                   reference: nn.Module | None = None, graph_cache: Path | None = None,
                   times: PhaseTimes | None = None, graph: bytes | None = None) -> dict:
    """Deploy-model figures for the record, kept cheap: costs (params, MACs, FLOPs, size, peak memory)
    and 1-thread latency at LATENCY_SECONDS, timed against ``reference`` (the plain lightweight model
    of the backbone); ``bench measure`` covers runtimes, threads and durations. Without ``latency`` the
    record is marked ``latency_deferred`` for ``bench measure``. ``times``: where the seconds go."""
    times = times or PhaseTimes()
    with times.phase("costs"):
        figures = {"input_seconds": LATENCY_SECONDS, "input_frames": frames, "input_dim": input_dim,
                   **costs.cost_figures(model, input_dim, frames)}
    if latency:
        with times.phase("costs"):
            macs = onnx_io.graph_macs(graph, input_dim, frames) if graph else {"float_macs": figures["macs"]}
        with times.phase("latency"), costs.exclusive():  # one timing at a time on this machine (``bench measure``)
            figures.update(costs.deploy_latency(model, reference, input_dim, frames, macs, graph_cache,
                                                  audio_seconds=LATENCY_SECONDS, graph=graph))
    else:
        figures["latency_deferred"] = True
    return figures


def deploy_model(ctx: RunContext) -> tuple[Deployed, int, dict]:
    """Each component's check -> build -> train -> deploy hooks in turn (``bench run`` and ``bench tune``
    trials): what ships (the module in eval mode, and the graph the last method ships, if any), the most
    parameters trained at once, and the methods' figures. A method that declares the run impossible
    (e.g. an unreachable budget) raises :class:`RunFailed` in its check, before it (for the first method:
    anything) trains."""
    shipped, train_params, method_figures = None, 0, {}
    for position, name in enumerate(ctx.spec.components):
        entry = METHODS.get(name)
        method = entry.obj(entry.make_params(ctx.spec.method_params.get(name)))
        start = shipped.model if shipped is not None else None
        method.check(ctx, start)
        model = method.build(ctx, start)
        model = method.train(model, ctx)
        train_params = max(train_params, costs.count_params(model))
        shipped = Deployed.of(method.deploy(model, ctx))
        if shipped.graph is not None and position < len(ctx.spec.components) - 1:
            raise BenchError(f"method {name} ships its own ONNX graph, which nothing can train further: it must come "
                             f"last in a composition (declare must_be_last = True)")
        figures = method.record()
        undeclared = sorted(set(figures) - set(method.record_fields))
        if undeclared:
            raise BenchError(f"method {name} records fields its record_fields do not declare: {', '.join(undeclared)}")
        method_figures = schema.merge(method_figures, figures)
    shipped.model.eval()
    return shipped, train_params, method_figures


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


def execute(spec: RunSpec, workspace: Workspace) -> dict:
    """Run ``spec`` and return its record (not yet written), with what ships (a :class:`Deployed`) under ``_deploy_model``;
    a run that a method declares impossible (:class:`RunFailed`) returns a failed record without one."""
    started, times = time.perf_counter(), PhaseTimes()
    with times.phase("data"):
        data = workspace.fold_data(spec)
    if spec.corpus_fingerprint != data.fingerprint:
        if spec.corpus_fingerprint:  # expanded by another process, and the corpus changed since
            raise BenchError(f"the {spec.dataset} corpus changed after the grid was expanded (fingerprint "
                             f"{spec.corpus_fingerprint}, now {data.fingerprint}): run the grid again")
        spec = replace(spec, corpus_fingerprint=data.fingerprint)
    precision = training_precision(workspace.amp)
    if spec.precision != precision:
        if spec.precision != "fp32":  # expanded for another precision than this process trains at
            raise BenchError(f"run {spec.run_id} was planned at {spec.precision} training, but this process "
                             f"trains at {precision}: give the same --amp to every worker")
        spec = replace(spec, precision=precision)
    ctx = RunContext(spec, data, workspace, times)
    methods_started = time.perf_counter()
    try:
        shipped_model, train_params, method_figures = deploy_model(ctx)
    except RunFailed as failure:
        log.warning("run %s (%s %s/%s %s fold %d seed %d) failed: %s", spec.run_id, spec.method, spec.backbone,
                    spec.preset, spec.dataset, spec.fold, spec.seed, failure)
        return schema.merge(run_identity(spec), {"status": "failed", "status_reason": str(failure),
                            "wall_seconds": time.perf_counter() - started,
                            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, environment())
    # the methods' own work: what their hooks took besides the trainings counted as they ran
    times.seconds["methods"] += max(0.0, time.perf_counter() - methods_started - times.seconds["training"]
                                    - times.seconds["validation"])
    # scored in float32 whatever the training precision: the deploy model is a float (or int8) model
    model, graph = shipped_model.model, shipped_model.graph
    final_fit = spec.train_config().final_fit or any(METHODS.get(c).obj.trains_on_validation for c in spec.components)
    with times.phase("scoring"):
        test = evaluate(model.to(workspace.device), data.test, data.num_classes, workspace.device)
        # the validation speakers were trained on: no validation score
        val = ({"ua": None, "wa": None} if final_fit else evaluate(model, data.val, data.num_classes, workspace.device))
    model.to("cpu")  # latency and ONNX stay on the CPU
    frames = spec.features.frames(LATENCY_SECONDS)
    reference = latency_reference(spec, data)
    figures = measure_deploy(model, data.input_dim, frames, not workspace.defer_latency, reference,
                             workspace.cache_dir / "onnx-graphs", times, graph=graph)
    # The ONNX model that ships, evaluated in ONNX Runtime; a method's own graph's scores are the headline.
    shipped, shipped_test = {"onnx_status": "not exported"}, None
    if workspace.onnx_check or graph is not None:
        with times.phase("onnx"):
            shipped, shipped_test = onnx_io.shipped_figures(model, data, frames, workspace.cache_dir / "onnx-graphs",
                                                            graph=graph)
    torch_ua = test["ua"]
    if shipped_test is not None:
        test = shipped_test
        if val["ua"] is not None:  # the validation score of what ships too, as bench tune's trials score it
            with times.phase("onnx"):
                val = scores_of(onnx_io.predict_graph(graph, data.val), data.val, data.num_classes)
    own_fits = [f for f in ctx.fits if not any(f is reused for reused in ctx.reused_fits)]
    cost_fields = dict(figures, int8_macs=0, float_macs=figures["macs"])
    # an int8 graph's costs (MACs by precision, flops, size) replace the float model's: the graph is what ships
    cost_fields.update({k: shipped.pop(k) for k in list(shipped) if k in cost_fields})
    scores = {k: test[k] for k in ("wa", "ua", "macro_f1", "weighted_f1")}
    scores.update(declared_scores(test, data.corpus.metrics, data.corpus.classes))
    record = schema.merge(run_identity(spec), scores, cost_fields, method_figures, shipped, ctx.notes, {
        "status": "ok",
        "train_device": str(workspace.device), "train_amp": workspace.amp,
        "train_precision": training_precision(workspace.amp),
        "confusion": test["confusion"], "classes": data.corpus.classes,
        "headline_metric": data.corpus.headline_metric,
        "dataset_metrics": list(data.corpus.metrics),
        "val_ua": val["ua"], "val_wa": val["wa"],
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "n_fit": len(data.train) + len(data.val) if final_fit else len(data.train),  # utterances trained on
        "skipped_files": len(data.corpus.skipped), "skipped": data.corpus.skipped,
        "ua_torch": torch_ua, "accuracy_runtime": _accuracy_runtime(shipped_test, cost_fields),
        "train_params": train_params,
        "best_epoch": ctx.fits[-1].best_epoch if ctx.fits else None,  # of validation UA
        "deployed_epoch": ctx.fits[-1].deployed_epoch if ctx.fits else None,  # whose weights are deployed
        "history": ctx.fits[-1].history if ctx.fits else [],  # the training that produced the deploy model
        "fit_seconds": sum(f.train_seconds for f in own_fits),  # the method's own training
        "fit_flops": _total_flops(own_fits), "reused_fit_flops": _total_flops(ctx.reused_fits),
        **_peak_memory(own_fits),
        "reused_fit_seconds": sum(f.train_seconds for f in ctx.reused_fits),  # cached models it built on
        "wall_seconds": (wall := time.perf_counter() - started), **times.record(wall),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, environment())
    record["_deploy_model"] = shipped_model  # taken out and saved by the caller
    return record


def _accuracy_runtime(shipped_test: dict | None, costs: dict) -> str:
    """Where the headline scores come from: PyTorch, or ONNX Runtime for a graph the method ships."""
    if shipped_test is None:
        return "pytorch"
    return "onnxruntime int8" if costs.get("size_format") == "int8 onnx" else "onnxruntime"


def _peak_memory(fits: list[FitResult]) -> dict:
    """The largest peak memory of the method's own trainings (None when one was not measured: cached
    before this was recorded, or not measurable here) and how it was measured."""
    values = [f.peak_memory_bytes for f in fits]
    known = bool(values) and all(v is not None for v in values)
    return {"train_peak_memory_bytes": max(values) if known else None,
            "train_peak_memory_how": fits[-1].peak_memory_how if known else None}


def latency_reference(spec: RunSpec, data: FoldData) -> nn.Module:
    """What every latency ratio is timed against: the plain lightweight model of the run's backbone
    (its weights do not matter, so building it leaves the random state alone)."""
    with torch.random.fork_rng():
        return build_backbone(spec.backbone, "lightweight", data.input_dim, data.num_classes).eval()


def _total_flops(fits: list[FitResult]) -> int | None:
    """Summed training FLOPs of ``fits``; None if any is unknown (a model cached before they were counted)."""
    flops = [f.train_flops for f in fits]
    return None if any(f is None for f in flops) else int(sum(flops))


def release_memory() -> None:
    """Hand the memory freed by a finished run back to the system. ``bench`` runs with glibc's
    trimming threshold at 1 GB (``bench.measure.probe.steady_allocator``, for steady latency), so without
    this the heap kept every run's freed tensors and a 40-run EmoDB grid grew from 1.2 GB to 2.4 GB
    resident; trimmed after every run it stays at 0.84-0.91 GB (docs/scaling.md)."""
    gc.collect()  # models in reference cycles (hooks, pruning graphs) go first
    trim_heap()


def trim_heap() -> None:
    """Return the heap's free memory to the system (glibc ``malloc_trim``; elsewhere nothing to do)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass


def save_model(shipped: Deployed, path: Path, record: dict) -> None:
    """Save ``record``'s deploy model as data (see :mod:`bench.measure.model_store`), so that ``bench measure``
    and ``bench.load_model`` use it without retraining; the graph a method ships goes beside it
    (``<run_id>.onnx``)."""
    from bench.measure.model_store import save_deploy_model

    save_deploy_model(shipped, path, record["backbone"], record["input_dim"], len(record["classes"]),
                      [record["preset"], record.get("teacher_preset") or record["preset"]])
