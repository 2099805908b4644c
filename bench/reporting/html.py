"""``bench report``: compiles the run records into tidy tables (under the results folder), figures
and one self-contained HTML leaderboard (``reports/index.html``: inline CSS/JS, figures as data URIs,
no network fetches). The same records always give byte-identical output."""

from __future__ import annotations

import base64
import difflib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import jinja2
import pandas as pd

from bench.method import plain_reference
from bench.registry import BACKBONES, BenchError
from bench.reporting import per_class, plots, stats
from bench.reporting.checks import classical_references
from bench.reporting.columns import KEYS, MISSING
from bench.reporting.formats import to_latex, to_markdown
from bench.reporting.leaderboard import (_plural, _slug, _whole, deploy_table, environment_table, failed_runs,
                                         leaderboard, run_details, with_run_columns)
from bench.reporting.page import regenerate_command, results_page
from bench.reporting.results import RecordStore, atomic_write_text, check_folders
from bench.reporting.summary import runs_frame, summary_table

MAX_EXTRA_ROWS = 200  # rows shown per extra measurement table; the file keeps them all
MAX_NAMED_FAILURES = 5  # failed runs named in the note; the tables under the leaderboards list them all
FILTERS = ("backbone", "preset", "method")
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


def build_report(results_dir: Path, reports_dir: Path, light_preset: str = "lightweight",
                 large_preset: str = "large", seed: int = 0) -> Report:
    """Tables under ``<results_dir>/tables``, figures under ``<reports_dir>/plots`` and the page."""
    results_dir, reports_dir = Path(results_dir), Path(reports_dir)
    if not results_dir.is_dir():
        raise BenchError(f"results folder {results_dir} does not exist: run `bench run` first or pass --results-dir")
    check_folders(results_dir, ("records", "tables"))
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
    classes = per_class.per_class_table(runs, seed)
    tables_dir = results_dir / "tables"
    texts = {"runs.csv": runs.to_csv(index=False), "summary.csv": summary.to_csv(index=False),
             "differences.csv": differences.to_csv(index=False),
             "forest.csv": forest.to_csv(index=False),
             "per_class.csv": classes.to_csv(index=False),
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
    figures = plots.make_plots(board, finished, histories, studies, reports_dir / "plots", seed, forest,
                               extra=[lambda folder: per_class.figures(classes, folder)])
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
        "figures": [f for f in figure_items if f["section"] not in ("curves", "per-class")],
        "per_class_figures": [f for f in figure_items if f["section"] == "per-class"],
        "curves": [f for f in figure_items if f["section"] == "curves"],
        "studies": [{"name": name, "text": study_line(name, frame)} for name, frame in sorted(studies.items())],
        "per_class": [{"dataset": d, "slug": _slug(d), "table": extra_table(f"per class: {d}", per_class.wide_table(part)),
                       "lines": per_class.gains_and_losses(part)} for d, part in classes.groupby("dataset", sort=True)],
        "extra_tables": [extra_table(str(p.relative_to(results_dir)), frame) for p, frame in extra.items()],
        "runs": run_details(runs, histories, curves), "environment": environment_table(runs), "version": _version(),
        "results_dir": str(results_dir), "citation": CITATION,
    }
    index = reports_dir / "index.html"
    atomic_write_text(index, render_page(context))
    command = regenerate_command(results_dir, reports_dir, light_preset, large_preset, seed)
    atomic_write_text(reports_dir / "results.md", results_page(runs, summary, notes, command, classes))
    return Report(index, tables, summary, problems, notes + ([empty] if empty else []))
