"""Helpers the corpus loaders share: root checks, file listing, speaker groups and stratified picks.

Every problem a user can fix is a one-line ``BenchError`` naming the folder or file.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.data.corpus import Fold, Utterance
from bench.paths import expand_user
from bench.registry import BenchError

log = logging.getLogger("bench")


def require_root(dataset: str, root: Path | None) -> Path:
    """The corpus folder the user gave, or an error saying how to give it."""
    if root is None:
        env = f"HRF_BENCH_{dataset.upper().replace('-', '_')}_ROOT"
        raise BenchError(f"dataset {dataset} needs its folder: pass --data-root {dataset}=PATH or set {env}")
    root = expand_user(root)
    if not root.is_dir():
        raise BenchError(f"folder {root} given for dataset {dataset} does not exist or is not a folder")
    return root


def not_the_corpus(dataset: str, root: Path, expected: str) -> BenchError:
    return BenchError(f"folder {root} does not look like {dataset}: expected {expected}")


def visible(paths) -> list[Path]:
    """Sorted paths without hidden files and macOS resource forks (``._name``)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def audio_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Visible ``.wav`` files of ``folder`` (below it too when ``recursive``), whatever the case of
    the suffix (``.WAV`` from Windows tools counts)."""
    paths = folder.rglob("*") if recursive else folder.glob("*")
    return visible(p for p in paths if p.suffix.lower() == ".wav" and not p.is_dir())


def find_file(root: Path, name: str, depth: int = 2) -> Path | None:
    """``root/name`` or the same name at most ``depth`` folders below ``root`` (first in sorted order)."""
    for level in range(depth + 1):
        found = visible(root.glob("/".join(["*"] * level + [name])))
        if found:
            return found[0]
    return None


def note_skipped(dataset: str, messages: list[str]) -> list[str]:
    """Print what a loader leaves out (missing files), so that nothing is dropped silently."""
    for message in messages:
        log.warning("%s: skipped: %s", dataset, message)
    return messages


def contiguous_groups(speakers: list[str], folds: int) -> list[list[str]]:
    """Sorted speakers cut into ``folds`` contiguous groups of nearly equal size (fold k tests group k)."""
    speakers = sorted(speakers)
    if not 1 < folds <= len(speakers):
        raise BenchError(f"cannot make {folds} speaker-independent folds from {len(speakers)} speakers: "
                         f"choose between 2 and {len(speakers)} folds")
    return [list(group) for group in np.array_split(np.array(speakers, dtype=object), folds)]


def stratified_pick(labels: dict[str, str], fraction: float, seed: int) -> set[str]:
    """About ``fraction`` of the keys of ``labels`` (key -> label), drawn per label so that every label
    with at least two keys is represented; reproducible for ``seed``."""
    by_label = defaultdict(list)
    for key, label in sorted(labels.items()):
        by_label[label].append(key)
    rng = random.Random(seed)
    picked = set()
    for label in sorted(by_label):
        keys = by_label[label]
        count = min(len(keys) - 1, max(1, round(fraction * len(keys)))) if len(keys) > 1 else 0
        picked.update(rng.sample(keys, count))
    return picked


def fold_from_units(name: str, units: list[str], train: set[str], val: set[str], test: set[str]) -> Fold:
    """A fold from sets of units (speakers, series or participants); ``units[i]`` is utterance i's unit.
    Utterances of units in none of the sets are left out."""
    split = {"train": [], "val": [], "test": []}
    for i, unit in enumerate(units):
        for key, members in (("test", test), ("val", val), ("train", train)):
            if unit in members:
                split[key].append(i)
                break
    return Fold(name, tuple(split["train"]), tuple(split["val"]), tuple(split["test"]))


def check_nonempty(dataset: str, root: Path, utterances: list[Utterance], expected: str) -> None:
    if not utterances:
        raise not_the_corpus(dataset, root, expected)
