"""Harness overhead: the same model, cached features and epochs trained once through the harness
(``bench.execution.runner.execute``: data split, trainer with per-epoch validation, evaluation, measurement)
and once through a minimal hand-written PyTorch loop, alternately (the order flips every repeat, so
that a drift in the machine's speed does not favour either), in one process. One untimed run of each
comes first: the process's one-time costs (allocator growth, lazy initialisation of the FLOP counter
and the profiler, about 2 s once per ``bench run``) are not per-run overhead.

Run by hand:  python tests/benchmarks/harness_overhead.py [--dataset embedded] [--epochs 6] [--repeats 3]
Prints the time ratio harness / bare loop (target <= 1.10) with a bootstrap interval over the repeats.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from bench.api import default_cache_dir
from bench.measure.probe import steady_allocator
from bench.registry import load_builtin_plugins
from bench.execution.context import RunContext
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig


def bare_loop(model: nn.Module, features: list[torch.Tensor], labels: torch.Tensor, config: TrainConfig, seed: int):
    """Plain AdamW + cosine loop over length-sorted batches; no validation, no bookkeeping."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lengths = torch.tensor([f.shape[0] for f in features])
    total = config.epochs * ((len(features) + config.batch_size - 1) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    for _ in range(config.epochs):
        model.train()
        order = torch.argsort(lengths + torch.randint(0, 20, lengths.shape))
        for idx in order.split(config.batch_size):
            batch = pad_sequence([features[i] for i in idx], batch_first=True)
            loss = nn.functional.cross_entropy(model(batch, lengths[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    steady_allocator()  # as the ``bench`` command does at start-up, for both sides
    load_builtin_plugins()
    config = TrainConfig(epochs=args.epochs)
    spec = RunSpec(method="baseline", backbone="convtransformer", preset=args.preset, dataset=args.dataset,
                   fold=1, seed=0, train=config)
    workspace = Workspace(default_cache_dir(), progress=False)
    data = workspace.fold_data(spec)  # features from the cache (computed on first use)
    models_dir = Path(tempfile.mkdtemp())

    def time_bare(spec: RunSpec) -> float:
        model = RunContext(spec, data, workspace).new_model()
        started = time.perf_counter()
        bare_loop(model, data.train.features, data.train.labels, spec.train, spec.seed)
        return time.perf_counter() - started

    def time_harness(spec: RunSpec) -> tuple[float, dict]:
        isolated = Workspace(models_dir, progress=False)  # fresh model cache: the harness really trains
        isolated._folds, isolated._corpora = workspace._folds, workspace._corpora
        started = time.perf_counter()
        record = execute(spec, isolated)
        elapsed = time.perf_counter() - started
        shutil.rmtree(models_dir / "models", ignore_errors=True)
        return elapsed, record

    warmup = replace(spec, train=TrainConfig(epochs=1))
    time_bare(warmup), time_harness(warmup)
    harness_times, fit_times, bare_times = [], [], []
    for repeat in range(args.repeats):
        for side in ("bare", "harness") if repeat % 2 == 0 else ("harness", "bare"):
            if side == "bare":
                bare_times.append(time_bare(spec))
            else:
                elapsed, record = time_harness(spec)
                harness_times.append(elapsed)
                fit_times.append(record["fit_seconds"])
    shutil.rmtree(models_dir, ignore_errors=True)
    print(f"dataset={args.dataset} preset={args.preset} epochs={args.epochs} train utterances={len(data.train)} "
          f"threads={torch.get_num_threads()}")
    print(f"bare loop: {[f'{t:.2f}' for t in bare_times]} s; harness: {[f'{t:.2f}' for t in harness_times]} s, "
          f"of which training (with validation and checkpoints): {[f'{t:.2f}' for t in fit_times]} s")
    harness, bare, fit = (np.array(t) for t in (harness_times, bare_times, fit_times))
    paired = harness / bare  # neighbours in time: a slow stretch of the machine hits both sides of a pair
    # The machine's speed drifts by several % over a run, so give the ratio an interval: a bootstrap
    # over the repeats (pairs kept together) of the ratio of total times.
    picks = np.random.default_rng(0).integers(0, len(paired), (10_000, len(paired)))
    low, high = np.percentile(harness[picks].sum(1) / bare[picks].sum(1), [5, 95])
    print(f"harness / bare loop = {harness.sum() / bare.sum():.3f} (90 % bootstrap interval {low:.3f}-{high:.3f}; "
          f"median per-repeat ratio {np.median(paired):.3f}, range {paired.min():.3f}-{paired.max():.3f}); "
          f"training alone / bare loop = {fit.sum() / bare.sum():.3f}")


if __name__ == "__main__":
    main()
