"""Classification metrics: WA (accuracy), UA (macro recall), macro/weighted F1, confusion matrix."""

from __future__ import annotations

import numpy as np


def confusion(labels, predictions, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def scores(labels, predictions, num_classes: int) -> dict:
    """WA, UA, macro-F1, weighted-F1 (classes absent from ``labels`` are left out of UA), and the matrix."""
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
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / total),
        "confusion": matrix.tolist(),
    }
