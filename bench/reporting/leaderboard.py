"""The leaderboard's content as data for the page's template: one sortable table per dataset (cells with
their full-precision values), the deploy figures, failed runs, and each run's details and history."""

from __future__ import annotations

import json
import math

import pandas as pd

from bench.reporting import plots
from bench.reporting.columns import KEYS, LABELS, METRICS, MISSING, is_true
from bench.reporting.formats import count, milliseconds, multiple, percent, signed_points, size

OPTIONAL_COSTS = ("flops", "size_bytes")  # shown when some row of the dataset has them
DEPLOY_MEANS = ("latency_min_ms", "headline_onnx", "int8_macs", "float_macs")
PAGE_COLUMNS = ("failed_run", "has_history", "headline", "headline_onnx")  # added for the page (with_run_columns)
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_ua", "lr", "seconds")
def _value(v) -> str | None:
    """``data-value`` of a cell: full-precision number, or None when missing (sorts last)."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def _num(text: str, value, title: str = "", cls: str = "num") -> dict:
    missing = text == MISSING
    return {"text": text, "value": _value(value), "cls": cls + (" missing" if missing else ""),
            "title": "missing: not recorded by every run of this row" if missing else title, "sub": "",
            "sub_cls": "ci", "links": []}


def _text(text: str) -> dict:
    return {"text": text, "value": text, "cls": "text" + (" missing" if text == MISSING else ""), "title": "", "sub": "",
            "sub_cls": "ci", "links": []}


def _slug(text: str) -> str:
    return plots.slug(text).lower()


# Folded behind the board's "all metrics" toggle: the first view is the trade-off (accuracy, its paired
# difference, and every cost), which must fit a 1400 px screen without scrolling.
SECONDARY = ("p", *METRICS, "onnx", "onnx_status", *OPTIONAL_COSTS, "int8", "quant_scheme", "latency_min_ms",
             "latency_ms", "runs")


def board_columns(rows: pd.DataFrame, headline: str) -> list[tuple[str, str, str, str]]:
    """The leaderboard's columns (key, label, type, title): the first view (method, headline metric, its
    paired differences, then the costs), then the secondary ones (:data:`SECONDARY`, folded on the page),
    then the links to each run; optional columns only when some row of the dataset has them."""
    label = LABELS.get(headline, headline)
    optional = [c for c in ("config", "settings") if rows[c].astype(bool).any()]
    has_onnx = rows["headline_onnx"].notna().any() or rows["onnx_status"].ne(MISSING).any()
    has_int8 = rows["int8_macs"].gt(0).any()  # every record may say 0 (float); the column is for quantized models
    has_failed = "failed" in rows and pd.to_numeric(rows["failed"], errors="coerce").fillna(0).gt(0).any()
    columns = [("method", "method", "text", "compression method")]
    columns += [("config", "config", "text", "method parameters that differ between runs")] if "config" in optional else []
    columns += [("backbone", "backbone", "text", ""), ("preset", "preset", "text", "deploy preset")]
    columns += [("settings", "settings", "text", "training/feature settings that differ")] if "settings" in optional else []
    columns += [("headline", f"{label} %", "num", f"headline metric {label}, mean ± std"),
                ("light", "Δ light", "num", "paired mean difference to the lightweight baseline in points, over the "
                                            "folds both ran (seeds averaged within a fold), with its 95 % interval"),
                ("large", "Δ large", "num", "paired mean difference to the large baseline in points, over folds")]
    columns += [("params", LABELS["params"], "num", "deploy model"), ("macs", LABELS["macs"], "num", "deploy model, 5 s input")]
    columns += [("latency_ratio", "latency ×", "num", "latency / the plain lightweight model of the backbone, timed "
                                                      "interleaved in one process; under it the 95 % interval (the "
                                                      "envelope of the runs' intervals)")]
    columns += [("train_x", "train ×", "num", "training FLOPs of everything trained for the run (the method's own "
                                              "training and the cached models it built on, e.g. a teacher) as a "
                                              "multiple of the plain lightweight model's; under it the multiples of "
                                              "training seconds and of peak training memory")] \
        if rows["train_flops_x"].notna().any() else []
    columns += [("failed", "failed", "num", "runs that could not run: listed under the table, never averaged")] if has_failed else []
    columns += [("p", "p", "num", "Wilcoxon signed-rank p-value of the paired differences to the lightweight baseline")]
    columns += [(m, f"{LABELS[m]} %", "num", "") for m in METRICS if m != headline]
    columns += [("onnx", f"{label} ONNX %", "num", "the exported ONNX model in ONNX Runtime on the test fold"),
                ("onnx_status", "ONNX", "text", "export check against PyTorch predictions")] if has_onnx else []
    columns += [(c, LABELS[c], "num", "deploy model, 5 s input") for c in OPTIONAL_COSTS if rows[c].notna().any()]
    columns += [("int8", "int8 MACs", "num", "MACs run in int8 (under them: MACs that stay float), from the quantized graph"),
                ("quant_scheme", "quant", "text", "quantization scheme")] if has_int8 else []
    columns += [("latency_min_ms", "min ms", "num", "minimum latency, 5 s input, 1 thread"),
                ("latency_ms", "median ms", "num", "median latency, 5 s input, 1 thread: typical, but drifts with the machine")]
    columns += [("runs", "runs", "num", "runs averaged (folds x seeds)")]
    columns += [("details", "details", "text", "per-run details and learning curves")]
    return columns


def leaderboard(dataset: str, rows: pd.DataFrame, runs: pd.DataFrame, curves: set[str]) -> dict:
    """The leaderboard of one dataset: columns (headline metric first), rows of display cells and the
    summary's warnings. ``curves``: names of the learning-curve figures drawn."""
    headline = rows["headline_metric"].iloc[0]
    label = LABELS.get(headline, headline)
    columns = board_columns(rows, headline)
    has_failed = any(c[0] == "failed" for c in columns)
    by_id = {str(rid): (fold, seed) for rid, fold, seed in zip(runs["run_id"], runs["fold"], runs["seed"])}
    body, warnings = [], []
    for _, row in rows.iterrows():
        warning = row["warning"] if isinstance(row.get("warning"), str) else ""
        failed = float(pd.to_numeric(row.get("failed", 0), errors="coerce")) if has_failed else math.nan
        light = row["diff_mean"]
        light_cell = _num("ref" if row["role"] == "light" else signed_points(light), light)
        folds = "" if row["role"] == "light" or math.isnan(row["pairs"]) else _plural(int(row["pairs"]), "fold")
        if not math.isnan(row["ci_low"]):
            significant = is_true(row["significant"])
            light_cell["sub"] = f"[{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]" + (" *" if significant else "")
            light_cell["cls"] += (" sig" + (" down" if row["ci_high"] < 0 else "")) if significant else ""
        light_cell["sub"] = " · ".join(t for t in (light_cell["sub"], folds) if t)
        large = row[f"large_{headline}"]
        ratio = _num(MISSING if math.isnan(row["latency_ratio"]) else f"{row['latency_ratio']:.2f}×", row["latency_ratio"])
        if not math.isnan(row["latency_ratio"]) and not math.isnan(row["latency_ratio_ci_low"]):
            ratio["sub"] = f"[{row['latency_ratio_ci_low']:.2f}, {row['latency_ratio_ci_high']:.2f}]"
        # the warning's text is said once, in the box above the table; the row marks it and links there
        method = dict(_text(row["method"]), sub="⚠ see above" if warning else "", sub_cls="warn",
                      title=warning)
        cells = {"method": method, "config": _text(row["config"]), "backbone": _text(row["backbone"]),
                 "preset": _text(row["preset"]), "settings": _text(row["settings"]),
                 "headline": _num(percent(row["headline_mean"], row["headline_std"]), row["headline_mean"],
                                  cls="num headline"),
                 "light": light_cell,
                 "p": _num(MISSING if math.isnan(row["p_wilcoxon"]) else f"{row['p_wilcoxon']:.3f}", row["p_wilcoxon"]),
                 "large": dict(_num("ref" if row["role"] == "large" else signed_points(large), large),
                               sub=_plural(int(row["large_pairs"]), "fold") if row["role"] != "large"
                               and not math.isnan(row.get("large_pairs", math.nan)) else ""),
                 "onnx": _num(percent(row["headline_onnx"]), row["headline_onnx"]),
                 "onnx_status": dict(_text(row["onnx_status"]), title=row["onnx_reasons"],
                                     cls="text nowrap" + (" bad" if "failed" in row["onnx_status"] else "")),
                 "int8": dict(_num(count(row["int8_macs"]), row["int8_macs"]),
                              sub="" if math.isnan(row["int8_macs"]) else f"float {count(row['float_macs'])}"),
                 "quant_scheme": _text(row["quant_scheme"]),
                 "latency_ratio": ratio,
                 "latency_min_ms": _num(milliseconds(row["latency_min_ms"]), row["latency_min_ms"]),
                 "latency_ms": _num(milliseconds(row["latency_ms"]), row["latency_ms"]),
                 "train_x": dict(_num(multiple(row["train_flops_x"]), row["train_flops_x"]),
                                 sub=" · ".join(f"{multiple(row[c])} {what}" for c, what in
                                                (("train_seconds_x", "time"), ("train_memory_x", "memory"))
                                                if not math.isnan(row[c]))),
                 "runs": _num(str(row["runs"]), row["runs"], title=f"{row['folds']} folds x {row['seeds']} seeds"),
                 "failed": _num(_whole(failed), failed, cls="num" + (" bad" if failed > 0 else ""))}
        cells.update({m: _num(percent(row[f"{m}_mean"], row[f"{m}_std"]), row[f"{m}_mean"]) for m in METRICS})
        cells.update({c: _num(count(row[c]), row[c]) for c in ("params", "macs", "flops")})
        cells["size_bytes"] = _num(size(row["size_bytes"]), row["size_bytes"])
        run_ids = row["run_ids"].split()
        links = [(f"run-{rid}", "f{}·s{}".format(*map(_whole, by_id.get(rid, (math.nan, math.nan))))) for rid in run_ids]
        figure = plots.curves_name(dataset, row["backbone"])
        drawn = runs[runs["run_id"].isin(run_ids) & runs["has_history"] & ~runs["failed_run"]]
        if figure in curves and len(drawn):
            links.append((f"plot-{figure}", "curves"))
        cells["details"] = dict(_text(""), links=links, cls="text runs")
        attrs = [(k, row[k]) for k in ("dataset", "backbone", "preset", "method", "config", "settings")]
        if warning:
            warnings.append((plots.row_label(row), row["backbone"], warning))
        body.append({"attrs": attrs, "reference": bool(row["role"]), "warning": bool(warning),
                     "cells": [cells[c[0]] for c in columns]})
    return {"dataset": dataset, "slug": _slug(dataset), "headline": label, "rows": body, "warnings": warnings,
            "columns": [dict(zip(("key", "label", "type", "title"), c), more=c[0] in SECONDARY) for c in columns]}


def failed_runs(runs: pd.DataFrame) -> list[dict]:
    """The failed runs of one dataset, for the table under its leaderboard."""
    return [{"id": run["run_id"], "method": run["method"], "config": run["config"], "backbone": run["backbone"],
             "preset": run["preset"], "fold": _whole(run["fold"]), "seed": _whole(run["seed"]),
             "reason": run["status_reason"] if isinstance(run.get("status_reason"), str) and run["status_reason"] else MISSING}
            for _, run in runs[runs["failed_run"]].iterrows()]


def _whole(value) -> str:
    """A fold or seed number as text; ``?`` when the record lacks it."""
    return "?" if math.isnan(value) else f"{value:.0f}"


def run_details(runs: pd.DataFrame, histories: dict[str, list], curves: set[str]) -> list[dict]:
    """Per run: anchor id, title line, status, corpus, confusion matrix, learning history (with a link
    to its curves) and every recorded field."""
    details = []
    for _, run in runs.iterrows():
        matrix = json.loads(run["confusion"]) if isinstance(run.get("confusion"), str) else []
        classes = json.loads(run["classes"]) if isinstance(run.get("classes"), str) else []
        classes = classes if len(classes) == len(matrix) else [str(i) for i in range(len(matrix))]
        headline = run["headline_metric"]
        score = percent(run[headline]) if headline in run else MISSING
        config = f" [{run['config']}]" if run["config"] else ""
        fold, seed = _whole(run["fold"]), _whole(run["seed"])
        fields = [(k, v) for k, v in run.items() if k not in ("confusion", "classes", *PAGE_COLUMNS)
                  and not (v is None or v == "" or (isinstance(v, float) and math.isnan(v)))]
        history = [epoch for epoch in histories.get(run["run_id"], []) if isinstance(epoch, dict)]
        figure = plots.curves_name(run["dataset"], run["backbone"])
        details.append({
            "id": run["run_id"],
            "title": ("FAILED · " if run["failed_run"] else "")
                     + f"{run['dataset']} · {run['backbone']} · {run['method']}{config} @{run['preset']} · fold {fold} · "
                     f"seed {seed} · " + (run["status_reason"] if run["failed_run"] and isinstance(run.get("status_reason"), str)
                                          else f"{LABELS.get(headline, headline)} {score}"),
            "failed": bool(run["failed_run"]),
            "corpus": run["corpus_fingerprint"] if isinstance(run.get("corpus_fingerprint"), str) else MISSING,
            "classes": classes,
            "confusion": [(name, [(v, i == j) for j, v in enumerate(counts)])
                          for i, (name, counts) in enumerate(zip(classes, matrix))],
            "history_columns": [k for k in HISTORY_KEYS if any(k in epoch for epoch in history)],
            "history": [[_history_cell(epoch.get(k)) for k in HISTORY_KEYS if any(k in e for e in history)]
                        for epoch in history],
            "curves": f"plot-{figure}" if history and figure in curves and not run["failed_run"] else "",
            "fields": sorted((str(k), str(v)) for k, v in fields)})
    return details


def _history_cell(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def deploy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per summary row (``KEYS``), over its finished runs, the deploy figures the leaderboard shows
    beside the summary: the means of ``DEPLOY_MEANS`` (missing when a run lacks one, as in the
    summary), the envelope of the runs' latency-ratio intervals, and the ONNX and quantization states."""
    columns = [*KEYS, *DEPLOY_MEANS, "latency_ratio_ci_low", "latency_ratio_ci_high", "onnx_status", "onnx_reasons",
               "quant_scheme"]
    rows = []
    for key, group in runs.groupby(KEYS, sort=True):
        row = dict(zip(KEYS, key))
        for column in DEPLOY_MEANS:
            row[column] = group[column].mean() if group[column].notna().all() else math.nan
        complete = group["latency_ratio_ci_low"].notna().all() and group["latency_ratio_ci_high"].notna().all()
        row["latency_ratio_ci_low"] = group["latency_ratio_ci_low"].min() if complete else math.nan
        row["latency_ratio_ci_high"] = group["latency_ratio_ci_high"].max() if complete else math.nan
        states = [s for s in group["onnx_status"] if isinstance(s, str) and s]
        kinds = sorted({s.split(":")[0] for s in states})  # failed, not exported, ok
        row["onnx_status"] = (MISSING if not states else kinds[0] if len(kinds) == 1 and len(states) == len(group)
                              else "; ".join(f"{k} {sum(s.split(':')[0] == k for s in states)}/{len(group)}" for k in kinds))
        row["onnx_reasons"] = "; ".join(sorted({s for s in states if s.startswith("failed")}))
        row["quant_scheme"] = ", ".join(sorted({str(s) for s in group["quant_scheme"] if isinstance(s, str) and s}))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def environment_table(runs: pd.DataFrame) -> list[tuple[str, list[tuple[str, int]]]]:
    table = []
    for column in sorted(c for c in runs.columns if c.startswith("env_")):
        counts = runs[column].fillna(MISSING).astype(str).value_counts()
        table.append((column, sorted(counts.items())))
    return table


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def with_run_columns(runs: pd.DataFrame, histories: dict[str, list]) -> pd.DataFrame:
    """The runs table plus what the page needs per run: ``failed_run`` (status "failed"; records
    without a status finished), ``has_history``, ``headline`` and ``headline_onnx`` (the dataset's
    headline metric, of the PyTorch and the ONNX model), and the deploy columns, NaN where absent."""
    runs = runs.copy()
    for column in ("latency_ratio", "latency_ratio_ci_low", "latency_ratio_ci_high", "latency_min_ms", "int8_macs",
                   "float_macs", *(f"{m}_onnx" for m in set(runs["headline_metric"]))):
        runs[column] = pd.to_numeric(runs[column], errors="coerce") if column in runs else math.nan
    for column in ("onnx_status", "quant_scheme", "status", "status_reason", "corpus_fingerprint"):
        if column not in runs:
            runs[column] = None
    runs["failed_run"] = runs["status"].eq("failed")
    runs["has_history"] = runs["run_id"].isin(list(histories))
    runs["headline"] = [run[run["headline_metric"]] for _, run in runs.iterrows()]
    runs["headline_onnx"] = [run[f"{run['headline_metric']}_onnx"] for _, run in runs.iterrows()]
    return runs
