"""CREMA-D: 7,442 clips by 91 actors, 6 emotions, 16 kHz.

Layout: ``AudioWAV/AAAA_SSS_EEE_LL.wav`` (e.g. ``1001_DFA_ANG_XX.wav``): actor, sentence, emotion,
level; the given folder may also be ``AudioWAV`` itself. Protocol: actor-independent folds of
consecutive actor ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.data.corpus import Corpus, Utterance, speaker_folds
from bench.data.datasets._layout import audio_files, check_nonempty, contiguous_groups, require_root
from bench.registry import DATASETS, BenchError, param

EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CLASSES = list(EMOTIONS.values())
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.(?i:wav)$")
EXPECTED = "an AudioWAV/ folder of files named like 1001_DFA_ANG_XX.wav"


@dataclass
class CremaDParams:
    folds: int = param(5, "actor-independent folds", low=2, high=91)
    val_speakers: int = param(8, "training actors held out for validation (model selection)", low=1)


def read_utterances(root: Path) -> list[Utterance]:
    folder = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    utterances = []
    for path in audio_files(folder):
        match = NAME.match(path.name)
        if match is None:
            raise BenchError(f"{path} does not follow CREMA-D's file names AAAA_SSS_EEE_LL.wav "
                             f"(e.g. 1001_DFA_ANG_XX.wav): move it out of {folder}")
        actor, _, emotion, _ = match.groups()
        if emotion not in EMOTIONS:
            raise BenchError(f"unknown emotion {emotion!r} in {path}: CREMA-D uses {', '.join(EMOTIONS)}")
        utterances.append(Utterance(path.stem, EMOTIONS[emotion], actor, path=path))
    check_nonempty("cremad", root, utterances, EXPECTED)
    return utterances


@DATASETS.register("cremad", "CREMA-D (6 emotions, 91 actors); actor-independent folds", params=CremaDParams)
def load(root: Path | None, cache_dir: Path, params: CremaDParams) -> Corpus:
    root = require_root("cremad", root)
    utterances = read_utterances(root)
    groups = contiguous_groups(sorted({u.speaker for u in utterances}), params.folds)
    folds = speaker_folds(utterances, groups, val_speakers=params.val_speakers,
                          names=[f"test_actors_{g[0]}-{g[-1]}" for g in groups])
    return Corpus("cremad", CLASSES, utterances, folds, metrics=("wa", "ua", "macro_f1"), headline_metric="ua")
