"""Recipe search on validation data only: trains plain models of one backbone with candidate recipe
overrides over folds and seeds, and prints per candidate the mean over trainings of the best
validation UA (what the trainer selects its weights by), the mean validation UA of the last 5 epochs,
and the best epochs. The test split is never read.

Run by hand (not collected by pytest); each candidate is NAME:PRESET:KEY=VALUE,KEY=VALUE... where a key
is a ``TrainConfig`` field or ``model.X``, a preset's architecture setting X (e.g. ``model.conv_channels=64``)

    python tests/benchmarks/recipe_search.py --data-root ../shared/data/emodb --folds 1-5 --epochs 30 \\
        --candidate G1:large:patience=0 --candidate G3:large:patience=0,lr=5e-4 \\
        --candidate L0:lightweight:patience=0 [--backbone conformer] [--jobs 2] [--out search.jsonl]

Trainings run in ``--jobs`` worker processes of 1 thread each; finished ones are appended to ``--out``
as JSON lines (with the per-epoch history) and skipped when the search is run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

import torch

from bench.api import default_cache_dir, parse_ints
from bench.data.features import FeatureConfig
from bench.training.models import build_backbone
from bench.registry import load_builtin_plugins
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from bench.training.trainer import fit

CONFIG_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_candidate(text: str) -> tuple[str, str, dict, dict, dict]:
    """``NAME:PRESET:KEY=VALUE,...`` -> name, preset, training overrides, architecture overrides (keys
    ``model.X``: the preset's ``X``, e.g. ``model.conv_channels=64``, ``model.pooling=meanstd``) and
    feature settings (``features.X``, e.g. ``features.normalize=speaker``)."""
    name, preset, *rest = text.split(":")
    overrides, model_overrides, feature_overrides = {}, {}, {}
    for item in filter(None, ",".join(rest).split(",")):
        key, value = item.split("=")
        if key.startswith("model."):
            model_overrides[key.removeprefix("model.")] = _number(value)
        elif key.startswith("features."):
            feature_overrides[key.removeprefix("features.")] = _number(value)
        elif key not in CONFIG_TYPES:
            raise SystemExit(f"unknown recipe field {key!r}: one of {', '.join(CONFIG_TYPES)}, or model.KEY")
        elif "bool" in str(CONFIG_TYPES[key]):
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif "str" in str(CONFIG_TYPES[key]):
            overrides[key] = value
        else:
            overrides[key] = float(value) if "float" in str(CONFIG_TYPES[key]) else int(value)
    if overrides.get("final_fit"):
        raise SystemExit(f"{name}: a search scores on the validation speakers, so it cannot train on them (final_fit)")
    return name, preset, overrides, model_overrides, feature_overrides


def train_one(job: dict) -> dict:
    torch.set_num_threads(1)
    load_builtin_plugins()
    roots = {job["dataset"]: job["data_root"]} if job["data_root"] else {}  # the embedded corpus needs none
    workspace = Workspace(job["cache_dir"], roots, progress=False)
    spec = RunSpec("baseline", job["backbone"], job["preset"], job["dataset"], job["fold"], job["seed"],
                   TrainConfig(epochs=job["epochs"], **job["overrides"]), FeatureConfig(**job["feature_overrides"]))
    data = workspace.fold_data(spec)
    config = spec.train_config()  # the overrides over the preset's recipe
    torch.manual_seed(job["seed"])
    model = build_backbone(job["backbone"], job["preset"], data.input_dim, data.num_classes, dropout=config.dropout,
                           **job["model_overrides"])
    result = fit(model, data.train, data.val, data.num_classes, config, job["seed"], progress=False)
    return job | {"best_epoch": result.best_epoch, "best_val_ua": result.best_val_ua,
                  "seconds": result.train_seconds, "history": result.history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", action="append", required=True, help="NAME:PRESET:KEY=VALUE,...")
    parser.add_argument("--backbone", default="convtransformer")
    parser.add_argument("--dataset", default="emodb")
    parser.add_argument("--data-root", help="the corpus folder (not for --dataset embedded)")
    parser.add_argument("--folds", default="1-5")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    parser.add_argument("--out", default="recipe-search.jsonl")
    args = parser.parse_args()
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    key = lambda r: (r["name"], r["backbone"], r["fold"], r["seed"], r["epochs"])  # noqa: E731
    finished = {key(r) for r in done}
    candidates = list(map(parse_candidate, args.candidate))
    # a candidate's epochs=N replaces --epochs: each result's "epochs" is what it trained, part of its key
    epochs = {name: overrides.pop("epochs", args.epochs) for name, _, overrides, _, _ in candidates}
    jobs = []
    for fold in parse_ints(args.folds, "--folds"):
        for seed in parse_ints(args.seeds, "--seeds"):
            for name, preset, overrides, model_overrides, feature_overrides in candidates:
                job = dict(name=name, preset=preset, overrides=overrides, model_overrides=model_overrides,
                           feature_overrides=feature_overrides,
                           backbone=args.backbone, dataset=args.dataset, data_root=args.data_root, fold=fold,
                           seed=seed, epochs=epochs[name], cache_dir=args.cache_dir)
                if key(job) not in finished:
                    jobs.append(job)
    print(f"{len(jobs)} trainings to run, {len(finished)} already in {out}", file=sys.stderr)
    with ProcessPoolExecutor(args.jobs) as pool:
        for result in pool.map(train_one, jobs):
            done.append(result)
            with out.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
            print(f"{result['name']} fold {result['fold']} seed {result['seed']}: best validation UA "
                  f"{result['best_val_ua']:.3f} at epoch {result['best_epoch']} ({result['seconds']:.0f} s)",
                  file=sys.stderr)
    print("candidate  preset        trainings  best val UA  last-5 val UA  best epochs")
    for name in epochs:
        rows = [r for r in done if r["name"] == name and r["backbone"] == args.backbone and r["epochs"] == epochs[name]]
        if rows:
            last5 = [statistics.mean(e["val_ua"] for e in r["history"][-5:]) for r in rows]
            print(f"{name:10} {rows[0]['preset']:12} {len(rows):10} {statistics.mean(r['best_val_ua'] for r in rows):12.3f} "
                  f"{statistics.mean(last5):14.3f}  {sorted(r['best_epoch'] for r in rows)}")


if __name__ == "__main__":
    main()
