"""Tidy tables from run records: ``runs`` (one row per run, failed runs included) and ``summary``
(mean, std and count over the finished runs' folds and seeds per method x method parameters x backbone x
preset x dataset, with the paired difference over folds to the plain lightweight and large baselines),
and the summary printed at the end of ``bench run``.

Records from older versions or other plug-ins may lack columns: a missing figure stays missing (NaN)
in every table and is never filled in or averaged over the runs that happen to have it.
"""

from __future__ import annotations

import math
from dataclasses import fields

import click
import numpy as np
import pandas as pd

from bench.data.features import FeatureConfig
from bench.method import plain_reference
from bench.reporting import stats
from bench.reporting.checks import classical_warnings, large_model_warnings
from bench.reporting.columns import (COSTS, KEYS, METRICS, MISSING, NESTED, OK, TRAINING_COSTS, TRAINING_MULTIPLES,
                                     UNKNOWN_FINGERPRINT, _is_missing, _text)
from bench.reporting.formats import to_terminal
from bench.training.config import TrainConfig

def _varying_label(rows: list[dict]) -> list[str]:
    """Per row, ``key=value`` for the keys whose values differ between ``rows`` (sorted, joined)."""
    keys = sorted({k for row in rows for k in row})
    varying = [k for k in keys if len({_text(row.get(k)) for row in rows}) > 1]
    return [", ".join(f"{k}={row.get(k)}" for k in varying) for row in rows]


def _mapping(value) -> dict:
    """A nested record field that should be a dict; anything else (absent, foreign) counts as empty."""
    return value if isinstance(value, dict) else {}


def _config_items(record: dict) -> dict:
    """A run's method configuration flattened: ``{"hrf.expansion_ratio": 4.0, "teacher": "large"}``."""
    method_params = record.get("method_params")
    items = {f"{name}.{key}": value for name, params in sorted(_mapping(method_params).items())
             for key, value in sorted(_mapping(params).items())}
    if record.get("teacher_preset"):
        items["teacher"] = record["teacher_preset"]
    return items


def _setting_items(record: dict) -> dict:
    """Training, feature and dataset settings: ``{"train.epochs": 8, "features.n_mels": 80, ...}``."""
    items = {f"{prefix}.{f.name}": record.get(f"{prefix}_{f.name}")
             for prefix, config in (("train", TrainConfig), ("features", FeatureConfig)) for f in fields(config)}
    items.update({f"dataset.{k}": v for k, v in sorted(_mapping(record.get("dataset_params")).items())})
    return items


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run: scalar fields as they are, nested fields as JSON text, plus ``config`` (the
    method parameters that vary between runs of that method) and ``settings`` (the training, feature
    and dataset settings that vary between all runs). Columns the tables need exist even when no record
    has them."""
    rows = []
    for record in records:
        row = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
        row.update({k: _text(record[k]) for k in NESTED if k in record})
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ["run_id", "dataset", "backbone", "method", "preset", "headline_metric"]:
        if column not in frame:
            frame[column] = None
    for column in ["fold", "seed", *METRICS, *COSTS, *TRAINING_COSTS]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    frame[["dataset", "backbone", "method", "preset"]] = frame[["dataset", "backbone", "method", "preset"]].fillna(MISSING)
    frame["status"] = frame["status"].fillna(OK) if "status" in frame else OK
    frame["status_reason"] = frame["status_reason"].fillna("") if "status_reason" in frame else ""
    frame["dataset"] = _dataset_labels(frame)
    frame["config"] = ""
    for method in sorted(set(frame["method"])):
        at = [i for i, r in enumerate(records) if frame.loc[i, "method"] == method]
        frame.loc[at, "config"] = _varying_label([_config_items(records[i]) for i in at])
    frame["settings"] = _varying_label([_setting_items(r) for r in records]) if records else []
    frame["headline_metric"] = frame.groupby("dataset")["headline_metric"].transform(_common_headline) \
        if records else frame["headline_metric"]
    for column in metric_columns(frame)[len(METRICS):]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    first = ["run_id", *KEYS, "fold", "seed", "status", "status_reason", "headline_metric", *metric_columns(frame),
             *COSTS]
    frame = frame[first + sorted(c for c in frame.columns if c not in first)]
    return frame.sort_values(KEYS + ["fold", "seed", "run_id"], kind="stable").reset_index(drop=True)


def _dataset_labels(frame: pd.DataFrame) -> pd.Series:
    """The dataset name, or ``name@<first 8 characters of corpus_fingerprint>`` for every run of a name
    whose runs read more than one corpus (records without a fingerprint count as one ``unknown``), so
    runs of different data are never averaged or paired together."""
    fingerprint = (frame["corpus_fingerprint"].fillna(UNKNOWN_FINGERPRINT).astype(str)
                   if "corpus_fingerprint" in frame else pd.Series(UNKNOWN_FINGERPRINT, index=frame.index))
    corpora = fingerprint.groupby(frame["dataset"]).transform("nunique")
    return frame["dataset"].where(corpora <= 1, frame["dataset"] + "@" + fingerprint.str[:8])


def _common_headline(values: pd.Series):
    """A dataset's headline metric: what its records say (most common), ``ua`` when none says."""
    known = values.dropna()
    return known.mode().sort_values().iloc[0] if len(known) else "ua"


def _complete_mean(values: pd.Series) -> float:
    """Mean over runs, or NaN when any run lacks the figure (never a mean of a subset)."""
    return float(values.mean()) if len(values) and values.notna().all() else math.nan


def _complete_std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 and values.notna().all() else math.nan


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The standard metrics plus any other headline metric a dataset declares (e.g. ``f1_depressed``)."""
    extra = sorted(set(runs["headline_metric"].dropna()) - set(METRICS)) if "headline_metric" in runs else []
    return METRICS + extra


def summary_table(runs: pd.DataFrame, light_preset: str = "lightweight", large_preset: str = "large",
                  seed: int = 0) -> pd.DataFrame:
    """One row per ``KEYS`` group, over its finished runs (failed runs are only counted, in
    ``failed``): ``<metric>_mean``, ``<metric>_std``, ``<cost>`` (mean), ``runs``, ``folds``, ``seeds``;
    ``light_<metric>`` / ``large_<metric>``: the paired mean difference to the ``baseline`` at
    ``light_preset`` / ``large_preset`` of the same dataset, backbone and settings, over the folds both
    ran (seeds averaged within each fold first; ``pairs`` / ``large_pairs`` folds for the headline
    metric; 0 for the reference itself); for the headline metric the paired statistics of
    ``bench.reporting.stats.compare`` (``pairs``, ``ci_low``, ``ci_high``, ``p_wilcoxon``, ``significant``); and
    ``warning`` (see ``large_model_warnings``). Sorted by dataset, then headline mean, best first."""
    metrics = metric_columns(runs)
    columns = [*KEYS, "role", "headline_metric", *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), *COSTS,
               *TRAINING_COSTS, *TRAINING_MULTIPLES,
               "runs", "folds", "seeds", "failed", *(f"{r}_{m}" for r in ("light", "large") for m in metrics),
               *stats.COMPARISON_COLUMNS, "large_pairs", "warning", "headline_mean", "headline_std", "run_ids"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in runs.groupby(KEYS, sort=True):
        done = stats.finished(group)
        teacher = group["teacher_preset"].dropna() if "teacher_preset" in group else pd.Series(dtype=object)
        row = dict(zip(KEYS, key), headline_metric=group["headline_metric"].iloc[0],
                   teacher_preset=teacher.iloc[0] if len(teacher) else None)
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _complete_mean(done[metric]), _complete_std(done[metric])
        row.update({cost: _complete_mean(done[cost]) for cost in COSTS + TRAINING_COSTS})
        row.update(runs=len(done), folds=done["fold"].nunique(), seeds=done["seed"].nunique(),
                   failed=len(group) - len(done), run_ids=" ".join(done["run_id"].astype(str)))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["role"] = ""
    for role, preset in (("light", light_preset), ("large", large_preset)):
        is_reference = ((table["method"] == plain_reference()) & (table["preset"] == preset)).to_numpy()
        table.loc[is_reference, "role"] = role
        paired = table[KEYS].merge(stats.mean_differences(runs, metrics, preset), on=KEYS, how="left")
        table[f"{role}_pairs"] = paired["pairs"].to_numpy()
        for metric in metrics:
            table[f"{role}_{metric}"] = np.where(is_reference & table[f"{metric}_mean"].notna(), 0.0,
                                                 paired[metric].to_numpy(dtype=float))
    table = table.drop(columns="light_pairs")  # the headline's light pairs are ``pairs`` of the comparison
    table = table.assign(**training_multiples(table, light_preset))
    comparison = stats.compare(runs, light_preset, seed=seed)
    table = table.merge(comparison, on=KEYS, how="left") if len(comparison) else \
        table.assign(**{c: np.nan for c in stats.COMPARISON_COLUMNS})
    table["warning"] = ["; ".join(filter(None, texts)) for texts in
                        zip(large_model_warnings(table, large_preset), classical_warnings(table, runs, seed))]
    table["headline_mean"] = [row[f"{row['headline_metric']}_mean"] for _, row in table.iterrows()]
    table["headline_std"] = [row[f"{row['headline_metric']}_std"] for _, row in table.iterrows()]
    table = table.sort_values(["dataset", "headline_mean", *KEYS[1:]], ascending=[True, False] + [True] * 5,
                              na_position="last", kind="stable")
    return table[columns].reset_index(drop=True)


def training_multiples(table: pd.DataFrame, light_preset: str = "lightweight") -> dict[str, np.ndarray]:
    """Per summary row, its training cost as a multiple of the plain ``light_preset`` baseline's own
    training on the same dataset, backbone and settings: FLOPs and seconds of everything trained for the
    run (the method's own training plus the cached models it built on, e.g. kd's teacher), and its own
    training's peak memory. NaN where either side lacks the figure."""
    light = table[(table["method"] == plain_reference()) & (table["preset"] == light_preset)]
    light = light.drop_duplicates(["dataset", "backbone", "settings"]).set_index(["dataset", "backbone", "settings"])
    where = pd.MultiIndex.from_frame(table[["dataset", "backbone", "settings"]])

    def reference(column: str) -> np.ndarray:
        values = light[column].reindex(where).to_numpy(dtype=float)
        return np.where(values > 0, values, np.nan)

    own_flops, own_seconds = table["fit_flops"].to_numpy(dtype=float), table["fit_seconds"].to_numpy(dtype=float)
    return {"train_flops_x": (own_flops + table["reused_fit_flops"].to_numpy(dtype=float)) / reference("fit_flops"),
            "train_seconds_x": (own_seconds + table["reused_fit_seconds"].to_numpy(dtype=float))
            / reference("fit_seconds"),
            "train_memory_x": table["train_peak_memory_bytes"].to_numpy(dtype=float)
            / reference("train_peak_memory_bytes")}


def failed_lines(runs: pd.DataFrame) -> list[str]:
    """One line per failed run: what it was and why it failed."""
    failed = runs[runs["status"] == stats.FAILED]
    return [f"{row['run_id']}: {row['method']} {row['backbone']} @{row['preset']} {row['dataset']} fold "
            f"{_whole(row['fold'])} seed {_whole(row['seed'])}: {row['status_reason'] or 'no reason recorded'}"
            for _, row in failed.iterrows()]


def _whole(value) -> str:
    return "?" if _is_missing(value) else f"{value:.0f}"


def scope_lines(records: list[dict]) -> list[str]:
    """What a grid of a single test fold (per dataset) can and cannot show, one line per such dataset."""
    lines = []
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    for dataset in sorted({r["dataset"] for r in ok}):
        folds = {r["fold"] for r in ok if r["dataset"] == dataset}
        if len(folds) == 1:
            tests = max((r.get("n_test") or 0) for r in ok if r["dataset"] == dataset)
            lines.append(f"{dataset}: one test fold ({tests} utterances of held-out speakers) shows that every method "
                         "runs and what it costs, not which is more accurate: a paired interval needs >= 2 folds "
                         "(--folds 1-5)")
    return lines


def print_summary(records: list[dict], light_preset: str = "lightweight", large_preset: str = "large") -> None:
    """The table printed at the end of ``bench run`` and ``bench report``, then the failed runs."""
    if not records:
        click.echo("no runs recorded")
        return
    runs = runs_frame(records)
    click.echo(to_terminal(summary_table(runs, light_preset, large_preset)))
    for line in scope_lines(records):
        click.echo(line)
    failed = failed_lines(runs)
    if failed:
        click.echo(f"\n{len(failed)} failed run{'s' if len(failed) != 1 else ''} (not in the means or pairs):")
        click.echo("\n".join(f"  {line}" for line in failed))
