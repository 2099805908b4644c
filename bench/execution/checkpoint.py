"""Epoch checkpoints, so that an interrupted training resumes from its last finished epoch.

One file per training under ``<cache_dir>/checkpoints/``: ``run-<run_id>-<k>.pt`` for the k-th
training of a run, ``model-<cache name>.pt`` for a shared plain model. A checkpoint holds the
model, the trainer's state (optimizer, scheduler, batch-order generator, global torch RNG, best
epoch so far) and any extra trained parameters, so that a resumed training reproduces the
uninterrupted one. It is written atomically after every epoch and removed once its result is
stored (the run recorded, the plain model cached).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from bench.paths import atomic_write
from bench.training.config import TrainConfig
from bench.training.splits import Split
from bench.training.trainer import FitResult, fit

log = logging.getLogger("bench")


def checkpoint_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "checkpoints"


def run_checkpoint(cache_dir: Path, run_id: str, index: int) -> Path:
    """Checkpoint of the ``index``-th training of run ``run_id``."""
    return checkpoint_dir(cache_dir) / f"run-{run_id}-{index}.pt"


def model_checkpoint(cache_dir: Path, cache_name: str) -> Path:
    """Checkpoint of the shared plain model cached as ``models/<cache_name>.pt``."""
    return checkpoint_dir(cache_dir) / f"model-{cache_name}.pt"


def discard_run_checkpoints(cache_dir: Path, run_id: str) -> None:
    """Remove every checkpoint of run ``run_id`` (called once the run is recorded)."""
    for path in checkpoint_dir(cache_dir).glob(f"run-{run_id}-*.pt"):
        path.unlink(missing_ok=True)


def discard_recorded_checkpoints(cache_dir: Path, recorded: set[str]) -> int:
    """Remove the checkpoints of runs in ``recorded`` (run ids): a worker killed after writing a run's
    record but before removing its checkpoints leaves them, and a recorded run never trains again to
    remove them. Returns how many were removed."""
    removed = 0
    for path in checkpoint_dir(cache_dir).glob("run-*-*.pt"):
        if path.stem[len("run-"):].rsplit("-", 1)[0] in recorded:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _load(path: Path, config: TrainConfig, seed: int) -> dict | None:
    """The checkpoint at ``path`` if it belongs to this training, else None (a fresh start)."""
    if not path.exists():
        return None
    try:  # as data only: a checkpoint that would run code when unpickled is refused like a damaged one
        saved = torch.load(path, weights_only=True)
    except Exception as error:  # a truncated file from a crashed disk: train from scratch
        log.warning("ignoring unreadable checkpoint %s (%s)", path, error)
        return None
    if saved.get("config") != asdict(config) or saved.get("seed") != seed:
        log.warning("ignoring checkpoint %s: it was written with other training settings", path)
        return None
    return saved


def resumable_fit(model: nn.Module, train: Split, val: Split, num_classes: int, config: TrainConfig, seed: int,
                  path: Path, extra_parameters: list[nn.Parameter] | None = None,
                  **fit_options) -> tuple[FitResult, int]:
    """``bench.training.trainer.fit`` that checkpoints every epoch to ``path`` and resumes from it when present.

    Returns the fit result and the epoch it resumed from (0: trained from scratch). ``model`` must be
    built exactly as for the first attempt (same preset and seed); its weights are then replaced by
    the checkpoint's. ``fit_options`` are passed on to ``fit`` (loss_fn, progress, desc).
    """
    extra = list(extra_parameters or [])
    saved = _load(path, config, seed)
    start_epoch, resume_state = 0, None
    if saved is not None:
        model.load_state_dict(saved["model"])
        with torch.no_grad():
            for parameter, value in zip(extra, saved["extra"]):
                parameter.copy_(value)
        resume_state = saved["state"]
        # A finished training (last epoch or early stop) only has to load its best weights again.
        start_epoch = config.epochs if saved["finished"] else saved["epoch"]
        log.info("resuming %s from its epoch %d checkpoint", path.stem, saved["epoch"])

    def save(epoch: int, trained: nn.Module, state: dict) -> None:
        stopped = bool(config.patience) and epoch - state["best_epoch"] >= config.patience
        _save(path, {"config": asdict(config), "seed": seed, "epoch": epoch,
                     "finished": epoch == config.epochs or stopped, "model": trained.state_dict(),
                     "extra": [p.detach().clone() for p in extra], "state": state})

    result = fit(model, train, val, num_classes, config, seed, extra_parameters=extra_parameters,
                 on_epoch_end=save, start_epoch=start_epoch, resume_state=resume_state, **fit_options)
    return result, saved["epoch"] if saved is not None else 0
