"""RAVDESS speech: 1,440 files by 24 actors, 8 emotions, 48 kHz (resampled to 16 kHz when read; the
few stereo files are downmixed by ``bench.data.features.read_audio``).

Layout: ``Actor_NN/03-01-EE-II-SS-RR-AA.wav`` (modality, vocal channel, emotion, intensity, statement,
repetition, actor), directly in the given folder or one folder below it (e.g. the archive's
``Audio_Speech_Actors_01-24/``). Song files (vocal channel 02) are left out.
Protocol: actor-independent folds of consecutive actors (each fold has as many odd = male as even = female).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.data.corpus import Corpus, Utterance, speaker_folds
from bench.data.datasets._layout import audio_files, check_nonempty, contiguous_groups, require_root, visible
from bench.registry import DATASETS, BenchError, param

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}
CLASSES = list(EMOTIONS.values())
NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})\.(?i:wav)$")
SPEECH = "01"
EXPECTED = "Actor_NN/ folders of files named like 03-01-05-01-02-01-12.wav"


@dataclass
class RavdessParams:
    folds: int = param(6, "actor-independent folds (24 = leave-one-actor-out)", low=2, high=24)
    val_speakers: int = param(2, "training actors held out for validation (model selection)", low=1)


def read_utterances(root: Path) -> list[Utterance]:
    files = [p for folder in visible(root.glob("Actor_*")) for p in audio_files(folder)] or \
        [p for folder in visible(root.glob("*/Actor_*")) for p in audio_files(folder)]
    utterances = []
    for path in files:
        match = NAME.match(path.name)
        if match is None:
            raise BenchError(f"{path} does not follow RAVDESS's file names MM-VV-EE-II-SS-RR-AA.wav: "
                             f"move it out of {path.parent}")
        _, channel, emotion, _, _, _, actor = match.groups()
        if emotion not in EMOTIONS:
            raise BenchError(f"unknown emotion code {emotion!r} in {path}: RAVDESS uses 01..08")
        if channel == SPEECH:
            utterances.append(Utterance(path.stem, EMOTIONS[emotion], actor, path=path))
    check_nonempty("ravdess", root, utterances, EXPECTED)
    return utterances


@DATASETS.register("ravdess", "RAVDESS speech (8 emotions, 24 actors, 48 kHz); actor-independent folds",
                   params=RavdessParams)
def load(root: Path | None, cache_dir: Path, params: RavdessParams) -> Corpus:
    root = require_root("ravdess", root)
    utterances = read_utterances(root)
    groups = contiguous_groups(sorted({u.speaker for u in utterances}), params.folds)
    folds = speaker_folds(utterances, groups, val_speakers=params.val_speakers,
                          names=[f"test_actors_{g[0]}-{g[-1]}" for g in groups])
    return Corpus("ravdess", CLASSES, utterances, folds, sample_rate=48000, metrics=("wa", "ua", "macro_f1"),
                  headline_metric="ua")
