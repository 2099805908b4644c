"""The columns of the tidy tables: identifying keys, metrics, costs and their labels, shared by every
table, plot and page."""

from __future__ import annotations

import json
import math

KEYS = ["dataset", "backbone", "method", "config", "preset", "settings"]  # one summary row per value
METRICS = ["wa", "ua", "macro_f1", "weighted_f1"]  # fractions in [0, 1]
COSTS = ["params", "train_params", "macs", "flops", "size_bytes", "latency_ratio", "latency_ms", "latency_p90_ms"]
LABELS = {"wa": "WA", "ua": "UA", "macro_f1": "F1", "weighted_f1": "wF1", "params": "params",
          "train_params": "train params", "macs": "MACs", "flops": "FLOPs", "size_bytes": "size",
          "latency_ms": "latency ms", "latency_p90_ms": "p90 ms"}
# Training cost per run (means in the summary), and as multiples of the plain lightweight model's own training
TRAINING_COSTS = ["fit_flops", "reused_fit_flops", "fit_seconds", "reused_fit_seconds", "train_peak_memory_bytes"]
TRAINING_MULTIPLES = ["train_flops_x", "train_seconds_x", "train_memory_x"]
NESTED = ("method_params", "dataset_params", "confusion", "classes", "skipped")
DELTA_LIGHT, DELTA_LARGE = "Δ light (folds)", "Δ large (folds)"
MISSING = "—"
OK = "ok"
UNKNOWN_FINGERPRINT = "unknown"


def _text(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_true(value) -> bool:
    """A flag cell that may be missing (NaN after a merge)."""
    return not _is_missing(value) and bool(value)
