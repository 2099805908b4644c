"""Paired comparisons against a reference baseline, resampled at the level of folds (test speakers).

Runs pair when they share dataset, backbone, settings, fold and seed: the same test speakers and the
same initialization seed, so fold-to-fold variation cancels out of the difference. The seeds of one fold
share its test speakers, so they are not independent samples of the test population: the paired
differences of a fold are averaged over its seeds first, and every interval, p-value and mean below is
over these fold-level differences (the unit is the fold; each fold weighs the same).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import DegenerateDataWarning, bootstrap, wilcoxon

from bench.method import plain_reference

GROUP = ["dataset", "backbone", "method", "config", "preset", "settings"]
PAIR_ON = ["dataset", "backbone", "settings", "fold", "seed"]
COMPARISON_COLUMNS = ["pairs", "diff_mean", "ci_low", "ci_high", "p_wilcoxon", "significant"]
RESAMPLES = 10_000
LEVEL = 0.95
# With n nonzero pairs the smallest two-sided Wilcoxon p-value is 2 / 2^n: 0.25 at 3, 0.125 at 4,
# 0.0625 at 5, 0.031 at 6. A p-value is given from 5 fold-level pairs, so 5 folds can show a clear
# direction (p = 0.0625) but never p < 0.05; that takes 6 folds or more.
MIN_WILCOXON_NONZERO = 5
# A bootstrap interval of 2-4 folds is little more than their range (4 folds of one sign always
# "exclude zero"), so such intervals are shown but never marked significant.
MIN_SIGNIFICANT_PAIRS = 5
# BCa estimates its bias and acceleration corrections from the resamples and a jackknife; with only 2
# distinct values the resampled means form a coarse lattice and those estimates are unreliable, so the
# plain percentile interval is used instead.
MIN_BCA_DISTINCT = 3
FAILED = "failed"


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that produced figures: all but those whose ``status`` is ``failed``."""
    return runs[runs["status"] != FAILED] if "status" in runs else runs


def bootstrap_ci(differences, seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap interval of the mean of ``differences`` (1-d; one value per fold), reproducible for a
    seed: BCa (``scipy.stats.bootstrap``) from ``MIN_BCA_DISTINCT`` distinct values, else (or when BCa
    cannot be computed) the percentile interval. Values that are all equal give (value, value); fewer
    than two give no interval (NaN, NaN): one fold says nothing about the spread over test speakers."""
    values = np.asarray(differences, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return math.nan, math.nan
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    methods = ["BCa", "percentile"] if len(np.unique(values)) >= MIN_BCA_DISTINCT else ["percentile"]
    for method in methods:
        with warnings.catch_warnings():  # a degenerate BCa warns and returns NaN: handled below
            warnings.simplefilter("ignore", DegenerateDataWarning)
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            interval = bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=level, method=method,
                                 rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(interval.low) and np.isfinite(interval.high):
            break
    return float(interval.low), float(interval.high)


def wilcoxon_p(differences, min_nonzero: int = MIN_WILCOXON_NONZERO) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``differences`` (zeros dropped), or NaN with fewer
    than ``min_nonzero`` nonzero differences. scipy's ``auto``: exact up to 50 values without ties;
    with ties, all sign flips enumerated for a few values (any fold count used here) and the normal
    approximation for many; deterministic either way."""
    values = np.asarray(differences, dtype=float)
    # rounding makes differences that are equal up to float noise tie, as they do on paper
    values = np.round(values[~np.isnan(values) & (values != 0)], 12)
    if len(values) < min_nonzero:
        return math.nan
    return float(wilcoxon(values).pvalue)


def _metric_values(runs: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    frame = finished(runs).copy()
    frame["metric"] = metric if metric is not None else frame["headline_metric"]
    frame["value"] = math.nan
    for name in frame["metric"].dropna().unique():
        if name in frame.columns:
            at = frame["metric"] == name
            frame.loc[at, "value"] = pd.to_numeric(frame.loc[at, name], errors="coerce")
    return frame


def paired_differences(runs: pd.DataFrame, metric: str | None = None,
                       light_preset: str | None = "lightweight", reference_method: str | None = None) -> pd.DataFrame:
    """Every finished run minus its paired ``reference_method`` run at ``light_preset`` (the reference;
    any preset can be one, None: the method's runs at any preset, for references such as the classical
    ``svm`` that do not depend on the preset): columns ``GROUP``, ``fold``, ``seed``, ``metric``,
    ``value``, ``reference``, ``diff``. ``metric`` None means each dataset's ``headline_metric``. Runs
    without a paired reference are left out; the reference group itself too."""
    columns = [*GROUP, "fold", "seed", "metric", "value", "reference", "diff"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    frame = _metric_values(runs, metric)
    is_reference = frame["method"] == (reference_method or plain_reference())
    if light_preset is not None:
        is_reference &= frame["preset"] == light_preset
    reference = frame[is_reference].groupby(PAIR_ON, as_index=False)["value"].mean()
    paired = frame[~is_reference].merge(reference.rename(columns={"value": "reference"}), on=PAIR_ON, how="inner")
    paired["diff"] = paired["value"] - paired["reference"]
    paired = paired.dropna(subset=["diff"])
    return paired[columns].sort_values([*GROUP, "fold", "seed"], kind="stable").reset_index(drop=True)


def fold_differences(differences: pd.DataFrame) -> pd.DataFrame:
    """Run-level paired differences (``paired_differences``) averaged over the seeds of each fold:
    columns ``GROUP``, ``fold``, ``diff`` (mean over that fold's pairs), ``seeds`` (how many)."""
    if differences.empty:
        return pd.DataFrame(columns=[*GROUP, "fold", "diff", "seeds"])
    return (differences.groupby([*GROUP, "fold"], sort=True)["diff"].agg(["mean", "size"])
            .rename(columns={"mean": "diff", "size": "seeds"}).reset_index())


def mean_differences(runs: pd.DataFrame, metrics: list[str], reference_preset: str) -> pd.DataFrame:
    """Per ``GROUP`` (the reference group left out): for each of ``metrics`` the paired mean difference
    to the ``baseline`` at ``reference_preset`` (the mean of the fold-level differences, over the pairs
    where both runs have that figure), and ``pairs``, the number of folds the headline metric's
    difference rests on."""
    frame = _metric_values(runs, None)
    columns = [*metrics, "value"]  # "value": the headline metric
    is_reference = (frame["method"] == plain_reference()) & (frame["preset"] == reference_preset)
    reference = frame[is_reference].groupby(PAIR_ON, as_index=False)[columns].mean()
    paired = frame[~is_reference].merge(reference, on=PAIR_ON, how="inner", suffixes=("", "_reference"))
    for column in columns:
        paired[column] = paired[column] - paired[f"{column}_reference"]
    by_fold = paired.groupby([*GROUP, "fold"], sort=True)[columns].mean()
    result = by_fold.groupby(GROUP, sort=True).agg({**{m: "mean" for m in metrics}, "value": "count"})
    return result.rename(columns={"value": "pairs"}).reset_index()


def compare(runs: pd.DataFrame, light_preset: str | None = "lightweight", seed: int = 0,
            metric: str | None = None, reference_method: str | None = None) -> pd.DataFrame:
    """Per ``GROUP``, over fold-level paired differences (seeds averaged within each fold): ``pairs``
    (folds), ``diff_mean``, its bootstrap interval (seeded with ``seed`` for every group, so a row does
    not depend on which other rows exist), the Wilcoxon p-value and ``significant`` (the interval
    excludes zero and rests on at least ``MIN_SIGNIFICANT_PAIRS`` folds)."""
    differences = fold_differences(paired_differences(runs, metric, light_preset, reference_method))
    rows = []
    for key, group in differences.groupby(GROUP, sort=True):
        low, high = bootstrap_ci(group["diff"], seed)
        rows.append(dict(zip(GROUP, key), pairs=len(group), diff_mean=float(group["diff"].mean()), ci_low=low,
                         ci_high=high, p_wilcoxon=wilcoxon_p(group["diff"]),
                         significant=bool(len(group) >= MIN_SIGNIFICANT_PAIRS and (low > 0 or high < 0))))
    return pd.DataFrame(rows, columns=[*GROUP, *COMPARISON_COLUMNS])


FOREST_KEY = ["method", "config", "preset"]
FOREST_COLUMNS = [*FOREST_KEY, "row", "dataset", "backbone", "settings", "folds", "diff_mean", "ci_low", "ci_high",
                  "weight", "tau2", "i2"]


def forest(runs: pd.DataFrame, seed: int = 0, leave_out: tuple[str, ...] = ()) -> pd.DataFrame:
    """Each method's paired difference to the ``baseline`` of its own deploy preset, per (dataset,
    backbone, settings) cell (``row`` = ``cell``: mean of the fold-level differences and its bootstrap
    interval, as on the leaderboard), and per method, parameters and preset the random-effects pooled
    estimate over those cells (``row`` = ``pooled``): statsmodels' ``combine_effects`` with the
    Paule-Mandel estimate of the between-cell variance ``tau2`` (``method_re="iterated"``, truncated at
    0; its DerSimonian-Laird option leaves a negative ``tau2``, and so negative weights, when the cells
    agree more than their variances predict, which 2-3 cells often do), a normal interval, each cell
    weighted by the inverse of its fold-level variance of the mean plus ``tau2`` (``weight``: its
    share); ``i2``: the share of the spread that is heterogeneity (0 when none). A cell enters the
    pooling with at least 2 folds and a nonzero spread; a pooled row needs at least 2 such cells.
    Differences in the headline metric, as fractions. ``leave_out``: methods that are no compression
    (the classical references)."""
    from statsmodels.stats.meta_analysis import combine_effects

    frame = finished(runs)
    frame = frame[~frame["method"].isin(leave_out)] if len(frame) else frame
    rows, reference = [], plain_reference()
    for preset in sorted(set(frame.loc[frame["method"] != reference, "preset"]) if len(frame) else []):
        differences = fold_differences(paired_differences(frame, None, preset))
        differences = differences[(differences["preset"] == preset) & (differences["method"] != reference)]
        for key, group in differences.groupby(FOREST_KEY, sort=True):
            cells = []
            for (dataset, backbone, settings), cell in group.groupby(["dataset", "backbone", "settings"], sort=True):
                low, high = bootstrap_ci(cell["diff"], seed)
                diffs = cell["diff"].to_numpy(float)
                variance = float(np.var(diffs, ddof=1) / len(diffs)) if len(diffs) >= 2 else math.nan
                cells.append(dict(zip(FOREST_KEY, key), row="cell", dataset=dataset, backbone=backbone,
                                  settings=settings, folds=len(diffs), diff_mean=float(diffs.mean()), ci_low=low,
                                  ci_high=high, weight=math.nan, tau2=math.nan, i2=math.nan, _variance=variance))
            usable = [c for c in cells if math.isfinite(c["_variance"]) and c["_variance"] > 0]
            if len(usable) >= 2:
                pooled = combine_effects(np.array([c["diff_mean"] for c in usable]),
                                         np.array([c["_variance"] for c in usable]), method_re="iterated", use_t=False)
                for cell, weight in zip(usable, pooled.weights_rel_re):
                    cell["weight"] = float(weight)
                low, high = pooled.conf_int(use_t=False)[1]
                cells.append(dict(zip(FOREST_KEY, key), row="pooled", dataset="", backbone="", settings="",
                                  folds=sum(c["folds"] for c in usable), diff_mean=float(pooled.mean_effect_re),
                                  ci_low=float(low), ci_high=float(high), weight=1.0, tau2=float(pooled.tau2),
                                  i2=max(0.0, float(pooled.i2)), _variance=math.nan))
            rows.extend(cells)
    return pd.DataFrame([{k: v for k, v in r.items() if k != "_variance"} for r in rows], columns=FOREST_COLUMNS)
