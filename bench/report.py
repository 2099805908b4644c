"""``bench report``: compiles the run records into tidy tables (under the results folder), figures
and one self-contained HTML leaderboard (``reports/index.html``: inline CSS/JS, figures as data URIs,
no network fetches). The same records always give byte-identical output."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import click
import jinja2
import pandas as pd

from bench import plots, stats
from bench.registry import BenchError
from bench.results import RecordStore, atomic_write_text
from bench.summary import (LABELS, METRICS, MISSING, count, is_true, milliseconds, percent, runs_frame,
                           signed_points, size, summary_table, to_latex, to_markdown, to_terminal)

MAX_EXTRA_ROWS = 200  # rows shown per extra measurement table; the file keeps them all
FILTERS = ("backbone", "preset", "method")
OPTIONAL_COSTS = ("flops", "size_bytes")  # shown when some row of the dataset has them


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
            "title": "missing: not recorded by every run of this row" if missing else title, "sub": "", "links": []}


def _text(text: str) -> dict:
    return {"text": text, "value": text, "cls": "text", "title": "", "sub": "", "links": []}


def _slug(text: str) -> str:
    return plots.slug(text).lower()


def leaderboard(dataset: str, rows: pd.DataFrame, runs: pd.DataFrame) -> dict:
    """The leaderboard of one dataset: columns (headline metric first) and rows of display cells."""
    headline = rows["headline_metric"].iloc[0]
    label = LABELS.get(headline, headline)
    optional = [c for c in ("config", "settings") if rows[c].astype(bool).any()]
    costs = ["params", "macs", *(c for c in OPTIONAL_COSTS if rows[c].notna().any()), "latency_ms"]
    columns = [("method", "method", "text", "compression method")]
    columns += [("config", "config", "text", "method parameters that differ between runs")] if "config" in optional else []
    columns += [("backbone", "backbone", "text", ""), ("preset", "preset", "text", "deploy preset")]
    columns += [("settings", "settings", "text", "training/feature settings that differ")] if "settings" in optional else []
    columns += [("headline", f"{label} %", "num", f"headline metric {label}, mean ± std"),
                ("light", "Δ light", "num", "difference to the lightweight baseline, points"),
                ("p", "p", "num", "Wilcoxon signed-rank p-value of the paired differences"),
                ("large", "Δ large", "num", "difference to the large baseline, points")]
    columns += [(m, f"{LABELS[m]} %", "num", "") for m in METRICS if m != headline]
    columns += [(c, LABELS[c], "num", "deploy model, 5 s input" if c != "params" else "deploy model") for c in costs]
    columns += [("runs", "runs", "num", "runs averaged (folds x seeds)"), ("details", "details", "text", "per-run details")]
    by_id = {str(rid): (fold, seed) for rid, fold, seed in zip(runs["run_id"], runs["fold"], runs["seed"])}
    body = []
    for _, row in rows.iterrows():
        light = row[f"light_{headline}"]
        light_cell = _num("ref" if row["role"] == "light" else signed_points(light), light)
        if not math.isnan(row["ci_low"]):
            significant = is_true(row["significant"])
            light_cell["sub"] = f"[{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]" + (" *" if significant else "")
            light_cell["cls"] += (" sig" + (" down" if row["ci_high"] < 0 else "")) if significant else ""
        large = row[f"large_{headline}"]
        cells = {"method": _text(row["method"]), "config": _text(row["config"]), "backbone": _text(row["backbone"]),
                 "preset": _text(row["preset"]), "settings": _text(row["settings"]),
                 "headline": _num(percent(row["headline_mean"], row["headline_std"]), row["headline_mean"],
                                  cls="num headline"),
                 "light": light_cell,
                 "p": _num(MISSING if math.isnan(row["p_wilcoxon"]) else f"{row['p_wilcoxon']:.3f}", row["p_wilcoxon"]),
                 "large": _num("ref" if row["role"] == "large" else signed_points(large), large),
                 "latency_ms": _num(milliseconds(row["latency_ms"]), row["latency_ms"]),
                 "runs": _num(str(row["runs"]), row["runs"], title=f"{row['folds']} folds x {row['seeds']} seeds")}
        cells.update({m: _num(percent(row[f"{m}_mean"], row[f"{m}_std"]), row[f"{m}_mean"]) for m in METRICS})
        cells.update({c: _num(count(row[c]), row[c]) for c in ("params", "macs", "flops")})
        cells["size_bytes"] = _num(size(row["size_bytes"]), row["size_bytes"])
        links = [(f"run-{rid}", "f{}·s{}".format(*map(_whole, by_id.get(rid, (math.nan, math.nan)))))
                 for rid in row["run_ids"].split()]
        cells["details"] = dict(_text(""), links=links, cls="text runs")
        attrs = [(k, row[k]) for k in ("dataset", "backbone", "preset", "method", "config", "settings")]
        body.append({"attrs": attrs, "reference": bool(row["role"]), "cells": [cells[c[0]] for c in columns]})
    return {"dataset": dataset, "slug": _slug(dataset), "headline": label, "rows": body,
            "columns": [dict(zip(("key", "label", "type", "title"), c)) for c in columns]}


def _whole(value) -> str:
    """A fold or seed number as text; ``?`` when the record lacks it."""
    return "?" if math.isnan(value) else f"{value:.0f}"


def run_details(runs: pd.DataFrame) -> list[dict]:
    """Per run: anchor id, title line, confusion matrix and every recorded field."""
    details = []
    for _, run in runs.iterrows():
        matrix = json.loads(run["confusion"]) if isinstance(run.get("confusion"), str) else []
        classes = json.loads(run["classes"]) if isinstance(run.get("classes"), str) else []
        classes = classes if len(classes) == len(matrix) else [str(i) for i in range(len(matrix))]
        headline = run["headline_metric"]
        score = percent(run[headline]) if headline in run else MISSING
        config = f" [{run['config']}]" if run["config"] else ""
        fold, seed = _whole(run["fold"]), _whole(run["seed"])
        fields = [(k, v) for k, v in run.items() if k not in ("confusion", "classes")
                  and not (v is None or v == "" or (isinstance(v, float) and math.isnan(v)))]
        details.append({
            "id": run["run_id"],
            "title": f"{run['dataset']} · {run['backbone']} · {run['method']}{config} @{run['preset']} · fold {fold} · "
                     f"seed {seed} · {LABELS.get(headline, headline)} {score}",
            "classes": classes,
            "confusion": [(name, [(v, i == j) for j, v in enumerate(counts)])
                          for i, (name, counts) in enumerate(zip(classes, matrix))],
            "fields": sorted((str(k), str(v)) for k, v in fields)})
    return details


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
        notes.append(f"No baseline @{light_preset} runs for {where}: Δ light and the paired statistics are missing "
                     f"(run `bench run --methods baseline --presets {light_preset}` or pass --light-preset).")
    return notes


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _version() -> str:
    try:
        return metadata.version("hrf-bench")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def render_page(context: dict) -> str:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("bench", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.get_template("index.html.j2").render(**context)


def build_report(results_dir: Path, reports_dir: Path, light_preset: str = "lightweight",
                 large_preset: str = "large", seed: int = 0) -> Report:
    """Tables under ``<results_dir>/tables``, figures under ``<reports_dir>/plots`` and the page."""
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    if not results_dir.is_dir():
        raise BenchError(f"results folder {results_dir} does not exist: run `bench run` first or pass --results-dir")
    records, problems = RecordStore(results_dir).load()
    runs = runs_frame(records)
    summary = summary_table(runs, light_preset, large_preset, seed)
    differences = stats.paired_differences(runs, light_preset=light_preset)
    tables_dir = results_dir / "tables"
    texts = {"runs.csv": runs.to_csv(index=False), "summary.csv": summary.to_csv(index=False),
             "differences.csv": differences.to_csv(index=False), "summary.md": to_markdown(summary),
             "summary.tex": to_latex(summary)}
    tables = {}
    for name, text in texts.items():
        tables[name] = tables_dir / name
        atomic_write_text(tables[name], text)
    studies = {p.stem: f for p, f in read_csv_tables(sorted((results_dir / "tune").glob("*.csv")), problems).items()}
    extra_paths = sorted(p for entry in sorted(results_dir.glob("latency*"))
                         for p in ([entry] if entry.is_file() else sorted(entry.rglob("*.csv"))) if p.suffix == ".csv")
    extra = read_csv_tables(extra_paths, problems)
    figures = plots.make_plots(summary, studies, reports_dir / "plots")
    notes = notes_for(runs, summary, light_preset) if len(summary) else []
    empty = (f"No run records in {results_dir / 'records'}: run `bench run --results-dir {results_dir}` first."
             if not records else "")
    context = {
        "overview": " · ".join(_plural(n, what) for n, what in (
            (len(runs), "run"), (runs["dataset"].nunique(), "dataset"), (runs["backbone"].nunique(), "backbone"),
            (runs["method"].nunique(), "method"))) if len(runs) else "No runs recorded yet.",
        "problems": problems, "notes": notes, "empty_message": empty, "light_preset": light_preset,
        "large_preset": large_preset, "min_wilcoxon": stats.MIN_WILCOXON_NONZERO,
        "min_pairs": stats.MIN_SIGNIFICANT_PAIRS,
        "filters": [(name, sorted(set(summary[name]))) for name in FILTERS],
        "leaderboards": [leaderboard(d, rows, runs) for d, rows in summary.groupby("dataset", sort=True)],
        "tables": [str(p) for p in tables.values()],
        "figures": [{"name": f.svg.stem, "title": f.title, "caption": f.caption,
                     "files": f"{f.svg.relative_to(reports_dir)}, {f.png.relative_to(reports_dir)}", "data": base64.b64encode(f.svg.read_bytes()).decode()}
                    for f in figures],
        "studies": [{"name": name, "text": study_line(name, frame)} for name, frame in sorted(studies.items())],
        "extra_tables": [extra_table(str(p.relative_to(results_dir)), frame) for p, frame in extra.items()],
        "runs": run_details(runs), "environment": environment_table(runs), "version": _version(),
        "results_dir": str(results_dir),
    }
    index = reports_dir / "index.html"
    atomic_write_text(index, render_page(context))
    return Report(index, tables, summary, problems, notes + ([empty] if empty else []))


@click.command("report")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--reports-dir", type=click.Path(path_type=Path), default=Path("reports"), show_default=True)
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
