"""Which utterance functionals carry which emotion: the classical SVM on subsets of the log-mel functionals.

For each subset of the 8 functionals per mel bin (mean, std, min, max of the frames and of their
frame-to-frame delta; ``bench.data.features.utterance_functionals``), an RBF SVM (standardized inputs,
balanced class weights, C fixed at 10 for speed: the svm method chooses C by grouped cross-validation)
is fitted on each fold's training and validation speakers and scored on its test speakers. Prints per
subset the mean UA over folds and the mean recall of every class. Frames are standardized per speaker
or globally, as ``--normalize`` says.

Run by hand (not collected by pytest)::

    python tests/benchmarks/functional_ablation.py --data-root ../shared/data/emodb [--normalize speaker]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bench.api import default_cache_dir, parse_ints
from bench.data.features import FeatureConfig, utterance_functionals
from bench.execution.workspace import Workspace, normalize
from bench.registry import load_builtin_plugins

NAMES = ("mean", "std", "min", "max", "delta mean", "delta std", "delta min", "delta max")
SUBSETS = {"all 8": range(8), "mean": [0], "mean, std": [0, 1], "min, max": [2, 3], "the 4 of the delta": [4, 5, 6, 7],
           "mean, delta std": [0, 5], "the 4 of the frames": [0, 1, 2, 3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="emodb")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--folds", default="1-5")
    parser.add_argument("--normalize", default="speaker", choices=["speaker", "global"])
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    args = parser.parse_args()
    load_builtin_plugins()
    workspace = Workspace(Path(args.cache_dir), {args.dataset: Path(args.data_root)}, progress=False)
    corpus, features = workspace.corpus(args.dataset, {}, FeatureConfig())
    ua = {name: [] for name in SUBSETS}
    recall = {name: [] for name in SUBSETS}
    for number in parse_ints(args.folds, "folds"):
        fold = corpus.fold(number)
        splits = {name: list(getattr(fold, name)) for name in ("train", "val", "test")}
        frames = normalize(corpus, features, splits, args.normalize)

        def functionals(indices):
            ids = [corpus.utterances[i].id for i in indices]
            rows = [utterance_functionals(frames[i][None], torch.tensor([frames[i].shape[0]]))[0] for i in ids]
            labels = np.array([corpus.label_index(corpus.utterances[i]) for i in indices])
            return torch.stack(rows).double().numpy().reshape(len(ids), len(NAMES), -1), labels

        train_x, train_y = functionals(splits["train"] + splits["val"])
        test_x, test_y = functionals(splits["test"])
        for name, chosen in SUBSETS.items():
            chosen = list(chosen)
            svm = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale", class_weight="balanced"))
            svm.fit(train_x[:, chosen].reshape(len(train_x), -1), train_y)
            predicted = svm.predict(test_x[:, chosen].reshape(len(test_x), -1))
            ua[name].append(balanced_accuracy_score(test_y, predicted))
            matrix = confusion_matrix(test_y, predicted, labels=range(len(corpus.classes)))
            recall[name].append(matrix.diagonal() / matrix.sum(1).clip(min=1))
    print(f"{args.dataset}, folds {args.folds}, frames normalized per {args.normalize}; UA and per-class recall, %")
    print(f"{'functionals':22s} {'UA':>5s}  " + " ".join(f"{c[:8]:>8s}" for c in corpus.classes))
    for name in SUBSETS:
        per_class = np.mean(recall[name], axis=0) * 100
        print(f"{name:22s} {np.mean(ua[name]) * 100:5.1f}  " + " ".join(f"{r:8.0f}" for r in per_class))


if __name__ == "__main__":
    main()
