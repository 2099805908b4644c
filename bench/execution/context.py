"""What a method's hooks see during a run (``RunContext``): the spec, the fold's data, the trained plain
models it may start from (trained once, cached on disk), training with checkpoints, and phase timing."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from bench import schema
from bench.execution.checkpoint import model_checkpoint, resumable_fit, run_checkpoint
from bench.execution.env import git_commit
from bench.execution.spec import RunSpec
from bench.execution.workspace import FoldData, Workspace
from bench.measure import costs
from bench.paths import atomic_write, file_lock
from bench.training.models import build_backbone
from bench.training.config import TrainConfig
from bench.training.devices import TrainingMemory
from bench.training.trainer import FitResult

log = logging.getLogger("bench")


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
        overrides = {"dropout": self.spec.train_config(preset).dropout} | self.spec.build_overrides | overrides
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
                # a worker stopped between caching this model and removing its checkpoint left one behind
                model_checkpoint(self.workspace.cache_dir, spec.plain_model_name(preset)).unlink(missing_ok=True)
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
