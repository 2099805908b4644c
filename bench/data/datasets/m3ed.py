"""M3ED: Chinese TV-series dialogues, 7 emotions, with its official series-level split as one fold.

Layout: ``annotation.json`` (``ann[series][clip]["Dialog"][utterance]`` with ``Speaker`` and
``EmoAnnotation.final_main_emo``), ``splitInfo/movie_list_{train,val,test}.txt`` (series, one a line)
and speech files ``{Speaker}_{utterance}.wav`` (e.g. ``A_anjia_1_1.wav``) anywhere below the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.data.corpus import Corpus, Utterance
from bench.paths import read_text
from bench.data.datasets._layout import audio_files, find_file, fold_from_units, note_skipped, not_the_corpus, require_root
from bench.registry import DATASETS, BenchError, param

CLASSES = ["happy", "neutral", "sad", "disgust", "anger", "fear", "surprise"]
SPLITS = ("train", "val", "test")
EXPECTED = "annotation.json, splitInfo/movie_list_{train,val,test}.txt and speech files like A_anjia_1_1.wav"


@dataclass
class M3EDParams:
    min_seconds: float = param(0.0, "leave out utterances shorter than this (by the annotation's times)", low=0.0)


def read_split_lists(root: Path) -> dict[str, set[str]]:
    lists = {}
    for split in SPLITS:
        path = find_file(root, f"splitInfo/movie_list_{split}.txt", depth=1)
        if path is None:
            raise BenchError(f"M3ED split list splitInfo/movie_list_{split}.txt is missing under {root}")
        lists[split] = {line.strip() for line in read_text(path, "M3ED split list").splitlines() if line.strip()}
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(lists[first] & lists[second])
        if shared:
            raise BenchError(f"series {shared[0]!r} is in both movie_list_{first}.txt and movie_list_{second}.txt "
                             f"under {root}: a series belongs to one split")
    return lists


def read_annotation(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchError(f"cannot read M3ED annotation {path}: {error}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path} is not M3ED's annotation.json: expected {{series: {{clip: {{'Dialog': ...}}}}}}")
    return data


def seconds(text) -> float:
    """M3ED times are ``HH:MM:SS.mmm`` strings (or numbers of seconds)."""
    if isinstance(text, (int, float)):
        return float(text)
    total = 0.0
    for part in str(text).replace(",", ".").split(":"):
        total = total * 60 + float(part)
    return total


def dialog_rows(annotation: dict, path: Path):
    """``(series, speaker, utterance id, label, duration)`` for every annotated utterance."""
    for series, clips in sorted(annotation.items()):
        for clip, body in sorted(clips.items()):
            if not isinstance(body, dict) or "Dialog" not in body:
                raise BenchError(f"{path}: clip {series}/{clip} has no 'Dialog': not M3ED's annotation.json")
            for utterance, item in body["Dialog"].items():
                label = str(item.get("EmoAnnotation", {}).get("final_main_emo", "")).strip().lower()
                if label not in CLASSES:
                    raise BenchError(f"unknown M3ED emotion {label!r} for {utterance} in {path}: "
                                     f"expected one of {', '.join(CLASSES)}")
                try:
                    duration = seconds(item["EndTime"]) - seconds(item["StartTime"])
                except (KeyError, ValueError):
                    duration = float("inf")  # no usable times: never filtered by length
                yield series, str(item.get("Speaker", "")), utterance, label, duration


@DATASETS.register("m3ed", "M3ED (7 emotions, Chinese TV series); official series-level train/val/test split",
                   params=M3EDParams)
def load(root: Path | None, cache_dir: Path, params: M3EDParams) -> Corpus:
    root = require_root("m3ed", root)
    path = find_file(root, "annotation.json", depth=1)
    if path is None:
        raise BenchError(f"M3ED label file annotation.json is missing under {root} (expected {EXPECTED})")
    lists = read_split_lists(root)
    audio = {p.stem: p for p in audio_files(root, recursive=True)}
    if not audio:
        raise not_the_corpus("m3ed", root, EXPECTED)
    annotation = read_annotation(path)
    wanted = set().union(*lists.values())
    utterances, units, missing = [], [], []
    for series, speaker, utterance, label, duration in dialog_rows(annotation, path):
        if series not in wanted or duration < params.min_seconds:
            continue
        wav = audio.get(f"{speaker}_{utterance}") or audio.get(utterance)
        if wav is None:
            missing.append(f"no speech file {speaker}_{utterance}.wav for {utterance} of {path}")
            continue
        utterances.append(Utterance(utterance, label, f"{series}/{speaker}", path=wav))
        units.append(series)
    if not utterances:
        raise BenchError(f"none of the utterances of {path} has a speech file under {root} "
                         f"(named like A_anjia_1_1.wav)")
    absent = sorted(wanted - set(annotation))
    missing += [f"series {s} of splitInfo has no dialogue in {path}" for s in absent]
    fold = fold_from_units("official", units, lists["train"], lists["val"], lists["test"])
    for split in SPLITS:
        if not getattr(fold, split):
            raise BenchError(f"the M3ED {split} split is empty: check splitInfo/movie_list_{split}.txt against {path}")
    return Corpus("m3ed", CLASSES, utterances, [fold], metrics=("wa", "ua", "weighted_f1"),
                  headline_metric="weighted_f1", skipped=note_skipped("m3ed", missing))
