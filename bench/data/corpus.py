"""What a dataset plug-in returns: utterances with labels and speakers, and its protocol's folds.

A dataset plug-in is a function ``load(root: Path | None, cache_dir: Path, params) -> Corpus``
registered in ``bench.registry.DATASETS``. Folds index into ``Corpus.utterances``.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    fingerprint: str = ""  # set by generated corpora (embedded): identifies their content without reading it

    def label_index(self, utterance: Utterance) -> int:
        return self.classes.index(utterance.label)

    def fold(self, number: int) -> Fold:
        """Fold by 1-based number, with a clear error when out of range."""
        if not 1 <= number <= len(self.folds):
            raise BenchError(f"fold {number} does not exist for {self.name}: choose from 1..{len(self.folds)}")
        return self.folds[number - 1]


# under the cache folder: path -> [size, mtime_ns, ctime_ns, sha1 of the content]. The ctime too, because
# size and mtime are easy to keep while editing a file (``touch -r``), and then stale features were reused.
FILE_HASHES = "file-hashes.json"


def _file_digest(path: Path, known: dict) -> str:
    """sha1 of the file's content, taken from ``known`` while its size, mtime and ctime are unchanged."""
    stat = os.stat(path)
    key = str(Path(path).resolve())
    entry = known.get(key)
    signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    if isinstance(entry, list) and len(entry) == 4 and entry[:3] == signature and isinstance(entry[3], str):
        return entry[3]
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    known[key] = [*signature, digest.hexdigest()]
    return known[key][3]


def corpus_fingerprint(corpus: Corpus, cache_dir: Path) -> str:
    """Identifies the corpus content a run reads: a sha1 over its name, classes, folds, every
    utterance's id, label, speaker, group and segment, and the content (sha1) of every file it reads,
    so that it changes when a label, a split or a file changes, and not when the corpus is copied
    elsewhere. Content hashes are kept in ``<cache_dir>/file-hashes.json`` by path, size and mtime:
    only the first use reads the files (EmoDB: 0.3 s), later ones stat them (35 ms). A corpus
    with its own ``fingerprint`` (generated from its parameters) has its files' content replaced by it."""
    from bench.reporting.results import atomic_write_text  # bench.reporting.results imports pandas: only when needed

    store = Path(cache_dir) / FILE_HASHES
    try:
        known = json.loads(store.read_text()) if store.is_file() else {}
    except (OSError, ValueError):
        known = {}  # an unreadable memo only costs hashing again
    if not isinstance(known, dict):
        known = {}  # valid JSON but not the memo: the same
    before = dict(known)
    digest = hashlib.sha1(json.dumps([corpus.name, corpus.classes, corpus.fingerprint,
                                      [[f.name, f.train, f.val, f.test] for f in corpus.folds]]).encode())
    for u in corpus.utterances:
        source = u.features or u.path
        content = "" if corpus.fingerprint or source is None or not os.path.isfile(source) else _file_digest(source, known)
        digest.update(json.dumps([u.id, u.label, u.speaker, u.group, u.start, u.end, content]).encode())
    if known != before:
        try:
            atomic_write_text(store, json.dumps(known))
        except OSError:
            pass  # a read-only cache: the fingerprint is right, the next process hashes again
    return digest.hexdigest()[:16]


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
