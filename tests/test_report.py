"""``bench report`` on real tiny runs: the tidy tables, the terminal summary and quiet mode, a
self-contained page that regenerates byte for byte, and degraded inputs (an empty folder, a corrupt
record, records lacking columns, tuning studies and extra measurement files) that never crash it."""

from __future__ import annotations

import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.results import RecordStore


PRESETS = ("--light-preset", "tiny", "--large-preset", "lightweight")  # the tiny grid's two baselines


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


class Leaderboard(HTMLParser):
    """Rows of the page's leaderboard tables: the row's data-* attributes and its cells."""

    def __init__(self, html: str):
        super().__init__()
        self.rows, self._in_board, self._cell = [], False, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._in_board = "leaderboard" in (attrs.get("class") or "")
        elif tag == "tr" and self._in_board and "data-method" in attrs:
            self.rows.append({"attrs": {k[5:]: v for k, v in attrs.items() if k.startswith("data-")}, "cells": []})
        elif tag == "td" and self._in_board and self.rows:
            self._cell = {"class": attrs.get("class", ""), "value": attrs.get("data-value"), "text": ""}
            self.rows[-1]["cells"].append(self._cell)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "table":
            self._in_board = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def headers(html: str) -> list[str]:
    first_board = html[html.index('class="leaderboard"'):]
    return re.findall(r'<th data-key="([^"]+)"', first_board[:first_board.index("</thead>")])


@pytest.fixture(scope="module")
def report(tiny_grid_results, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    result = invoke("report", "--results-dir", str(tiny_grid_results), "--reports-dir", str(reports), *PRESETS)
    assert result.exit_code == 0, result.output
    return result, reports


def test_tables_are_the_runs_summarized(report, tiny_grid_results):
    tables = tiny_grid_results / "tables"
    runs, summary = pd.read_csv(tables / "runs.csv"), pd.read_csv(tables / "summary.csv")
    assert len(runs) == len(list((tiny_grid_results / "records").glob("*.json"))) >= 8
    assert set(summary["preset"]) >= {"tiny", "lightweight"}
    by_hand = runs.groupby(["method", "preset"])["ua"].agg(["mean", "std", "count"])
    for _, row in summary.iterrows():
        mean, std, n = by_hand.loc[(row["method"], row["preset"])]
        assert row["ua_mean"] == pytest.approx(mean) and row["ua_std"] == pytest.approx(std)
        assert row["runs"] == n == 4 and (row["folds"], row["seeds"]) == (2, 2)
        assert row["headline_mean"] == row["ua_mean"]  # toy's headline metric is UA
    light = by_hand.loc[("baseline", "tiny"), "mean"]
    assert summary["light_ua"].tolist() == pytest.approx((summary["ua_mean"] - light).tolist())
    differences = pd.read_csv(tables / "differences.csv")
    assert len(differences) == len(runs) - 4  # every run but the lightweight reference has its partner
    reference = runs[(runs["method"] == "baseline") & (runs["preset"] == "tiny")].set_index(["fold", "seed"])["ua"]
    for _, pair in differences.iterrows():
        assert pair["diff"] == pytest.approx(pair["value"] - reference[(pair["fold"], pair["seed"])])
    markdown, latex = (tables / "summary.md").read_text(), (tables / "summary.tex").read_text()
    for method in set(summary["method"]):
        assert f"| {method} |" in markdown and f"{method} &" in latex


def test_terminal_summary_and_quiet_mode(report, tiny_grid_results, tmp_path):
    result, _ = report
    assert "UA %" in result.stdout and "baseline" in result.stdout and "Δ light" in result.stdout
    assert "page:" in result.stdout and "index.html" in result.stdout
    quiet = invoke("report", "--results-dir", str(tiny_grid_results), "--reports-dir", str(tmp_path), "--quiet", *PRESETS)
    assert quiet.exit_code == 0 and quiet.stdout == "" and (tmp_path / "index.html").exists()


def test_page_is_self_contained_and_regenerates_identically(report, tiny_grid_results, tmp_path):
    _, reports = report
    html = (reports / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert references and all(r.startswith(("#", "data:")) for r in references)
    assert not re.search(r"https?://", html.replace("http://www.w3.org", ""))  # no remote URL anywhere
    assert headers(html)[:5] == ["method", "backbone", "preset", "headline", "light"]  # headline metric first
    rows = Leaderboard(html).rows
    summary = pd.read_csv(tiny_grid_results / "tables" / "summary.csv")
    assert len(rows) == len(summary)
    for name in ("tradeoff-toy-macs", "tradeoff-toy-latency_ms", "bars-toy"):
        assert (reports / "plots" / f"{name}.svg").stat().st_size > 0 and (reports / "plots" / f"{name}.png").exists()
        assert f'id="plot-{name}"' in html
    for run_id in pd.read_csv(tiny_grid_results / "tables" / "runs.csv")["run_id"]:
        assert f'<details class="run" id="run-{run_id}">' in html and f'href="#run-{run_id}"' in html
    assert "env_torch" in html and "Confusion matrix" in html

    again = invoke("report", "--results-dir", str(tiny_grid_results), "--reports-dir", str(tmp_path), "-q", *PRESETS)
    assert again.exit_code == 0
    assert (tmp_path / "index.html").read_bytes() == (reports / "index.html").read_bytes()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in (reports / "plots").iterdir())
    for path in (reports / "plots").iterdir():
        assert (tmp_path / "plots" / path.name).read_bytes() == path.read_bytes(), path.name


def test_empty_results_folder_gives_a_page_saying_so(tmp_path):
    (tmp_path / "results").mkdir()
    result = invoke("report", "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports"))
    assert result.exit_code == 0 and "No run records" in result.stdout
    html = (tmp_path / "reports" / "index.html").read_text()
    assert 'id="empty"' in html and "bench run --results-dir" in html and Leaderboard(html).rows == []
    assert pd.read_csv(tmp_path / "results" / "tables" / "summary.csv").empty


def test_missing_results_folder_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["report", "--results-dir", str(tmp_path / "nowhere")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "does not exist" in lines[0]


def write_study(path: Path) -> None:
    """A real Optuna study over an expansion ratio, saved in the ``bench tune`` table layout."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="hrf-ratio", direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda t: -(math.log(t.suggest_float("expansion_ratio", 0.5, 8, log=True)) - 1) ** 2
                   + 0.1 * (t.suggest_categorical("init", ["default", "identity"]) == "identity"), n_trials=8)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "datetime_start"))
    frame = frame.rename(columns={"number": "trial"}).assign(study="hrf-ratio")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def degraded(tiny_grid_results, tmp_path_factory):
    """The tiny grid's records with one file corrupted and the hrf (else lightweight) runs rewritten as an
    older version would have written them (no MACs, latency, weighted F1 or class names), plus a tuning study
    and an extra latency table."""
    root = tmp_path_factory.mktemp("degraded")
    shutil.copytree(tiny_grid_results / "records", root / "results" / "records")
    store = RecordStore(root / "results")
    records, _ = store.load()
    methods = {r["method"] for r in records}
    stripped = [r for r in records if r["method"] == "hrf" or ("hrf" not in methods and r["preset"] == "lightweight")]
    for record in stripped:
        store.write({k: v for k, v in record.items()
                     if k not in ("macs", "latency_ms", "weighted_f1", "classes", "checksum")})
    corrupt = next(r for r in records if r["method"] == "baseline" and r["preset"] == "tiny")
    store.path(corrupt["run_id"]).write_text(store.path(corrupt["run_id"]).read_text()[:200])
    write_study(root / "results" / "tune" / "hrf-ratio.csv")
    (root / "results" / "latency").mkdir()
    pd.DataFrame({"run_id": [corrupt["run_id"]], "runtime": ["onnxruntime"], "latency_ms": [1.25]}).to_csv(
        root / "results" / "latency" / "onnx.csv", index=False)
    result = invoke("report", "--results-dir", str(root / "results"), "--reports-dir", str(root / "reports"), *PRESETS)
    return result, root, stripped[0], corrupt, len(records)


def test_corrupt_record_is_named_in_the_terminal_and_on_the_page(degraded):
    result, root, _, corrupt, total = degraded
    assert result.exit_code == 0
    name = f"{corrupt['run_id']}.json"
    assert re.search(rf"warning: .*{name}: unreadable JSON", result.stderr)
    html = (root / "reports" / "index.html").read_text()
    problems = html[html.index('id="problems"'):html.index("</section>", html.index('id="problems"'))]
    assert name in problems and "unreadable JSON" in problems
    assert len(pd.read_csv(root / "results" / "tables" / "runs.csv")) == total - 1


def test_cells_missing_from_older_records_are_marked(degraded):
    _, root, stripped, _, _ = degraded
    html = (root / "reports" / "index.html").read_text()
    columns = headers(html)
    row = next(r for r in Leaderboard(html).rows
               if r["attrs"]["method"] == stripped["method"] and r["attrs"]["preset"] == stripped["preset"])
    for key in ("macs", "latency_ms", "weighted_f1"):
        cell = row["cells"][columns.index(key)]
        assert "missing" in cell["class"] and cell["text"].strip() == "—" and cell["value"] is None
    assert row["cells"][columns.index("headline")]["value"] is not None
    details = html[html.index(f'id="run-{stripped["run_id"]}"'):]
    details = details[:details.index("</details>")]
    assert "<th>0</th><th>1</th><th>2</th><th>3</th>" in details  # the matrix, its classes numbered
    summary = pd.read_csv(root / "results" / "tables" / "summary.csv")
    at = summary[(summary["method"] == stripped["method"]) & (summary["preset"] == stripped["preset"])].iloc[0]
    assert math.isnan(at["macs"]) and math.isnan(at["weighted_f1_mean"]) and not math.isnan(at["ua_mean"])


def test_tuning_studies_and_extra_measurements_are_shown(degraded):
    _, root, _, corrupt, _ = degraded
    plots = root / "reports" / "plots"
    for name in ("tune-hrf-ratio-expansion_ratio", "tune-hrf-ratio-init", "tune-hrf-ratio-history"):
        assert (plots / f"{name}.svg").exists() and (plots / f"{name}.png").exists()
    html = (root / "reports" / "index.html").read_text()
    study = pd.read_csv(root / "results" / "tune" / "hrf-ratio.csv")
    best = study.loc[study["value"].idxmax()]
    assert f"8 trials, 8 complete; best objective {best['value']:.4g} (trial {best['trial']}:" in html
    assert "latency/onnx.csv" in html and corrupt["run_id"] in html and "1.25" in html
