"""IEMOCAP, the standard 4-class task: neutral, happy (with excited merged in), angry, sad.

Layout (``IEMOCAP_full_release/``, or the folder holding it):
``Session{n}/dialog/EmoEvaluation/<dialog>.txt`` labels (only the files directly in that folder), and
``Session{n}/sentences/wav/<dialog>/<utterance>.wav`` audio. A label line is tab-separated:
``[6.2901 - 8.2357]  Ses01F_impro01_F000  neu  [2.5000, 2.5000, 2.5000]``.
Protocol: leave-one-session-out (5 folds), or leave-one-speaker-out (10 folds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.data.corpus import Corpus, Utterance, speaker_folds
from bench.data.datasets._layout import check_nonempty, not_the_corpus, require_root, visible
from bench.registry import DATASETS, BenchError, param

CLASSES = ["neutral", "happy", "angry", "sad"]
KEPT = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
DROPPED = {"fru", "sur", "fea", "dis", "oth", "xxx"}
SESSIONS = range(1, 6)
EXPECTED = "Session1..Session5 folders with dialog/EmoEvaluation/*.txt (the IEMOCAP_full_release folder)"


@dataclass
class IemocapParams:
    protocol: str = param("session", "session: leave-one-session-out (5 folds); speaker: leave-one-speaker-out "
                          "(10 folds)", choices=("session", "speaker"))
    improvised_only: bool = param(False, "keep only the improvised dialogs (drop the scripted ones)")
    val_speakers: int = param(1, "training speakers held out for validation (model selection)", low=1, high=7)


def release_folder(root: Path) -> Path:
    """The folder holding Session1..5: ``root`` itself or its ``IEMOCAP_full_release`` child."""
    for folder in (root, root / "IEMOCAP_full_release"):
        if all((folder / f"Session{n}").is_dir() for n in SESSIONS):
            return folder
    raise not_the_corpus("iemocap", root, EXPECTED)


def read_labels(path: Path) -> list[tuple[str, str]]:
    """``(utterance id, category)`` for every label line of one EmoEvaluation file."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.startswith("["):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                raise BenchError(f"{path}:{number} is not a tab-separated label line "
                                 f"('[start - end]<TAB>utterance<TAB>category<TAB>[v, a, d]')")
            utterance, category = fields[1].strip(), fields[2].strip()
            if category not in KEPT and category not in DROPPED:
                raise BenchError(f"unknown IEMOCAP category {category!r} for {utterance} in {path}:{number}: "
                                 f"expected one of {', '.join(sorted(KEPT.keys() | DROPPED))}")
            rows.append((utterance, category))
    return rows


def read_session(folder: Path, session: int) -> list[Utterance]:
    labels = folder / f"Session{session}" / "dialog" / "EmoEvaluation"
    audio = folder / f"Session{session}" / "sentences" / "wav"
    if not labels.is_dir():
        raise BenchError(f"IEMOCAP label folder {labels} is missing: restore it from the release")
    if not audio.is_dir():
        raise BenchError(f"IEMOCAP audio folder {audio} is missing: restore it from the release")
    files = [p for p in visible(labels.glob("*.txt")) if p.is_file()]  # not Categorical/, Attribute/, ...
    if not files:
        raise BenchError(f"no label files (*.txt) in {labels}: restore them from the release")
    utterances = []
    for path in files:
        for utterance, category in read_labels(path):
            if category not in KEPT:
                continue
            dialog, turn = utterance.rsplit("_", 1) if "_" in utterance else ("", "")
            if turn[:1] not in ("F", "M"):
                raise BenchError(f"utterance id {utterance!r} in {path} does not end in _F### or _M###")
            speaker = f"Ses{session:02d}{turn[0]}"  # F000 -> the session's female actor
            utterances.append(Utterance(utterance, KEPT[category], speaker, path=audio / dialog / f"{utterance}.wav"))
    return utterances


@DATASETS.register("iemocap", "IEMOCAP 4 classes (exc merged into hap); leave-one-session-out folds",
                   params=IemocapParams)
def load(root: Path | None, cache_dir: Path, params: IemocapParams) -> Corpus:
    root = require_root("iemocap", root)
    folder = release_folder(root)
    utterances = [u for n in SESSIONS for u in read_session(folder, n)]
    if params.improvised_only:
        utterances = [u for u in utterances if "_impro" in u.id]
    check_nonempty("iemocap", root, utterances, "labelled neu/hap/exc/ang/sad utterances in " + EXPECTED)
    speakers = sorted({u.speaker for u in utterances})
    if params.protocol == "speaker":
        groups, names = [[s] for s in speakers], speakers
    else:
        groups = [[s for s in speakers if s.startswith(f"Ses{n:02d}")] for n in SESSIONS]
        names = [f"Session{n}" for n in SESSIONS]
    folds = speaker_folds(utterances, groups, val_speakers=params.val_speakers, names=names)
    return Corpus("iemocap", CLASSES, utterances, folds, metrics=("wa", "ua"), headline_metric="ua")
