"""Per-class results: where a method gains or loses ("gains on anger, loses on boredom").

Each finished run's recall of every class comes from its recorded confusion matrix (rows: true class).
A row of the summary (``stats.GROUP``) gets each class's mean recall (seeds averaged within a fold,
then over folds, as every figure of the report) and, for a method other than the plain reference, the
paired difference to the plain model of its own deploy preset on the same folds and seeds, with the
same fold-level bootstrap interval as the leaderboard's Δ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.method import plain_reference
from bench.reporting.plots import Figure, _save, slug
from bench.reporting.plots import row_label as plot_label
from bench.reporting.stats import GROUP, MIN_SIGNIFICANT_PAIRS, PAIR_ON, bootstrap_ci, finished

COLUMNS = [*GROUP, "class", "class_index", "recall", "folds", "pairs", "diff_mean", "ci_low", "ci_high", "significant"]


def _decoded(value) -> list:
    """A nested record field as the runs table keeps it (JSON text) or as a list; [] when unusable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return value if isinstance(value, list) else []


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _usable(matrix: list, classes: list) -> bool:
    """A square matrix of counts, one row and column per class."""
    return bool(matrix) and len(matrix) == len(classes) and all(
        isinstance(row, list) and len(row) == len(classes) and all(_is_count(v) for v in row) for row in matrix)


def class_recalls(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run and class: ``GROUP``, ``fold``, ``seed``, ``class``, ``class_index``,
    ``recall`` (NaN for a class with no test utterance in the fold). Runs without a usable confusion
    matrix (missing, ragged, not counts, or not matching ``classes``) are left out."""
    rows = []
    for _, run in finished(runs).iterrows():
        matrix, classes = _decoded(run.get("confusion")), _decoded(run.get("classes"))
        if not _usable(matrix, classes):
            continue
        key = {column: run[column] for column in GROUP} | {"fold": run["fold"], "seed": run["seed"]}
        for index, (name, counts) in enumerate(zip(classes, matrix)):
            total = sum(counts)
            rows.append(key | {"class": str(name), "class_index": index,
                               "recall": counts[index] / total if total else math.nan})
    return pd.DataFrame(rows, columns=[*GROUP, "fold", "seed", "class", "class_index", "recall"])


def per_class_table(runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per ``GROUP`` and class: ``recall`` (mean over folds of the seed-averaged recall), ``folds``, and
    against the plain reference of the row's deploy preset ``pairs`` (folds), ``diff_mean``, its
    interval and ``significant`` (interval excludes 0 over at least ``MIN_SIGNIFICANT_PAIRS`` folds);
    those are NaN for the reference rows themselves. Fractions, not percent."""
    recalls = class_recalls(runs)
    if recalls.empty:
        return pd.DataFrame(columns=COLUMNS)
    by_fold = recalls.groupby([*GROUP, "class", "class_index", "fold"], sort=True, dropna=False)["recall"].mean()
    means = by_fold.groupby([*GROUP, "class", "class_index"], sort=True, dropna=False).agg(["mean", "count"])
    means = means.rename(columns={"mean": "recall", "count": "folds"}).reset_index()
    reference = recalls[recalls["method"] == plain_reference()]
    pair_keys = [*PAIR_ON, "preset", "class"]
    paired = recalls[recalls["method"] != plain_reference()].merge(
        reference[pair_keys + ["recall"]].groupby(pair_keys, as_index=False)["recall"].mean(),
        on=pair_keys, how="inner", suffixes=("", "_reference"))
    paired["diff"] = paired["recall"] - paired["recall_reference"]
    fold_diffs = (paired.dropna(subset=["diff"]).groupby([*GROUP, "class", "fold"], sort=True)["diff"].mean()
                  .reset_index())
    comparisons = []
    for key, group in fold_diffs.groupby([*GROUP, "class"], sort=True):
        low, high = bootstrap_ci(group["diff"], seed)
        comparisons.append(dict(zip([*GROUP, "class"], key), pairs=len(group), diff_mean=float(group["diff"].mean()),
                                ci_low=low, ci_high=high,
                                significant=bool(len(group) >= MIN_SIGNIFICANT_PAIRS and (low > 0 or high < 0))))
    table = means.merge(pd.DataFrame(comparisons, columns=[*GROUP, "class", "pairs", "diff_mean", "ci_low",
                                                           "ci_high", "significant"]),
                        on=[*GROUP, "class"], how="left")
    return table[COLUMNS].sort_values([*GROUP, "class_index"], kind="stable").reset_index(drop=True)


def row_label(row) -> str:
    """``method [config] backbone@preset`` (settings appended when set), as the results page names rows."""
    config = f" [{row['config']}]" if row["config"] else ""
    settings = f" ({row['settings']})" if row["settings"] else ""
    return f"{row['method']}{config} {row['backbone']}@{row['preset']}{settings}"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def gains_and_losses(table: pd.DataFrame) -> list[str]:
    """One line per compared row of one dataset: its largest per-class gain and loss against its plain
    reference, with their intervals (starred when significant)."""
    lines = []
    compared = table.dropna(subset=["diff_mean"])
    for _, group in compared.groupby(GROUP, sort=True):
        first = group.iloc[0]
        parts = []
        for what, row in (("gains most on", group.loc[group["diff_mean"].idxmax()]),
                          ("loses most on", group.loc[group["diff_mean"].idxmin()])):
            if (what.startswith("gains") and row["diff_mean"] > 0) or (what.startswith("loses") and row["diff_mean"] < 0):
                interval = ("" if math.isnan(row["ci_low"]) else
                            f" [{_points(row['ci_low'])}, {_points(row['ci_high'])}]{' *' if row['significant'] else ''}")
                parts.append(f"{what} {row['class']} ({_points(row['diff_mean'])}{interval})")
        summary = "; ".join(parts) if parts else "no class differs"
        lines.append(f"{row_label(first)} against {plain_reference()}@{first['preset']}: {summary}, "
                     f"over {int(group['pairs'].max())} folds")
    return lines


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """One dataset's table as text: a row per compared model, a column per class (in the matrix's
    order), each cell the recall in percent and, for a method, its paired Δ in points:
    ``71.2 (+3.1*)``."""
    if table.empty:
        return pd.DataFrame(columns=["model"])
    classes = (table[["class", "class_index"]].drop_duplicates().sort_values("class_index", kind="stable")["class"]
               .drop_duplicates().tolist())
    rows = []
    for _, group in table.groupby(GROUP, sort=True):
        cells = {"model": row_label(group.iloc[0])}
        for _, row in group.iterrows():
            text = "–" if math.isnan(row["recall"]) else f"{100 * row['recall']:.1f}"
            if not math.isnan(row["diff_mean"]):
                text += f" ({_points(row['diff_mean'])}{'*' if row['significant'] else ''})"
            cells[row["class"]] = text
        rows.append(cells)
    return pd.DataFrame(rows, columns=["model", *classes]).fillna("–")


def figures(table: pd.DataFrame, folder: Path) -> list[Figure]:
    """Per (dataset, backbone) with a compared method: a heatmap of each method's paired per-class
    difference in points to the plain model of its preset (rows: methods, columns: classes in the
    matrix's order), starred cells where the fold-level interval excludes 0."""
    made = []
    compared = table.dropna(subset=["diff_mean"])
    for (dataset, backbone), part in compared.groupby(["dataset", "backbone"], sort=True):
        order = (part[["class", "class_index"]].drop_duplicates().sort_values("class_index", kind="stable")["class"]
                 .drop_duplicates().tolist())
        labels = [plot_label(r) for _, r in part.iterrows()]  # the backbone is the figure's
        part = part.assign(model=labels)
        values = 100 * part.pivot_table(index="model", columns="class", values="diff_mean", sort=True)[order]
        stars = part.pivot_table(index="model", columns="class", values="significant", aggfunc="max", sort=True)[order]
        text = values.map(lambda v: "" if math.isnan(v) else f"{v:+.1f}") + stars.map(lambda s: " *" if s else "")
        limit = max(1.0, float(values.abs().max().max()))
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(order), 1.0 + 0.45 * len(values)))
        image = ax.imshow(values.to_numpy(dtype=float), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        shades = values.to_numpy(dtype=float)
        for (y, x), cell in np.ndenumerate(text.to_numpy()):
            dark = math.isfinite(shades[y, x]) and abs(shades[y, x]) > 0.6 * limit  # white on the deep colours
            ax.text(x, y, cell, ha="center", va="center", fontsize=10, color="white" if dark else "0.1")
        ax.set_xticks(range(len(order)), order)
        ax.set_yticks(range(len(values)), list(values.index))
        ax.grid(False)
        fig.colorbar(image, ax=ax, label="Δ recall (points)")
        ax.set_title(f"{dataset} · {backbone}: per-class recall vs. the plain model")
        svg, png = _save(fig, folder, f"per-class-{slug(dataset)}-{slug(backbone)}")
        made.append(Figure("per-class", f"{dataset} · {backbone}: where each method gains and loses, per class",
                           "Each cell: a method's paired difference in recall of one class to the plain model of its "
                           "deploy preset, in points, mean over test folds (seeds averaged within a fold); * where its "
                           "95 % bootstrap interval over folds excludes 0 (from 5 folds).", svg, png))
    return made
