"""``bench report``: compiles the run records into tidy tables (under the results folder), figures
and one self-contained HTML leaderboard (``reports/index.html``: inline CSS/JS, figures as data URIs,
no network fetches). The same records always give byte-identical output."""

from __future__ import annotations

import base64
import difflib
import json
import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import click
import jinja2
import pandas as pd

from bench.reporting import plots

from bench.reporting import stats
from bench.reporting.page import regenerate_command, results_page
from bench.paths import UserPath
from bench.method import plain_reference
from bench.registry import BACKBONES, BenchError
from bench.reporting.results import RecordStore, atomic_write_text, check_folders
from bench.reporting.checks import classical_references
from bench.reporting.columns import KEYS, LABELS, METRICS, MISSING, is_true
from bench.reporting.formats import (count, milliseconds, multiple, percent, signed_points, size, to_latex, to_markdown,
                                     to_terminal)
from bench.reporting.summary import runs_frame, summary_table

MAX_EXTRA_ROWS = 200  # rows shown per extra measurement table; the file keeps them all
MAX_NAMED_FAILURES = 5  # failed runs named in the note; the tables under the leaderboards list them all
FILTERS = ("backbone", "preset", "method")
OPTIONAL_COSTS = ("flops", "size_bytes")  # shown when some row of the dataset has them
DEPLOY_MEANS = ("latency_ratio", "latency_min_ms", "headline_onnx", "int8_macs", "float_macs")
PAGE_COLUMNS = ("failed_run", "has_history", "headline", "headline_onnx")  # added for the page (with_run_columns)
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_ua", "lr", "seconds")
CITATION = ("Re-Parameterization of Lightweight Transformer for On-Device Speech Emotion Recognition, "
            "arXiv:2411.09339, 2024")


@dataclass
class Report:
    """What ``build_report`` wrote and found."""

    index: Path
    tables: dict[str, Path]
    summary: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def board_columns(rows: pd.DataFrame, headline: str) -> list[tuple[str, str, str, str]]:
    """The leaderboard's columns (key, label, type, title): headline first, optional ones only when
    some row of the dataset has them."""
    label = LABELS.get(headline, headline)
    optional = [c for c in ("config", "settings") if rows[c].astype(bool).any()]
    costs = ["params", "macs", *(c for c in OPTIONAL_COSTS if rows[c].notna().any())]
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
                ("p", "p", "num", "Wilcoxon signed-rank p-value of the paired differences"),
                ("large", "Δ large", "num", "paired mean difference to the large baseline in points, over folds")]
    columns += [(m, f"{LABELS[m]} %", "num", "") for m in METRICS if m != headline]
    columns += [("onnx", f"{label} ONNX %", "num", "the exported ONNX model in ONNX Runtime on the test fold"),
                ("onnx_status", "ONNX", "text", "export check against PyTorch predictions")] if has_onnx else []
    columns += [(c, LABELS[c], "num", "deploy model, 5 s input" if c != "params" else "deploy model") for c in costs]
    columns += [("int8", "int8 MACs", "num", "MACs run in int8 (under them: MACs that stay float), from the quantized graph"),
                ("quant_scheme", "quant", "text", "quantization scheme")] if has_int8 else []
    columns += [("latency_ratio", "latency ×", "num", "latency / the plain lightweight model of the backbone, timed "
                                                      "interleaved in one process; under it the 95 % interval (the "
                                                      "envelope of the runs' intervals)"),
                ("latency_min_ms", "min ms", "num", "minimum latency, 5 s input, 1 thread"),
                ("latency_ms", "median ms", "num", "median latency, 5 s input, 1 thread: typical, but drifts with the machine")]
    columns += [("train_x", "train ×", "num", "training FLOPs of everything trained for the run (the method's own "
                                              "training and the cached models it built on, e.g. a teacher) as a "
                                              "multiple of the plain lightweight model's; under it the multiples of "
                                              "training seconds and of peak training memory")] \
        if rows["train_flops_x"].notna().any() else []
    columns += [("runs", "runs", "num", "runs averaged (folds x seeds)")]
    columns += [("failed", "failed", "num", "runs that could not run: listed under the table, never averaged")] if has_failed else []
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
        method = dict(_text(row["method"]), sub=f"⚠ {warning}" if warning else "", sub_cls="warn")
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
            "columns": [dict(zip(("key", "label", "type", "title"), c)) for c in columns]}


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


def read_csv_tables(paths: list[Path], problems: list[str]) -> dict[str, pd.DataFrame]:
    """CSV files by name; an unreadable one becomes a problem line naming it, never a crash."""
    tables = {}
    for path in paths:
        try:
            tables[path] = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as error:
            problems.append(f"{path}: unreadable CSV ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
    return tables


def study_line(name: str, frame: pd.DataFrame) -> str:
    values = pd.to_numeric(frame.get("value", pd.Series(dtype=float)), errors="coerce")
    states = frame["state"].astype(str) if "state" in frame else pd.Series("COMPLETE", index=frame.index)
    complete = (states == "COMPLETE") & values.notna()
    text = f"{len(frame)} trials, {int(complete.sum())} complete"
    if complete.any():
        minimize = "direction" in frame and str(frame["direction"].iloc[0]).lower().startswith("min")
        best = values[complete].idxmin() if minimize else values[complete].idxmax()
        params = ", ".join(f"{c[len('params_'):]}={frame.loc[best, c]}" for c in sorted(frame.columns) if c.startswith("params_"))
        text += f"; best objective {values[best]:.4g} (trial {frame.loc[best, 'trial'] if 'trial' in frame else best}: {params})"
    return text


def extra_table(name: str, frame: pd.DataFrame) -> dict:
    shown = frame.head(MAX_EXTRA_ROWS)
    cell = lambda v: MISSING if pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    return {"name": name, "columns": [str(c) for c in frame.columns],
            "rows": [[cell(v) for v in row] for row in shown.itertuples(index=False)],
            "note": f"first {MAX_EXTRA_ROWS} of {len(frame)} rows" if len(frame) > MAX_EXTRA_ROWS else ""}


def notes_for(runs: pd.DataFrame, summary: pd.DataFrame, light_preset: str) -> list[str]:
    notes = []
    for column, what in (("env_cpu", "CPU models"), ("env_host", "hosts")):
        if column in runs and runs[column].nunique() > 1:
            notes.append(f"Runs come from {runs[column].nunique()} {what} ({', '.join(sorted(runs[column].dropna().astype(str).unique()))}): "
                         f"latency of rows from different machines is not comparable.")
    has_reference = summary[summary["role"] == "light"][["dataset", "backbone", "settings"]].drop_duplicates()
    cells = summary[["dataset", "backbone", "settings"]].drop_duplicates()
    lacking = cells.merge(has_reference, how="left", indicator=True)
    for _, cell in lacking[lacking["_merge"] == "left_only"].iterrows():
        where = f"{cell['dataset']} / {cell['backbone']}" + (f" ({cell['settings']})" if cell["settings"] else "")
        reference = plain_reference()
        notes.append(f"No {reference} @{light_preset} runs for {where}: Δ light and the paired statistics are missing "
                     f"(run `bench run --methods {reference} --presets {light_preset}` or pass --light-preset).")
    return notes


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _version() -> str:
    try:
        return metadata.version("hrf-bench")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def render_page(context: dict) -> str:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("bench.reporting", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.get_template("index.html.j2").render(**context)


def known_presets(runs: pd.DataFrame) -> list[str]:
    """Presets of the registered backbones and of the recorded runs (a plug-in may not be loaded)."""
    registered = {preset for entry in BACKBONES.entries() for preset in entry.extra.get("presets", {})}
    return sorted(registered | set(runs["preset"]) - {MISSING})


def check_preset(option: str, preset: str, known: list[str]) -> None:
    if preset not in known:
        close = difflib.get_close_matches(preset, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BenchError(f"unknown preset {preset!r} for {option}.{hint} Available: {', '.join(known)}")


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


def build_report(results_dir: Path, reports_dir: Path, light_preset: str = "lightweight",
                 large_preset: str = "large", seed: int = 0) -> Report:
    """Tables under ``<results_dir>/tables``, figures under ``<reports_dir>/plots`` and the page."""
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    if not results_dir.is_dir():
        raise BenchError(f"results folder {results_dir} does not exist: run `bench run` first or pass --results-dir")
    check_folders(results_dir, ("tables",))
    if reports_dir.exists() and not reports_dir.is_dir():
        raise BenchError(f"{reports_dir} is a file where the report's folder belongs: move it away or pass --reports-dir")
    check_folders(reports_dir, ("plots",))
    records, problems = RecordStore(results_dir).load()
    runs = runs_frame(records)
    presets = known_presets(runs)
    check_preset("--light-preset", light_preset, presets)
    check_preset("--large-preset", large_preset, presets)
    summary = summary_table(runs, light_preset, large_preset, seed)
    differences = stats.paired_differences(runs, light_preset=light_preset)
    forest = (stats.forest(runs, seed, tuple(classical_references(set(runs["method"])))) if len(runs)
              else pd.DataFrame(columns=stats.FOREST_COLUMNS))
    tables_dir = results_dir / "tables"
    texts = {"runs.csv": runs.to_csv(index=False), "summary.csv": summary.to_csv(index=False),
             "differences.csv": differences.to_csv(index=False),
             "forest.csv": forest.to_csv(index=False),
             "summary.md": to_markdown(summary),
             "summary.tex": to_latex(summary)}
    tables = {}
    for name, text in texts.items():
        tables[name] = tables_dir / name
        atomic_write_text(tables[name], text)
    histories = {r["run_id"]: r["history"] for r in records if isinstance(r.get("history"), list) and r["history"]}
    runs = with_run_columns(runs, histories)
    finished = runs[~runs["failed_run"]]
    board = summary.merge(deploy_table(finished), on=KEYS, how="left")
    board = board.fillna({"onnx_status": MISSING, "onnx_reasons": "", "quant_scheme": ""})
    studies = {p.stem: f for p, f in read_csv_tables(sorted((results_dir / "tune").glob("*.csv")), problems).items()}
    extra_paths = sorted(p for entry in sorted(results_dir.glob("latency*"))
                         for p in ([entry] if entry.is_file() else sorted(entry.rglob("*.csv"))) if p.suffix == ".csv")
    extra = read_csv_tables(extra_paths, problems)
    figures = plots.make_plots(board, finished, histories, studies, reports_dir / "plots", seed, forest)
    curves = {f.svg.stem for f in figures if f.section == "curves"}
    notes = notes_for(runs, summary, light_preset) if len(summary) else []
    failed = runs[runs["failed_run"]]
    if len(failed):
        named = [f"{r['method']} {r['backbone']}@{r['preset']} fold {_whole(r['fold'])} seed {_whole(r['seed'])}"
                 for _, r in failed.head(MAX_NAMED_FAILURES).iterrows()]
        more = f"; and {len(failed) - len(named)} more" if len(failed) > len(named) else ""
        notes.append(f"{_plural(len(failed), 'run')} failed and {'is' if len(failed) == 1 else 'are'} listed under "
                     f"{'its' if failed['dataset'].nunique() == 1 else 'their'} leaderboard, never averaged: "
                     + "; ".join(named) + more)
    boards = [leaderboard(d, rows, runs[runs["dataset"] == d], curves) for d, rows in board.groupby("dataset", sort=True)]
    empty = (f"No run records in {results_dir / 'records'}: run `bench run --results-dir {results_dir}` first."
             if not records else "")
    shown = {b["dataset"] for b in boards}
    failed_tables = [{"dataset": d, "slug": _slug(d), "runs": failed_runs(part)}
                     for d, part in runs[runs["failed_run"]].groupby("dataset", sort=True)]
    figure_items = [{"name": f.svg.stem, "title": f.title, "caption": f.caption, "section": f.section,
                     "files": f"{f.svg.relative_to(reports_dir)}, {f.png.relative_to(reports_dir)}",
                     "data": base64.b64encode(f.svg.read_bytes()).decode()} for f in figures]
    context = {
        "overview": " · ".join(_plural(n, what) for n, what in (
            (len(runs), "run"), (runs["dataset"].nunique(), "dataset"), (runs["backbone"].nunique(), "backbone"),
            (runs["method"].nunique(), "method"))) if len(runs) else "No runs recorded yet.",
        "problems": problems, "notes": notes, "empty_message": empty, "light_preset": light_preset,
        "large_preset": large_preset, "min_wilcoxon": stats.MIN_WILCOXON_NONZERO,
        "min_pairs": stats.MIN_SIGNIFICANT_PAIRS,
        "filters": [(name, sorted(set(summary[name]))) for name in FILTERS],
        "leaderboards": boards,
        "failed": {t["dataset"]: t for t in failed_tables if t["dataset"] in shown},
        "failed_elsewhere": [t for t in failed_tables if t["dataset"] not in shown],
        "tables": [str(p) for p in tables.values()],
        "figures": [f for f in figure_items if f["section"] != "curves"],
        "curves": [f for f in figure_items if f["section"] == "curves"],
        "studies": [{"name": name, "text": study_line(name, frame)} for name, frame in sorted(studies.items())],
        "extra_tables": [extra_table(str(p.relative_to(results_dir)), frame) for p, frame in extra.items()],
        "runs": run_details(runs, histories, curves), "environment": environment_table(runs), "version": _version(),
        "results_dir": str(results_dir), "citation": CITATION,
    }
    index = reports_dir / "index.html"
    atomic_write_text(index, render_page(context))
    command = regenerate_command(results_dir, reports_dir, light_preset, large_preset, seed)
    atomic_write_text(reports_dir / "results.md", results_page(runs, summary, notes, command))
    return Report(index, tables, summary, problems, notes + ([empty] if empty else []))


@click.command("report")
@click.option("--results-dir", type=UserPath(), default=Path("results"), show_default=True)
@click.option("--reports-dir", type=UserPath(), default=Path("reports"), show_default=True)
@click.option("--light-preset", default="lightweight", show_default=True,
              help="preset of the baseline that every method is compared to")
@click.option("--large-preset", default="large", show_default=True, help="preset of the large baseline")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the bootstrap intervals")
@click.option("--quiet", "-q", is_flag=True, help="print nothing but record problems (on stderr)")
def report_command(results_dir: Path, reports_dir: Path, light_preset: str, large_preset: str, seed: int,
                   quiet: bool) -> None:
    """Tidy tables, statistics, plots and the HTML leaderboard from the run records."""
    report = build_report(results_dir, reports_dir, light_preset, large_preset, seed)
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)
    if quiet:
        return
    for note in report.notes:
        click.echo(f"note: {note}")
    if len(report.summary):
        click.echo(to_terminal(report.summary))
    click.echo(f"tables: {report.tables['summary.csv'].parent}  page: {report.index}")
