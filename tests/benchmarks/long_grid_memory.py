"""Memory of a long grid: resident set size (RSS) after every run of one ``bench run``-style loop,
to check that it stays flat after the first fold (issue 13.5).

Run by hand (not collected by pytest), e.g. on EmoDB with one epoch per training:

    nice -n 10 python tests/benchmarks/long_grid_memory.py --datasets emodb \
        --data-root /work/shared/data/emodb --folds 1-5 --epochs 1

Prints one line per run (run number, method, fold, RSS in MB) and a JSON summary at the end.
The runs go through the same claim -> execute -> record path as ``bench run`` (``execute_claimed``),
into a temporary results folder and cache.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.execution.claims import execute_claimed
from bench.execution.grid import make_grid
from bench.measure.probe import steady_allocator
from bench.registry import load_builtin_plugins
from bench.reporting.results import RecordStore
from bench.execution.workspace import Workspace


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="emodb")
    parser.add_argument("--data-root", default="/work/shared/data/emodb")
    parser.add_argument("--methods", default="baseline,hrf,kd,lowrank,prune,prune-unstructured,quant")
    parser.add_argument("--folds", default="1-5")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the curve as JSON here")
    args = parser.parse_args()
    steady_allocator()  # as ``bench`` does at start-up
    load_builtin_plugins()
    low, _, high = args.folds.partition("-")
    folds = list(range(int(low), int(high or low) + 1))
    datasets = args.datasets.split(",")
    grid = make_grid({"methods": args.methods.split(","), "datasets": datasets, "folds": folds,
                      "train": {"epochs": args.epochs}, "data_roots": {datasets[0]: args.data_root}})
    curve = []
    with tempfile.TemporaryDirectory() as scratch:
        store = RecordStore(Path(scratch) / "results")
        workspace = Workspace(Path(scratch) / "cache", grid.data_roots, progress=False)
        started = time.perf_counter()
        print(f"start: {rss_mb():.0f} MB", flush=True)
        for number, spec in enumerate(sorted(grid.specs(workspace), key=lambda s: s.fold), 1):
            execute_claimed(spec, store, workspace)
            curve.append({"run": number, "method": spec.method, "preset": spec.preset, "fold": spec.fold,
                          "rss_mb": round(rss_mb()), "seconds": round(time.perf_counter() - started)})
            print(f"run {number:2d} fold {spec.fold} {spec.method}/{spec.preset}: {curve[-1]['rss_mb']} MB "
                  f"({curve[-1]['seconds']} s)", flush=True)
    summary = {"runs": len(curve), "first_fold_end_mb": max(c["rss_mb"] for c in curve if c["fold"] == folds[0]),
               "last_mb": curve[-1]["rss_mb"], "max_mb": max(c["rss_mb"] for c in curve)}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "curve": curve}, indent=1))


if __name__ == "__main__":
    main()
