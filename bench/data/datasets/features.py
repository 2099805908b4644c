"""Pre-extracted features: a folder of ``(frames, dims)`` arrays (``.npy`` or ``.mat``) plus a CSV
``name,label[,split][,speaker]``, e.g. wav2vec 2.0 / HuBERT / WavLM features a user already has.

Folds: the ``split`` column (train/val/test) when given, as one fold; else speaker-independent folds
from the ``speaker`` column; else a seeded stratified k-fold split. A missing validation part is
carved from the training part (its speakers when known).
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.corpus import Corpus, Fold, Utterance, speaker_folds
from bench.paths import read_text
from bench.data.datasets._layout import (contiguous_groups, fold_from_units, note_skipped, require_root,
                                    stratified_pick, visible)
from bench.registry import DATASETS, BenchError, param

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
SUFFIXES = (".npy", ".mat")


@dataclass
class FeaturesParams:
    labels: str = param("", "the CSV name,label[,split][,speaker] in the folder (default: its only .csv)")
    folds: int = param(5, "folds when the CSV has no split column (speaker-independent with a speaker column)",
                       low=2)
    val_fraction: float = param(0.1, "share of training speakers (or utterances) held out for validation",
                                low=0.0, high=0.5, low_exclusive=True)
    seed: int = param(0, "seed of the stratified split and the validation draw", low=0)
    headline: str = param("ua", "the leaderboard's headline metric",
                          choices=("wa", "ua", "macro_f1", "weighted_f1"))


def labels_file(root: Path, name: str) -> Path:
    if name:
        path = root / name
        if not path.is_file():
            raise BenchError(f"label file {path} is missing: pass an existing CSV with features.labels=NAME")
        return path
    found = visible(root.glob("*.csv"))
    if len(found) != 1:
        what = "no .csv" if not found else f"{len(found)} .csv files ({', '.join(p.name for p in found)})"
        raise BenchError(f"folder {root} has {what}: name the label CSV with --dataset-param features.labels=NAME")
    return found[0]


def read_rows(path: Path) -> list[dict[str, str]]:
    with io.StringIO(read_text(path, "label file"), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if not {"name", "label"} <= set(columns):
            raise BenchError(f"{path} needs a header with columns name,label[,split][,speaker]")
        rows = [{key: (row[col] or "").strip() for key, col in columns.items()
                 if key in ("name", "label", "split", "speaker")} for row in reader]
    names = Counter(r["name"] for r in rows)
    duplicate = next((n for n, count in names.items() if count > 1), None)
    if duplicate is not None:
        raise BenchError(f"name {duplicate!r} appears {names[duplicate]} times in {path}: names must be unique")
    return rows


def array_file(root: Path, name: str) -> Path | None:
    for path in (root / name, *(root / f"{name}{suffix}" for suffix in SUFFIXES)):
        if path.is_file() and path.suffix in SUFFIXES:
            return path
    return None


def array_shape(path: Path) -> tuple | None:
    """Shape of the array in ``path`` read from its header, or None when unreadable (the feature
    reader then skips and records it)."""
    try:
        if path.suffix == ".mat":
            from scipy.io import whosmat
            return max((shape for _, shape, _ in whosmat(str(path))), key=lambda s: int(np.prod(s)))
        return np.load(path, mmap_mode="r").shape
    except Exception:  # numpy and scipy raise several types for broken files
        return None


def check_dims(utterances: list[Utterance]) -> None:
    """All arrays must have the same feature dimension: name a file that differs."""
    dims = {}
    for u in utterances:
        shape = array_shape(u.features)
        if shape is not None and len(shape) == 2:
            dims.setdefault(shape[1], u.features)
    if len(dims) > 1:
        (dim_a, file_a), (dim_b, file_b) = list(dims.items())[:2]
        raise BenchError(f"feature files differ in dimension: {file_a} has {dim_a}, {file_b} has {dim_b}")


def stratified_folds(utterances: list[Utterance], folds: int, val_fraction: float, seed: int) -> list[Fold]:
    """Utterance-level stratified k-fold (no speaker information); validation from the training part."""
    rng = random.Random(seed)
    part, dealt = {}, 0
    for label in sorted({u.label for u in utterances}):
        ids = [u.id for u in utterances if u.label == label]
        rng.shuffle(ids)
        part.update({i: (dealt + k) % folds for k, i in enumerate(ids)})  # deal on where the last label ended
        dealt += len(ids)
    result = []
    for k in range(folds):
        test = {u.id for u in utterances if part[u.id] == k}
        rest = {u.id: u.label for u in utterances if u.id not in test}
        val = stratified_pick(rest, val_fraction, seed + k)
        result.append(fold_from_units(f"fold{k + 1}", [u.id for u in utterances], set(rest) - val, val, test))
    return result


def split_fold(utterances: list[Utterance], splits: list[str], has_speakers: bool, params: FeaturesParams) -> Fold:
    """One fold from the split column; without val rows, validation is carved from the training rows
    (whole speakers when the CSV names them; an utterance's speaker is its name otherwise)."""
    split = {name: [i for i, s in enumerate(splits) if s == name] for name in ("train", "val", "test")}
    if not split["val"]:
        units = {utterances[i].speaker: "" if has_speakers else utterances[i].label for i in split["train"]}
        held = stratified_pick(units, params.val_fraction, params.seed)
        split["val"] = [i for i in split["train"] if utterances[i].speaker in held]
        split["train"] = [i for i in split["train"] if utterances[i].speaker not in held]
    return Fold("split", tuple(split["train"]), tuple(split["val"]), tuple(split["test"]))


@DATASETS.register("features", "pre-extracted (frames x dims) .npy/.mat arrays plus a CSV name,label[,split]"
                   "[,speaker]", params=FeaturesParams)
def load(root: Path | None, cache_dir: Path, params: FeaturesParams) -> Corpus:
    root = require_root("features", root)
    csv_path = labels_file(root, params.labels)
    rows = read_rows(csv_path)
    utterances, splits, missing = [], [], []
    for number, row in enumerate(rows, 2):
        if not row["name"] or not row["label"]:
            raise BenchError(f"{csv_path}:{number} has an empty name or label")
        split = SPLIT_NAMES.get(row.get("split", "").lower()) if "split" in row else None
        if "split" in row and split is None:
            raise BenchError(f"unknown split {row['split']!r} in {csv_path}:{number}: use train, val or test")
        path = array_file(root, row["name"])
        if path is None:
            missing.append(f"no feature file {row['name']}[.npy|.mat] in {root} (listed in {csv_path}:{number})")
            continue
        utterances.append(Utterance(row["name"], row["label"], row.get("speaker") or row["name"], features=path))
        splits.append(split)
    if not utterances:
        raise BenchError(f"none of the files listed in {csv_path} exists in {root}")
    check_dims(utterances)
    has_speakers = any(row.get("speaker") for row in rows)
    if "split" in rows[0]:
        if not {"train", "test"} <= set(splits):
            raise BenchError(f"the split column of {csv_path} needs both train and test rows")
        folds = [split_fold(utterances, splits, has_speakers, params)]
    elif has_speakers:
        groups = contiguous_groups(sorted({u.speaker for u in utterances}), params.folds)
        train_speakers = len({u.speaker for u in utterances}) - max(len(g) for g in groups)
        folds = speaker_folds(utterances, groups, val_speakers=max(1, round(params.val_fraction * train_speakers)),
                              seed=params.seed)
    else:
        folds = stratified_folds(utterances, params.folds, params.val_fraction, params.seed)
    classes = sorted({u.label for u in utterances})
    return Corpus("features", classes, utterances, folds, metrics=("wa", "ua", "macro_f1", "weighted_f1"),
                  headline_metric=params.headline, skipped=note_skipped("features", missing))
