"""``bench report`` on real tiny runs: the tidy tables, the terminal summary and quiet mode, a
self-contained page that regenerates byte for byte, files readable by others, degraded inputs (an
empty folder, a corrupt record, records lacking columns, tuning studies and extra measurement files)
that never crash it, and the fields other parts of the benchmark add to records (failed runs, learning
histories, latency ratios, ONNX and int8 figures, corpus fingerprints) shown on the page."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.reporting import plots
from bench.cli.main import main
from bench.reporting.results import RecordStore


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
            self._cell = {"class": attrs.get("class", ""), "value": attrs.get("data-value"), "text": "",
                          "title": attrs.get("title", ""), "links": []}
            self.rows[-1]["cells"].append(self._cell)
        elif tag == "a" and self._cell is not None:
            self._cell["links"].append(attrs["href"])

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
    # the forest: each method against the baseline of its own preset, by fold (seeds averaged), one corpus
    forest = pd.read_csv(tables / "forest.csv")
    assert len(forest) and set(forest["row"]) == {"cell"}  # one corpus x backbone: nothing to pool
    for _, cell in forest.iterrows():
        mine = runs[(runs["method"] == cell["method"]) & (runs["preset"] == cell["preset"])]
        plain = runs[(runs["method"] == "baseline") & (runs["preset"] == cell["preset"])]
        by_fold = (mine.groupby("fold")["ua"].mean() - plain.groupby("fold")["ua"].mean()).dropna()
        assert cell["folds"] == len(by_fold) == 2 and cell["diff_mean"] == pytest.approx(by_fold.mean())
    markdown, latex = (tables / "summary.md").read_text(), (tables / "summary.tex").read_text()
    for method in set(summary["method"]):
        assert f"| {method} |" in markdown and f"{method} &" in latex
    # training cost as a multiple of the plain lightweight (here: tiny) model's own training
    by_hand = runs.groupby(["method", "preset"])[["fit_flops", "reused_fit_flops", "fit_seconds",
                                                  "train_peak_memory_bytes"]].mean()
    light_flops = by_hand.loc[("baseline", "tiny"), "fit_flops"]
    for _, row in summary.iterrows():
        mine = by_hand.loc[(row["method"], row["preset"])]
        assert row["train_flops_x"] == pytest.approx((mine["fit_flops"] + mine["reused_fit_flops"]) / light_flops)
        assert row["train_memory_x"] > 0 and row["train_seconds_x"] > 0
    flops_x = summary.set_index(["method", "preset"])["train_flops_x"]
    assert flops_x[("baseline", "tiny")] == 1 and flops_x[("baseline", "lightweight")] > 2
    if ("hrf", "tiny") in flops_x:  # HRF trains a wider model than it deploys
        assert flops_x[("hrf", "tiny")] > 1


def test_results_page_names_its_command_and_holds_every_run_by_fold(report, tiny_grid_results):
    """``reports/results.md`` is what docs/ ships: regenerable from its first lines, figures from the records."""
    _, reports = report
    page = (reports / "results.md").read_text()
    command = f"bench report --results-dir {tiny_grid_results} --reports-dir {reports} {' '.join(PRESETS)}"
    assert f"Generated by `{command}`" in page.splitlines()[2]
    runs = pd.read_csv(tiny_grid_results / "tables" / "runs.csv")
    for (method, preset), group in runs.groupby(["method", "preset"]):
        by_fold = (100 * group.groupby("fold")["ua"].mean()).round(1)
        row = next(line for line in page.splitlines() if line.startswith(f"| convtransformer | {method} | {preset} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert [float(c) for c in cells[4:4 + len(by_fold)]] == by_fold.tolist()
        assert cells[-1] == str(group["seed"].nunique())
    assert f"- {len(runs)} runs (0 failed)" in page


def test_terminal_summary_and_quiet_mode(report, tiny_grid_results, tmp_path):
    result, _ = report
    assert "UA %" in result.stdout and "baseline" in result.stdout and "Δ light" in result.stdout
    # the cost that answers the question leads: the interleaved latency ratio, not drifting milliseconds
    assert "latency ×" in result.stdout and "latency ms" not in result.stdout
    runs = pd.read_csv(tiny_grid_results / "tables" / "runs.csv")
    plain = runs[(runs["method"] == "baseline") & (runs["preset"] == "lightweight")]["latency_ratio"]
    assert plain.notna().all() and f"{plain.mean():.2f}×" in (tiny_grid_results / "tables" / "summary.md").read_text()
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
    assert "int8" not in headers(html)  # no quantized model: no int8 column, even where records say 0
    assert "train_x" in headers(html)  # the training cost multiple, since the records count training FLOPs
    rows = Leaderboard(html).rows
    summary = pd.read_csv(tiny_grid_results / "tables" / "summary.csv")
    assert len(rows) == len(summary)
    for name in ("tradeoff-toy-macs", "tradeoff-toy-latency_min_ms", "folds-toy", "forest"):
        assert (reports / "plots" / f"{name}.svg").stat().st_size > 0 and (reports / "plots" / f"{name}.png").exists()
        assert f'id="plot-{name}"' in html
    for run_id in pd.read_csv(tiny_grid_results / "tables" / "runs.csv")["run_id"]:
        assert f'<details class="run" id="run-{run_id}">' in html and f'href="#run-{run_id}"' in html
    assert "env_torch" in html and "Confusion matrix" in html
    footer = html[html.index("<footer>"):]
    assert "Re-Parameterization of Lightweight Transformer for On-Device Speech Emotion Recognition" in footer
    assert "arXiv:2411.09339" in footer and "hrf-bench" in footer

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


@pytest.mark.parametrize("option, typo, suggestion", [("--light-preset", "lightweigth", "lightweight"),
                                                      ("--large-preset", "larg", "large")])
def test_unknown_preset_is_a_one_line_error_and_writes_nothing(tiny_grid_results, tmp_path, option, typo, suggestion):
    shutil.copytree(tiny_grid_results / "records", tmp_path / "results" / "records")
    result = CliRunner().invoke(main, ["report", "--results-dir", str(tmp_path / "results"),
                                       "--reports-dir", str(tmp_path / "reports"), option, typo])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: unknown preset") and option in lines[0]
    assert f"Did you mean {suggestion!r}?" in lines[0] and "tiny" in lines[0]
    assert not (tmp_path / "results" / "tables").exists() and not (tmp_path / "reports").exists()


def test_generated_files_have_the_umask_mode(tiny_grid_results, tmp_path):
    """A shared results folder or a served leaderboard must be readable by others (not 0600)."""
    shutil.copytree(tiny_grid_results / "records", tmp_path / "results" / "records")
    previous = os.umask(0o022)
    try:
        result = invoke("report", "--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports"),
                        "-q", *PRESETS)
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    written = [tmp_path / "reports" / "index.html", *sorted((tmp_path / "results" / "tables").iterdir()),
               *sorted((tmp_path / "reports" / "plots").iterdir())]
    assert len(written) > 6
    modes = {str(path.relative_to(tmp_path)): oct(stat.S_IMODE(path.stat().st_mode)) for path in written}
    assert set(modes.values()) == {oct(0o644)}, modes


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
                     if k not in ("macs", "latency_ms", "latency_min_ms", "latency_ratio", "weighted_f1", "classes",
                                  "checksum")})
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
    for key in ("macs", "latency_ratio", "latency_min_ms", "latency_ms", "weighted_f1"):
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


# ---- fields that other parts of the benchmark add to records ----
# The records below are the tiny grid's real records, copied, with the fields that training (history),
# the methods (status, status_reason), deploy (latency ratio, ONNX, int8) and the runner
# (corpus_fingerprint) add written in as dicts, so that the page is checked against known values.

FINGERPRINT = "toy-1a2b3c4d"
REASON = "budget unreachable: 520,548 parameters at rank 1 > 355,844"
ONNX_FAILURE = "failed: predictions differ from PyTorch on 4.2 % of test utterances"
MEASURED = ("wa", "ua", "macro_f1", "weighted_f1", "confusion", "classes", "params", "macs", "flops", "size_bytes",
            "int8_macs", "float_macs", "checksum")


def history(record: dict, full: bool = True) -> list[dict]:
    """A per-epoch history; ``full=False`` is what older records kept (epoch, train_loss, val_ua)."""
    epochs = [{"epoch": e, "train_loss": 1.4 - 0.2 * e, "val_ua": 0.3 + 0.05 * e + 0.01 * record["seed"]}
              for e in range(1, record["train_epochs"] + 1)]
    return [dict(e, val_loss=1.3 - 0.1 * e["epoch"], lr=0.002 / e["epoch"], seconds=0.1) for e in epochs] if full else epochs


def augment_records(source: Path, results: Path) -> dict[str, list[dict]]:
    """Copies the tiny grid's records into ``results`` and adds: a history to every run (older form
    for ``hrf``, none for ``quant``), a latency ratio with interval, ONNX figures and the corpus
    fingerprint; lightweight baselines 5 points below the tiny ones (the reference "large" model
    loses, as in issue 16); ``kd`` runs (copies of ``hrf``; one ONNX export failed, plus a failed run
    at seed 2); ``quant`` runs with int8 figures; a plain ``large`` baseline; and failed ``lowrank``
    runs. Returns the written records by method."""
    shutil.copytree(source / "records", results / "records")
    store = RecordStore(results)
    records, _ = store.load()
    written: dict[str, list[dict]] = {}

    def write(record: dict) -> None:
        store.write(record)
        written.setdefault(record["method"], []).append(record)

    tiny = {(r["fold"], r["seed"]): r for r in records if r["method"] == "baseline" and r["preset"] == "tiny"}
    for record in records:
        pair = tiny[(record["fold"], record["seed"])]
        record = dict(record, corpus_fingerprint=FINGERPRINT, history=history(record, record["method"] != "hrf"))
        if record["method"] == "baseline" and record["preset"] == "lightweight":
            record["ua"] = pair["ua"] - 0.05
        ratio = record["latency_ms"] / pair["latency_ms"]
        record.update(latency_ratio=ratio, latency_ratio_ci_low=0.97 * ratio, latency_ratio_ci_high=1.03 * ratio,
                      ua_onnx=record["ua"], onnx_status="ok", int8_macs=0, float_macs=record["macs"])
        write(record)
        if record["method"] == "baseline" and record["preset"] == "lightweight":
            write(dict(record, preset="large", run_id=record["run_id"][:-2] + "lg", ua=pair["ua"] + 0.02,
                       params=4 * record["params"], macs=4 * record["macs"], flops=4 * record["flops"]))
        if record["method"] == "hrf":
            first = (record["fold"], record["seed"]) == (1, 0)
            write(dict(record, method="kd", run_id=record["run_id"][:-2] + "kd", method_params={"kd": {}},
                       history=history(record), onnx_status=ONNX_FAILURE if first else "ok",
                       latency_ratio_ci_low=0.9 * ratio if first else 0.97 * ratio))
        if record["method"] == "baseline" and record["preset"] == "tiny":
            write(dict({k: v for k, v in record.items() if k != "history"}, method="quant",
                       run_id=record["run_id"][:-2] + "qq", method_params={"quant": {}}, quant_scheme="static",
                       int8_macs=2_000_000, float_macs=610_000, ua_onnx=record["ua"] - 0.01))
            if record["seed"] == 0:
                identity = {k: v for k, v in record.items() if k not in MEASURED and not k.startswith(("latency", "ua_onnx", "onnx"))}
                write(dict(identity, method="lowrank", run_id=record["run_id"][:-2] + "lr", method_params={"lowrank": {}},
                           status="failed", status_reason=REASON, history=[]))
                if record["fold"] == 1:
                    write(dict(identity, method="kd", seed=2, run_id=record["run_id"][:-2] + "kf", method_params={"kd": {}},
                               status="failed", status_reason="teacher could not be trained", history=[]))
    return written


@pytest.fixture(scope="module")
def augmented(tiny_grid_results, tmp_path_factory):
    root = tmp_path_factory.mktemp("augmented")
    written = augment_records(tiny_grid_results, root / "results")
    result = invoke("report", "--results-dir", str(root / "results"), "--reports-dir", str(root / "reports"), *PRESETS)
    assert result.exit_code == 0, result.output
    html = (root / "reports" / "index.html").read_text()
    summary = pd.read_csv(root / "results" / "tables" / "summary.csv", keep_default_na=False, na_values=[""])
    return result, root, html, written, summary


def board_row(html: str, method: str, preset: str = "tiny") -> dict:
    columns = headers(html)
    row = next(r for r in Leaderboard(html).rows if r["attrs"]["method"] == method and r["attrs"]["preset"] == preset)
    return {key: cell for key, cell in zip(columns, row["cells"])} | {"_class": row["attrs"]}


def details(html: str, run_id: str) -> str:
    start = html.index(f'<details class="run" id="run-{run_id}">')
    return html[start:html.index("</details>", start)]


def test_failed_runs_are_listed_under_the_leaderboard(augmented):
    result, root, html, written, _ = augmented
    failed = [r for records in written.values() for r in records if r.get("status") == "failed"]
    assert len(failed) == 3
    start = html.index('<table class="failed" id="failed-toy">')
    table = html[start:html.index("</table>", start)]
    assert table.count("<tr data-method=") == 3
    for record in failed:
        [row] = [row for row in table.split("<tr data-method=")[1:] if f'href="#run-{record["run_id"]}"' in row]
        assert f"<td>{record['method']}</td><td>convtransformer</td><td>tiny</td>" in row
        assert f"<td>{record['fold']}</td><td>{record['seed']}</td><td class=\"bad\">{escape(record['status_reason'])}</td>" in row
        assert f"<summary class=\"bad\">FAILED · toy · convtransformer · {record['method']}" in details(html, record["run_id"])
    assert "3 runs failed" in result.stdout and "never averaged" in result.stdout
    runs = pd.read_csv(root / "results" / "tables" / "runs.csv")
    assert (runs["status"] == "failed").sum() == 3  # kept in the tidy table, marked


def test_failed_runs_are_counted_and_never_averaged(augmented):
    _, _, html, written, summary = augmented
    assert "failed" in summary
    finished = [r["ua"] for r in written["kd"] if r.get("status") != "failed"]
    row = board_row(html, "kd")
    assert float(row["headline"]["value"]) == pytest.approx(sum(finished) / len(finished))
    assert row["runs"]["text"].strip() == "4" and row["failed"]["text"].strip() == "1" and "bad" in row["failed"]["class"]
    kd = [r for r in written["kd"] if r.get("status") != "failed"]
    assert float(row["latency_ms"]["value"]) == pytest.approx(sum(r["latency_ms"] for r in kd) / len(kd))


def test_large_model_warning_is_next_to_the_methods_that_use_it(augmented):
    result, _, html, _, summary = augmented
    assert "warning" in summary
    warned = summary[summary["warning"].fillna("").astype(str) != ""]
    assert "kd" in set(warned["method"]) and not {"baseline", "hrf", "quant"} & set(warned["method"])
    text = warned[warned["method"] == "kd"]["warning"].iloc[0]
    cell = board_row(html, "kd")["method"]
    assert "⚠" in cell["text"] and cell["title"] == text  # the row marks it; its text is said once, above
    assert text not in cell["text"]
    assert "⚠" not in board_row(html, "hrf")["method"]["text"]
    box = html[html.index('id="warnings-toy"'):html.index("</section>", html.index('id="warnings-toy"'))]
    assert "kd @tiny" in box and text in box
    assert not any(text in cell["text"] for row in Leaderboard(html).rows for cell in row["cells"])
    assert text in result.stdout  # the terminal summary says so too


def test_latency_leads_with_the_ratio_and_the_minimum(augmented):
    _, _, html, written, _ = augmented
    columns = headers(html)
    assert columns.index("macs") < columns.index("latency_ratio") < columns.index("latency_min_ms") < columns.index("latency_ms")
    kd = [r for r in written["kd"] if r.get("status") != "failed"]
    row = board_row(html, "kd")
    ratio = sum(r["latency_ratio"] for r in kd) / len(kd)
    assert float(row["latency_ratio"]["value"]) == pytest.approx(ratio)
    low, high = min(r["latency_ratio_ci_low"] for r in kd), max(r["latency_ratio_ci_high"] for r in kd)
    assert row["latency_ratio"]["text"].startswith(f"{ratio:.2f}×") and f"[{low:.2f}, {high:.2f}]" in row["latency_ratio"]["text"]
    assert float(row["latency_min_ms"]["value"]) == pytest.approx(sum(r["latency_min_ms"] for r in kd) / len(kd))
    reference = board_row(html, "baseline")
    assert reference["latency_ratio"]["text"].startswith("1.00×")


def test_onnx_accuracy_and_failed_exports_are_visible(augmented):
    _, _, html, written, _ = augmented
    columns = headers(html)
    assert columns.index("headline") < columns.index("onnx") < columns.index("onnx_status")
    kd, hrf = board_row(html, "kd"), board_row(html, "hrf")
    assert kd["onnx_status"]["text"].strip() == "failed 1/4; ok 3/4" and "bad" in kd["onnx_status"]["class"]
    assert ONNX_FAILURE in kd["onnx_status"]["title"]
    assert hrf["onnx_status"]["text"].strip() == "ok" and "bad" not in hrf["onnx_status"]["class"]
    quant = board_row(html, "quant")
    onnx = [r["ua_onnx"] for r in written["quant"]]
    assert float(quant["onnx"]["value"]) == pytest.approx(sum(onnx) / len(onnx))
    assert float(quant["int8"]["value"]) == 2_000_000 and "float 610k" in quant["int8"]["text"]
    assert quant["quant_scheme"]["text"].strip() == "static"
    assert float(hrf["int8"]["value"]) == 0 and hrf["int8"]["text"].startswith("0")  # float models say 0 int8 MACs


def test_learning_curves_are_drawn_and_linked_from_each_run(augmented):
    _, root, html, written, _ = augmented
    figure = root / "reports" / "plots" / "curves-toy-convtransformer.svg"
    svg = figure.read_text()
    for panel in ("baseline @tiny", "baseline @lightweight", "baseline @large", "hrf @tiny", "kd @tiny"):
        assert panel in svg
    assert "quant @tiny" not in svg and "lowrank @tiny" not in svg  # no history recorded, no panel
    for name in ("train loss", "val loss", "val UA", "seed 0", "seed 1"):
        assert name in svg
    curves = html[html.index('<h2 id="curves">'):]
    assert '<figure id="plot-curves-toy-convtransformer">' in curves
    link = 'href="#plot-curves-toy-convtransformer"'
    for record in written["kd"] + written["hrf"]:
        text = details(html, record["run_id"])
        if record.get("status") == "failed":
            assert link not in text and "Training history" not in text
            continue
        assert link in text and text.count("<tr><td>") == len(record["history"])
        recorded = "<th>epoch</th><th>train_loss</th><th>val_loss</th><th>val_ua</th><th>lr</th><th>seconds</th>" \
            if record["method"] == "kd" else "<th>epoch</th><th>train_loss</th><th>val_ua</th></tr>"
        assert recorded in text
    assert link not in details(html, written["quant"][0]["run_id"])
    assert "#plot-curves-toy-convtransformer" in board_row(html, "kd")["details"]["links"]
    assert "#plot-curves-toy-convtransformer" not in board_row(html, "quant")["details"]["links"]


def test_plain_models_form_the_frontier_of_the_tradeoff_plots(augmented):
    _, root, _, _, _ = augmented
    summary = pd.read_csv(root / "results" / "tables" / "summary.csv", dtype={"config": str, "settings": str})
    summary = summary.fillna({"config": "", "settings": ""})
    [line] = plots.plain_frontier(summary, "macs")
    assert line["preset"].tolist() == ["tiny", "lightweight", "large"]  # baselines only, by increasing MACs
    assert line["macs"].is_monotonic_increasing and set(line["method"]) == {"baseline"}
    for cost in ("macs", "latency_ratio", "latency_min_ms"):
        svg = (root / "reports" / "plots" / f"tradeoff-toy-{cost}.svg").read_text()
        assert "plain models (baseline per preset)" in svg and "Pareto front" in svg
    # the drawn line (inside the axes, so clipped; the legend's sample is not): through the three plain
    # models by increasing MACs; SVG y grows downwards, and UA is lightweight < tiny < large here
    svg = (root / "reports" / "plots" / "tradeoff-toy-macs.svg").read_text()
    [path] = re.findall(r'<path d="([^"]*)"\s+clip-path="[^"]*" style="fill: none; stroke: #1a1a1a; stroke-width: 1.6', svg)
    points = [tuple(map(float, p.split())) for p in re.findall(r"[ML] ([\d.]+ [\d.]+)", path)]
    assert len(points) == 3 and [x for x, _ in points] == sorted(x for x, _ in points)
    tiny, lightweight, large = (y for _, y in points)
    assert large < tiny < lightweight


def test_per_fold_points_over_means(augmented):
    _, root, html, _, _ = augmented
    svg = (root / "reports" / "plots" / "folds-toy.svg").read_text()
    for label in ("fold 1", "fold 2", "baseline @tiny", "hrf @tiny", "kd @tiny", "quant @tiny", "UA %"):
        assert label in svg
    assert "lowrank @tiny" not in svg  # failed runs have no figure to draw
    # one 95 % interval (a capped line) per row: baseline at three presets, hrf, kd, quant
    assert len(re.findall(r'clip-path="[^"]*" style="fill: none; stroke: #1a1a1a; stroke-width: 1.2', svg)) == 6
    assert 'id="plot-folds-toy"' in html


def test_corpus_fingerprint_is_in_each_runs_details(augmented):
    _, _, html, written, _ = augmented
    for record in [r for records in written.values() for r in records]:
        assert f"corpus <code>{FINGERPRINT}</code>" in details(html, record["run_id"])


def test_augmented_page_regenerates_identically(augmented, tmp_path):
    _, root, html, _, _ = augmented
    again = invoke("report", "--results-dir", str(root / "results"), "--reports-dir", str(tmp_path), "-q", *PRESETS)
    assert again.exit_code == 0
    assert (tmp_path / "index.html").read_text() == html
    for path in (root / "reports" / "plots").iterdir():
        assert (tmp_path / "plots" / path.name).read_bytes() == path.read_bytes(), path.name


def test_two_corpora_of_one_dataset_name_are_told_apart(tiny_grid_results, tmp_path):
    """The same runs on a second corpus under the same dataset name (another fingerprint)."""
    store_root = tmp_path / "results"
    augment_records(tiny_grid_results, store_root)
    store = RecordStore(store_root)
    records, _ = store.load()
    for record in records:
        store.write(dict(record, run_id=record["run_id"][:-2] + "c2", corpus_fingerprint="toy-99887766"))
    result = invoke("report", "--results-dir", str(store_root), "--reports-dir", str(tmp_path / "reports"), "-q", *PRESETS)
    summary = pd.read_csv(store_root / "tables" / "summary.csv")
    assert summary["dataset"].nunique() == 2  # the two corpora are kept apart
    assert result.exit_code == 0, result.output
    html = (tmp_path / "reports" / "index.html").read_text()
    boards = re.findall(r'<table class="leaderboard" id="board-[^"]+" data-dataset="([^"]+)"', html)
    assert boards == sorted(set(summary["dataset"])) and len(boards) == 2
    assert all(board.startswith("toy") for board in boards)
    for board in boards:
        assert f">{board} <span class=\"count\">" in html


def test_per_class_recall_and_its_paired_difference_come_from_the_confusion_matrices(report, tiny_grid_results):
    """Per class: each row's recall is the fold mean of the records' diagonal / row sums, a method's Δ its
    paired difference to the plain model of its preset; the page and the leaderboard show them."""
    _, reports = report
    records = [json.loads(p.read_text()) for p in sorted((tiny_grid_results / "records").glob("*.json"))]
    table = pd.read_csv(tiny_grid_results / "tables" / "per_class.csv", keep_default_na=False, na_values=[""])

    def recalls(method: str, preset: str) -> dict:
        """{(fold, seed): [recall per class]} by hand."""
        return {(r["fold"], r["seed"]): [row[i] / sum(row) if sum(row) else math.nan for i, row in enumerate(r["confusion"])]
                for r in records if r["method"] == method and r["preset"] == preset and r.get("status") != "failed"}

    classes = records[0]["classes"]
    hrf, plain = recalls("hrf", "tiny"), recalls("baseline", "tiny")
    assert hrf and plain
    for index, name in enumerate(classes):
        row = table[(table["method"] == "hrf") & (table["preset"] == "tiny") & (table["class"] == name)].iloc[0]
        folds = sorted({fold for fold, _ in hrf})
        by_fold = [np.nanmean([v[index] for (f, _), v in hrf.items() if f == fold]) for fold in folds]
        assert row["recall"] == pytest.approx(np.mean(by_fold))
        diffs = [np.mean([hrf[key][index] - plain[key][index] for key in hrf if key[0] == fold and key in plain])
                 for fold in folds]
        assert row["diff_mean"] == pytest.approx(np.mean(diffs)) and row["pairs"] == len(folds)
    reference = table[(table["method"] == "baseline") & (table["preset"] == "tiny")]
    assert len(reference) == len(classes) and reference["diff_mean"].isna().all()  # the reference has no Δ

    page = (reports / "results.md").read_text()
    section = page[page.index("## Per class"):]
    assert "| model | " + " | ".join(classes) + " |" in section
    assert "- hrf convtransformer@tiny against baseline@tiny: " in section
    html = (reports / "index.html").read_text()
    assert 'id="per-class"' in html and 'href="#per-class"' in html
    board = html[html.index('<table class="per-class">'):html.index("</table>", html.index('<table class="per-class">'))]
    first = table[(table["method"] == "hrf") & (table["preset"] == "tiny")].iloc[0]
    assert f"{100 * first['recall']:.1f} ({100 * first['diff_mean']:+.1f}" in board
    # the heatmap of per-class differences sits in that section, not among the trade-off plots
    assert (reports / "plots" / "per-class-toy-convtransformer.svg").is_file()
    section = html[html.index('id="per-class"'):html.index('<h2 id="', html.index('id="per-class"') + 1)]
    assert 'id="plot-per-class-toy-convtransformer"' in section
