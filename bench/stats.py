"""Paired comparisons against the lightweight baseline: per-fold/per-seed differences, a seeded
percentile-bootstrap confidence interval of their mean, and a Wilcoxon signed-rank p-value.

Runs pair when they share dataset, backbone, settings, fold and seed: the same test speakers and the
same initialization seed, so fold-to-fold variation cancels out of the difference.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

GROUP = ["dataset", "backbone", "method", "config", "preset", "settings"]
PAIR_ON = ["dataset", "backbone", "settings", "fold", "seed"]
COMPARISON_COLUMNS = ["pairs", "diff_mean", "ci_low", "ci_high", "p_wilcoxon", "significant"]
RESAMPLES = 10_000
LEVEL = 0.95
MIN_WILCOXON_NONZERO = 5  # below this the smallest attainable p-value exceeds 0.05 anyway
# A percentile bootstrap of 2-4 pairs is little more than their range (4 pairs of one sign always
# "exclude zero"), so such intervals are shown but never marked significant.
MIN_SIGNIFICANT_PAIRS = 5
BASELINE = "baseline"


def bootstrap_ci(differences, seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (1-d), reproducible for a seed.
    Fewer than two values give no interval (NaN, NaN): one run says nothing about its spread."""
    values = np.asarray(differences, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(differences, min_nonzero: int = MIN_WILCOXON_NONZERO) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``differences`` (zeros dropped), or NaN with fewer
    than ``min_nonzero`` nonzero differences."""
    values = np.asarray(differences, dtype=float)
    values = values[~np.isnan(values) & (values != 0)]
    if len(values) < min_nonzero:
        return math.nan
    return float(wilcoxon(values).pvalue)


def paired_differences(runs: pd.DataFrame, metric: str | None = None, light_preset: str = "lightweight") -> pd.DataFrame:
    """Every run minus its paired ``baseline`` run at ``light_preset``: columns ``GROUP``, ``fold``,
    ``seed``, ``metric``, ``value``, ``reference``, ``diff``. ``metric`` None means each dataset's
    ``headline_metric``. Runs without a paired reference are left out; the reference group itself too."""
    columns = [*GROUP, "fold", "seed", "metric", "value", "reference", "diff"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    frame = runs.copy()
    frame["metric"] = metric if metric is not None else frame["headline_metric"]
    frame["value"] = [row[row["metric"]] if row["metric"] in frame.columns else math.nan for _, row in frame.iterrows()]
    is_reference = (frame["method"] == BASELINE) & (frame["preset"] == light_preset)
    reference = frame[is_reference].groupby(PAIR_ON, as_index=False)["value"].mean()
    paired = frame[~is_reference].merge(reference.rename(columns={"value": "reference"}), on=PAIR_ON, how="inner")
    paired["diff"] = paired["value"] - paired["reference"]
    paired = paired.dropna(subset=["diff"])
    return paired[columns].sort_values([*GROUP, "fold", "seed"], kind="stable").reset_index(drop=True)


def compare(runs: pd.DataFrame, light_preset: str = "lightweight", seed: int = 0,
            metric: str | None = None) -> pd.DataFrame:
    """Per ``GROUP``: number of pairs, mean paired difference, its bootstrap interval (seeded with
    ``seed`` for every group, so a row does not depend on which other rows exist), the Wilcoxon
    p-value and ``significant`` (the interval excludes zero and rests on at least
    ``MIN_SIGNIFICANT_PAIRS`` pairs)."""
    differences = paired_differences(runs, metric, light_preset)
    rows = []
    for key, group in differences.groupby(GROUP, sort=True):
        low, high = bootstrap_ci(group["diff"], seed)
        rows.append(dict(zip(GROUP, key), pairs=len(group), diff_mean=float(group["diff"].mean()), ci_low=low,
                         ci_high=high, p_wilcoxon=wilcoxon_p(group["diff"]),
                         significant=bool(len(group) >= MIN_SIGNIFICANT_PAIRS and (low > 0 or high < 0))))
    return pd.DataFrame(rows, columns=[*GROUP, *COMPARISON_COLUMNS])
