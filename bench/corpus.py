"""What a dataset plug-in returns: utterances with labels and speakers, and its protocol's folds.

A dataset plug-in is a function ``load(root: Path | None, cache_dir: Path, params) -> Corpus``
registered in ``bench.registry.DATASETS``. Folds index into ``Corpus.utterances``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from bench.registry import BenchError


@dataclass(frozen=True)
class Utterance:
    """One labelled piece of speech (a whole file, or a ``start``-``end`` segment of it, in seconds).

    ``features`` points to a pre-extracted ``(frames, dims)`` array instead of audio.
    ``group`` aggregates predictions (e.g. a DAIC-WOZ participant); empty means per utterance.
    """

    id: str
    label: str
    speaker: str
    path: Path | None = None
    start: float | None = None
    end: float | None = None
    features: Path | None = None
    group: str = ""


@dataclass(frozen=True)
class Fold:
    """Indices into ``Corpus.utterances``; validation comes from training speakers only."""

    name: str
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]


@dataclass
class Corpus:
    name: str
    classes: list[str]
    utterances: list[Utterance]
    folds: list[Fold]
    sample_rate: int = 16000
    metrics: tuple[str, ...] = ("wa", "ua", "macro_f1")
    headline_metric: str = "ua"
    skipped: list[str] = field(default_factory=list)  # files that could not be read, never silently
    fingerprint: str = ""  # identifies the exact content, for feature caching

    def label_index(self, utterance: Utterance) -> int:
        return self.classes.index(utterance.label)

    def fold(self, number: int) -> Fold:
        """Fold by 1-based number, with a clear error when out of range."""
        if not 1 <= number <= len(self.folds):
            raise BenchError(f"fold {number} does not exist for {self.name}: choose from 1..{len(self.folds)}")
        return self.folds[number - 1]


def speaker_folds(utterances: list[Utterance], test_groups: list[list[str]], val_speakers: int = 1,
                  seed: int = 0, names: list[str] | None = None) -> list[Fold]:
    """Speaker-independent folds: fold k tests on ``test_groups[k]``; validation is drawn from the
    remaining (training) speakers, ``val_speakers`` of them, chosen reproducibly by ``seed``."""
    folds = []
    for k, test_speakers in enumerate(test_groups):
        test_set = set(test_speakers)
        train_speakers = sorted({u.speaker for u in utterances} - test_set)
        rng = random.Random(f"{seed}-{k}")
        val_set = set(rng.sample(train_speakers, min(val_speakers, len(train_speakers) - 1)))
        split = {"train": [], "val": [], "test": []}
        for i, u in enumerate(utterances):
            key = "test" if u.speaker in test_set else "val" if u.speaker in val_set else "train"
            split[key].append(i)
        name = names[k] if names else f"fold{k + 1}"
        folds.append(Fold(name, tuple(split["train"]), tuple(split["val"]), tuple(split["test"])))
    return folds
