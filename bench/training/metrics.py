"""Classification metrics: WA (accuracy), UA (macro recall), macro/weighted F1, per-class F1 and recall,
confusion matrix."""

from __future__ import annotations

import numpy as np


def confusion(labels, predictions, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def scores(labels, predictions, num_classes: int) -> dict:
    """WA, UA, macro-F1, weighted-F1 and the matrix. Macro-F1 averages over all ``num_classes`` classes,
    as the usual definition does (a class absent from ``labels`` and ``predictions`` counts F1 0, like
    scikit-learn's ``f1_score(..., labels=range(num_classes), average="macro", zero_division=0)``); UA
    (macro recall) leaves classes absent from ``labels`` out, since their recall is undefined."""
    matrix = confusion(labels, predictions, num_classes)
    support = matrix.sum(1)
    predicted = matrix.sum(0)
    hits = np.diag(matrix)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(num_classes), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(num_classes), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=(precision + recall) > 0)
    total = max(support.sum(), 1)
    return {
        "wa": float(hits.sum() / total),
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / total),
        "class_f1": f1.tolist(),
        "class_recall": recall.tolist(),
        "confusion": matrix.tolist(),
    }


def declared_scores(result: dict, names: tuple[str, ...], classes: list[str]) -> dict:
    """The metrics a dataset declares, from a ``scores`` result: its keys, or ``f1_<class>`` and
    ``recall_<class>`` (e.g. ``f1_depressed``, the F1 of DAIC-WOZ's depressed class)."""
    values = {}
    for name in names:
        kind, _, label = name.partition("_")
        if name in result and not isinstance(result[name], list):
            values[name] = result[name]
        elif kind in ("f1", "recall") and label in classes:
            values[name] = result[f"class_{kind}"][classes.index(label)]
        else:
            raise ValueError(f"unknown metric {name!r}: use wa, ua, macro_f1, weighted_f1, f1_<class> "
                             f"or recall_<class>")
    return values
