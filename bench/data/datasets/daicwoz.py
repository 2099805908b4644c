"""DAIC-WOZ: binary depression (PHQ8_Binary) from the participant's speech in clinical interviews.

Layout: ``XXX_P/XXX_AUDIO.wav`` and ``XXX_P/XXX_TRANSCRIPT.csv`` (tab-separated
``start_time stop_time speaker value``) per session, and the AVEC 2017 label files
``train_split_Depression_AVEC2017.csv`` / ``dev_split_Depression_AVEC2017.csv`` (``full_test_split.csv``
for the test set where present). Every ``Participant`` row of a transcript is one segment of the
session audio; segments of a participant share its ``group``, so evaluation averages their class
probabilities into one decision per participant. Protocol: train on train (validation participants
carved from it, stratified by label), report on dev.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import soundfile

from bench.data.corpus import Corpus, Utterance
from bench.paths import read_text
from bench.data.datasets._layout import (find_file, fold_from_units, note_skipped, not_the_corpus, require_root,
                                    stratified_pick)
from bench.registry import DATASETS, BenchError, param

CLASSES = ["not_depressed", "depressed"]
LABEL_FILES = {"train": "train_split_Depression_AVEC2017.csv", "dev": "dev_split_Depression_AVEC2017.csv",
               "test": "full_test_split.csv"}
EXPECTED = "session folders XXX_P/ with XXX_AUDIO.wav and XXX_TRANSCRIPT.csv"


@dataclass
class DaicWozParams:
    evaluate_on: str = param("dev", "participants to report on: dev, or test (needs full_test_split.csv)",
                             choices=("dev", "test"))
    val_fraction: float = param(0.2, "share of training participants held out for validation", low=0.0,
                                high=0.5, low_exclusive=True)
    min_seconds: float = param(0.5, "leave out participant segments shorter than this", low=0.0)
    seed: int = param(0, "seed of the validation participants' draw", low=0)


def read_labels(root: Path, split: str) -> dict[str, str]:
    """Participant id -> class name from one AVEC 2017 split file."""
    path = find_file(root, LABEL_FILES[split], depth=1)
    if path is None:
        raise BenchError(f"DAIC-WOZ label file {LABEL_FILES[split]} is missing under {root}")
    with io.StringIO(read_text(path, "DAIC-WOZ label file"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    pid_col = columns.get("participant_id")
    label_col = columns.get("phq8_binary") or columns.get("phq_binary")
    if pid_col is None or label_col is None:
        raise BenchError(f"{path} needs columns Participant_ID and PHQ8_Binary (or PHQ_Binary)")
    labels = {}
    for number, row in enumerate(rows, 2):
        value = str(row[label_col]).strip()
        if value not in ("0", "1"):
            raise BenchError(f"unknown PHQ8_Binary value {value!r} in {path}:{number}: expected 0 or 1")
        labels[str(int(float(row[pid_col])))] = CLASSES[int(value)]
    return labels


def read_segments(path: Path, min_seconds: float) -> list[tuple[float, float]]:
    """``(start, stop)`` seconds of the Participant rows of one transcript."""
    text = path.read_text(encoding="utf-8", errors="replace")
    header = text.split("\n", 1)[0]
    rows = csv.DictReader(text.splitlines(), delimiter="\t" if "\t" in header else ",")
    names = {c.strip().lower(): c for c in rows.fieldnames or []}
    if not {"start_time", "stop_time", "speaker"} <= set(names):
        raise BenchError(f"{path} is not a DAIC-WOZ transcript: expected tab-separated columns "
                         f"start_time stop_time speaker value")
    segments = []
    for number, row in enumerate(rows, 2):
        if str(row[names["speaker"]]).strip() != "Participant":
            continue
        try:
            start, stop = float(row[names["start_time"]]), float(row[names["stop_time"]])
        except (TypeError, ValueError):
            raise BenchError(f"{path}:{number} has no numeric start_time/stop_time") from None
        if stop - start >= max(min_seconds, 1e-3):
            segments.append((start, stop))
    return segments


def session_problem(root: Path, pid: str) -> str | None:
    """Why session ``pid`` cannot be used, or None."""
    folder = root / f"{pid}_P"
    if not folder.is_dir():
        zipped = root / f"{pid}_P.zip"
        return f"{zipped} is not unzipped" if zipped.exists() else f"session folder {folder} is missing"
    for path in (folder / f"{pid}_AUDIO.wav", folder / f"{pid}_TRANSCRIPT.csv"):
        if not path.is_file():
            return f"{path} is missing"
    try:
        if soundfile.info(str(folder / f"{pid}_AUDIO.wav")).frames == 0:
            return f"audio file {folder / f'{pid}_AUDIO.wav'} is empty"
    except Exception as error:  # soundfile raises several types for broken files
        return f"cannot read audio {folder / f'{pid}_AUDIO.wav'}: {error}"
    return None


@DATASETS.register("daicwoz", "DAIC-WOZ binary PHQ8 depression from participant speech; train/dev, "
                   "participant-level decisions", params=DaicWozParams)
def load(root: Path | None, cache_dir: Path, params: DaicWozParams) -> Corpus:
    root = require_root("daicwoz", root)
    if not any(root.glob("*_P")) and not any(root.glob("*_P.zip")):
        raise not_the_corpus("daicwoz", root, EXPECTED)
    train_labels = read_labels(root, "train")
    test_labels = read_labels(root, params.evaluate_on)
    both = sorted(set(train_labels) & set(test_labels), key=int)
    if both:
        raise BenchError(f"participant {both[0]} is in both {LABEL_FILES['train']} and "
                         f"{LABEL_FILES[params.evaluate_on]} under {root}: a participant belongs to one split")
    labels = train_labels | test_labels
    utterances, skipped = [], []
    for pid in sorted(labels, key=int):
        problem = session_problem(root, pid)
        if problem is not None:
            skipped.append(f"participant {pid}: {problem}")
            continue
        folder = root / f"{pid}_P"
        for k, (start, stop) in enumerate(read_segments(folder / f"{pid}_TRANSCRIPT.csv", params.min_seconds)):
            utterances.append(Utterance(f"{pid}_{k:04d}", labels[pid], pid, path=folder / f"{pid}_AUDIO.wav",
                                        start=start, end=stop, group=pid))
    present = {u.speaker for u in utterances}
    if not present & set(train_labels) or not present & set(test_labels):
        first = skipped[0] if skipped else f"no Participant segment of at least {params.min_seconds} s"
        raise BenchError(f"no usable DAIC-WOZ {'training' if not present & set(train_labels) else params.evaluate_on}"
                         f" session under {root}: {first}")
    val = stratified_pick({p: train_labels[p] for p in present & set(train_labels)}, params.val_fraction,
                          params.seed)
    fold = fold_from_units(params.evaluate_on, [u.speaker for u in utterances], set(train_labels) - val, val,
                           set(test_labels))
    return Corpus("daicwoz", CLASSES, utterances, [fold], metrics=("macro_f1", "f1_depressed", "wa", "ua"),
                  headline_metric="macro_f1", skipped=note_skipped("daicwoz", skipped))
