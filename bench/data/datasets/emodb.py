"""Berlin EmoDB: 535 German utterances by 10 actors, 7 emotions, read from the original download.

Layout: ``wav/SSTTTEV.wav`` (e.g. ``03a01Fa.wav``): SS speaker, TTT text, E emotion letter, V version.
Protocol: speaker-independent; 5 folds of (male, female) speaker pairs, or leave-one-speaker-out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.data.corpus import Corpus, Utterance, speaker_folds
from bench.data.datasets._layout import audio_files, check_nonempty, not_the_corpus, require_root
from bench.registry import DATASETS, BenchError, param

EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
            "N": "neutral"}
CLASSES = list(EMOTIONS.values())
# One male and one female speaker per fold (male: 03 10 11 12 15, female: 08 09 13 14 16).
SPEAKER_PAIRS = [["03", "08"], ["10", "09"], ["11", "13"], ["12", "14"], ["15", "16"]]
NAME = re.compile(r"^(\d{2})([a-z]\d{2})([A-Z])([a-z])\.(?i:wav)$")
EXPECTED = "a wav/ folder of files named like 03a01Fa.wav"


@dataclass
class EmoDBParams:
    protocol: str = param("pairs", "pairs: 5 folds of speaker pairs; loso: 10 leave-one-speaker-out folds",
                          choices=("pairs", "loso"))
    val_speakers: int = param(2, "training speakers held out for validation (model selection)", low=1, high=7)


def read_utterances(root: Path) -> list[Utterance]:
    """Utterances from ``root/wav`` with labels from the file names; an unknown letter is an error."""
    folder = root / "wav"
    if not folder.is_dir():
        raise not_the_corpus("emodb", root, EXPECTED)
    utterances = []
    for path in audio_files(folder):
        match = NAME.match(path.name)
        if match is None:
            raise BenchError(f"{path} does not follow EmoDB's file names SSTTTEV.wav (e.g. 03a01Fa.wav): "
                             f"move it out of {folder}")
        speaker, _, letter, _ = match.groups()
        if letter not in EMOTIONS:
            raise BenchError(f"unknown emotion letter {letter!r} in {path}: EmoDB uses {''.join(EMOTIONS)}")
        utterances.append(Utterance(path.stem, EMOTIONS[letter], speaker, path=path))
    check_nonempty("emodb", root, utterances, EXPECTED)
    return utterances


@DATASETS.register("emodb", "Berlin EmoDB (7 emotions, 10 actors); speaker-independent folds", params=EmoDBParams)
def load(root: Path | None, cache_dir: Path, params: EmoDBParams) -> Corpus:
    root = require_root("emodb", root)
    utterances = read_utterances(root)
    speakers = sorted({u.speaker for u in utterances})
    if params.protocol == "loso":
        groups = [[s] for s in speakers]
    else:
        groups = [[s for s in pair if s in speakers] for pair in SPEAKER_PAIRS]
        if any(not g for g in groups) or set(speakers) - {s for pair in SPEAKER_PAIRS for s in pair}:
            raise BenchError(f"{root / 'wav'} has speakers {speakers}, not EmoDB's 10 speakers: "
                             f"use --dataset-param emodb.protocol=loso for another speaker set")
    if params.val_speakers >= len(speakers) - max(len(g) for g in groups):
        raise BenchError(f"emodb.val_speakers={params.val_speakers} leaves no training speaker: use fewer")
    folds = speaker_folds(utterances, groups, val_speakers=params.val_speakers,
                          names=[f"test_{'+'.join(g)}" for g in groups])
    return Corpus("emodb", CLASSES, utterances, folds, metrics=("wa", "ua", "macro_f1"), headline_metric="ua")
