"""Shared work of a process's runs: corpora, features and fold splits (``Workspace``), normalized per
fold (``normalize``), held in memory so that the runs of one fold do not read them again."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from bench.data.corpus import Corpus, corpus_fingerprint
from bench.data.features import FeatureConfig, extract
from bench.execution.spec import RunSpec
from bench.paths import file_in_the_way
from bench.registry import DATASETS, BenchError
from bench.training.devices import check_amp, resolve_device
from bench.training.splits import Split


@dataclass
class FoldData:
    corpus: Corpus
    fingerprint: str  # of the corpus content (``bench.data.corpus.corpus_fingerprint``)
    train: Split
    val: Split
    test: Split
    speakers: dict[str, list[str]] = field(default_factory=dict)  # per split, in the split's order

    @property
    def input_dim(self) -> int:
        return self.train.features[0].shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.corpus.classes)


class Workspace:
    """Caches shared by the runs of one process: corpus listings and their fingerprints, features,
    and the normalized splits of the latest fold (one fold at a time, so memory stays flat over a
    long grid)."""

    def __init__(self, cache_dir: Path, data_roots: dict[str, Path] | None = None, progress: bool = True,
                 defer_latency: bool = False, device: str = "cpu", amp: bool = False):
        self.cache_dir = Path(cache_dir)
        blocking = file_in_the_way(self.cache_dir)
        if blocking is not None:
            where = "is a file" if blocking == self.cache_dir.absolute() else f"cannot be made: {blocking} is a file"
            raise BenchError(f"cache folder {self.cache_dir} {where}: give a folder with --cache-dir "
                             "or HRF_BENCH_CACHE")
        self.data_roots = data_roots or {}
        self.progress = progress
        self.defer_latency = defer_latency  # leave latency to the serialized ``bench measure`` stage
        self._listings: dict = {}
        # Evaluate every run's float ONNX export in ONNX Runtime (int8 models always are); 0 skips it:
        # a fresh export per new architecture costs 10 s to minutes, see docs/latency.md.
        self.onnx_check = os.environ.get("HRF_BENCH_ONNX_CHECK", "1") not in ("", "0")
        self.device = resolve_device(device)  # training and evaluation; latency stays on the CPU
        check_amp(self.device, amp)
        self.amp = amp  # bf16 autocast while training (CUDA, or a CPU with native bf16)
        self._corpora: dict = {}
        self._fold: tuple | None = None  # (key, FoldData) of the latest fold

    def root_for(self, dataset: str) -> Path | None:
        if dataset in self.data_roots:
            return Path(self.data_roots[dataset])
        env = os.environ.get(f"HRF_BENCH_{dataset.upper().replace('-', '_')}_ROOT")
        return Path(env) if env else None

    def listing(self, dataset: str, dataset_params: dict) -> tuple[Corpus, str]:
        """The dataset's corpus (utterances, labels, folds; no features) and its fingerprint,
        loaded once per process."""
        key = (dataset, json.dumps(dataset_params, sort_keys=True))
        if key not in self._listings:
            entry = DATASETS.get(dataset)
            corpus = entry.obj(self.root_for(dataset), self.cache_dir, entry.make_params(dataset_params))
            self._listings[key] = (corpus, corpus_fingerprint(corpus, self.cache_dir))
        return self._listings[key]

    def fingerprint(self, dataset: str, dataset_params: dict) -> str:
        return self.listing(dataset, dataset_params)[1]

    def check_features(self, dataset: str, dataset_params: dict, features: FeatureConfig) -> None:
        """A one-line error when ``features`` asks for front-end settings that a corpus of pre-extracted
        arrays cannot honour (they were ignored, yet recorded and part of the run id). Its arrays are
        used as they are, with their deltas appended (``deltas``), or summarized into functionals (``logmel-stats``)."""
        corpus = self.listing(dataset, dataset_params)[0]
        if not corpus.utterances or any(u.features is None for u in corpus.utterances):
            return
        front_end = {k: v for k, v in asdict(features).items() if k not in ("kind", "normalize", "deltas")}
        default = {k: v for k, v in asdict(FeatureConfig()).items() if k not in ("kind", "normalize", "deltas")}
        changed = sorted(k for k in front_end if front_end[k] != default[k])
        if features.kind not in ("logmel", "logmel-stats") or changed:
            what = f"--features {features.kind}" if features.kind not in ("logmel", "logmel-stats") else \
                ", ".join(f"{k.replace('_', '-')}={front_end[k]}" for k in changed)
            raise BenchError(f"dataset {dataset} ships pre-extracted feature arrays, so {what} cannot apply: "
                             "drop it (logmel-stats, their functionals, --deltas and --normalize do apply)")

    def corpus(self, dataset: str, dataset_params: dict, features: FeatureConfig) -> tuple[Corpus, dict]:
        key = (dataset, json.dumps(dataset_params, sort_keys=True), features)
        if key not in self._corpora:
            listing, fingerprint = self.listing(dataset, dataset_params)
            corpus = replace(listing, skipped=list(listing.skipped))  # each feature setting lists its own skips
            self._corpora[key] = (corpus, extract(corpus, features, self.cache_dir, self.progress, fingerprint))
        return self._corpora[key]

    def fold_data(self, spec: RunSpec) -> FoldData:
        extracted = spec.extracted_features
        key = (spec.dataset, json.dumps(spec.dataset_params, sort_keys=True), extracted, spec.fold)
        if self._fold is None or self._fold[0] != key:
            self._fold = None  # free the previous fold's splits before building the next
            corpus, features = self.corpus(spec.dataset, spec.dataset_params, extracted)
            fingerprint = self.fingerprint(spec.dataset, spec.dataset_params)
            fold = corpus.fold(spec.fold)
            splits = {name: [i for i in getattr(fold, name) if corpus.utterances[i].id in features]
                      for name in ("train", "val", "test")}
            present = sorted({corpus.utterances[i].label for i in splits["train"]})
            if len(present) < 2:  # one class scores 100 % UA whatever the model does
                raise BenchError(f"{spec.dataset} fold {spec.fold}: its training utterances have "
                                 f"{len(present)} class(es) ({', '.join(present) or 'none'}); a classifier needs at "
                                 f"least two: check the corpus's labels")
            normalized = normalize(corpus, features, splits, spec.features.normalize)
            grouped = any(u.group for u in corpus.utterances)

            def make(indices):
                utts = [corpus.utterances[i] for i in indices]
                return Split([normalized[u.id] for u in utts],
                             torch.tensor([corpus.label_index(u) for u in utts]),
                             [u.group or u.id for u in utts] if grouped else None)

            speakers = {n: [corpus.utterances[i].speaker for i in splits[n]] for n in ("train", "val", "test")}
            self._fold = (key, FoldData(corpus, fingerprint, *(make(splits[n]) for n in ("train", "val", "test")),
                                        speakers))
        return self._fold[1]


def normalize(corpus: Corpus, features: dict[str, torch.Tensor], splits: dict[str, list[int]],
              how: str) -> dict[str, torch.Tensor]:
    """Standardized features of the fold's utterances (``splits``: corpus indices per split).

    ``global``: one mean and standard deviation per dimension, from the training split's frames only.
    ``speaker``: each speaker's frames with that speaker's own statistics; speakers never cross
    splits, so test speakers are standardized with their own unlabeled frames, never with training
    statistics or labels."""
    utterances = [corpus.utterances[i] for i in (*splits["train"], *splits["val"], *splits["test"])]
    if how == "global":
        train_frames = torch.cat([features[corpus.utterances[i].id] for i in splits["train"]])
        mean, std = train_frames.mean(0), train_frames.std(0).clamp(min=1e-5)
        return {u.id: (features[u.id] - mean) / std for u in utterances}
    by_speaker: dict[str, list] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u)
    if len(by_speaker) == len(utterances) > 1:
        raise BenchError(f"per-speaker normalization needs speaker labels, but every utterance of {corpus.name} "
                         "has its own speaker: use --normalize global")
    normalized = {}
    for members in by_speaker.values():
        frames = torch.cat([features[u.id] for u in members])
        mean, std = frames.mean(0), frames.std(0).nan_to_num(1.0).clamp(min=1e-5)
        normalized.update({u.id: (features[u.id] - mean) / std for u in members})
    return normalized
