"""End to end through the CLI on the toy corpus: every compression method, compositions in order,
the large model trained once and reused, the fine-tuning budget stated, and one-line errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import bench
from bench.cli.main import main

# Deploy at ``tiny``, compress from ``lightweight`` (the teacher preset): the smallest real setting.
TINY = ["--backbones", "convtransformer", "--datasets", "toy", "--presets", "tiny", "--teacher-preset", "lightweight", "--folds", "1",
        "--seeds", "0", "--epochs", "2", "--quiet"]
METHODS = "kd,prune,prune-unstructured,lowrank,quant,hrf+quant,kd+quant"


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, dict, Path]:
    results, cache = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cache")
    params = ["-p", "prune.steps=2", "-p", "prune.importance=taylor", "-p", "lowrank.ratio=0.5",
              "-p", "kd.hidden_weight=0.5"]
    result = CliRunner().invoke(main, ["run", "--methods", METHODS, "--results-dir", str(results),
                                       "--cache-dir", str(cache), *params, *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = {}
    for path in (results / "records").glob("*.json"):
        record = json.loads(path.read_text())
        records[record["method"]] = record
    return results, records, cache


def test_one_record_per_method_within_budget(grid):
    _, records, _ = grid
    assert sorted(records) == sorted(METHODS.split(","))
    tiny = records["quant"]["params"]  # quant keeps the plain tiny model's parameters
    for method in ("prune", "prune-unstructured"):
        record = records[method]
        assert record["budget_source"] == "preset tiny" and record["budget_target"] == tiny
        assert abs(record["budget_reached"] - tiny) <= 0.05 * tiny and abs(record["budget_error"]) <= 0.05
    assert abs(records["prune"]["params"] - tiny) <= 0.05 * tiny  # physically smaller
    assert records["prune-unstructured"]["nonzero_params"] == records["prune-unstructured"]["budget_reached"]
    assert records["prune-unstructured"]["params"] == records["prune-unstructured"]["dense_params"] > 5 * tiny
    assert "latency" in records["prune-unstructured"]["dense_latency_note"]
    low = records["lowrank"]
    assert low["budget_source"] == "ratio 0.5 of lightweight" and abs(low["budget_error"]) <= 0.05
    assert low["params"] < low["source_params"] and low["lowrank_layers_factorized"] > 0
    assert records["kd"]["params"] == tiny and records["kd"]["kd_projection_params"] > 0


def test_large_model_trained_once_and_reused(grid):
    _, records, _ = grid
    caches = {m: r.get("lightweight_model_cache") for m, r in records.items()}
    assert list(caches.values()).count("miss") == 1  # trained by the first method that needed it
    assert all(caches[m] in ("hit", "miss") for m in ("kd", "prune", "prune-unstructured", "lowrank", "kd+quant"))
    assert records["quant"]["tiny_model_cache"] in ("hit", "miss") and "lightweight_model_cache" not in records["quant"]


def test_reused_models_name_the_commit_that_trained_them(grid, tmp_path, caplog):
    _, records, cache = grid
    users = [r for r in records.values() if "lightweight_model_cache" in r]
    assert len(users) == 5 and {r["lightweight_model_git_commit"] for r in users} == {records["kd"]["env_git_commit"]}
    older = tmp_path / "cache"  # a copy: the other tests keep the grid's cache as it was
    shutil.copytree(cache, older)
    path, = (older / "models").glob("convtransformer-lightweight-*.pt")
    saved = torch.load(path, weights_only=False)
    torch.save(saved | {"git_commit": "0ld0ld0"}, path)  # as if trained before an upgrade
    with caplog.at_level(logging.WARNING, logger="bench"):
        result = CliRunner().invoke(main, ["run", "--methods", "kd", "--results-dir", str(tmp_path / "results"),
                                           "--cache-dir", str(older), *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record, = (json.loads(p.read_text()) for p in (tmp_path / "results" / "records").glob("*.json"))
    assert record["lightweight_model_cache"] == "hit" and record["lightweight_model_git_commit"] == "0ld0ld0"
    assert "trained by commit 0ld0ld0" in caplog.text


def test_same_finetuning_budget_stated_for_every_method_that_tunes(grid):
    _, records, _ = grid
    for method in ("kd", "prune", "prune-unstructured", "lowrank"):
        assert records[method]["finetune_epochs"] == 2 and "training split" in records[method]["finetune_note"]
    assert [s["epochs"] for s in records["prune"]["prune_steps"]] == [1, 1]
    assert records["prune"]["prune_importance"] == "taylor"


def test_composition_runs_in_order_and_quantizes_last(grid):
    results, records, _ = grid
    composed = records["hrf+quant"]
    assert composed["hrf_expansion_ratio"] > 0 and composed["quant_source"] == "previous method's deploy model"
    assert composed["size_int8_bytes"] < composed["size_float32_bytes"]
    assert composed["params"] == records["quant"]["params"]  # deHRF merged into the plain tiny model
    assert composed["macs"] == records["quant"]["macs"] == composed["int8_macs"]  # all int8 (static QDQ)
    assert (results / "models" / f"{composed['run_id']}.onnx").exists()  # the int8 graph beside the float model
    model = bench.load_model(composed["run_id"], results)
    assert not any(type(m).__name__.startswith("Expanded") for m in model.modules())  # merged before quantizing
    assert records["kd+quant"]["kd_temperature"] == records["kd"]["kd_temperature"]


@pytest.mark.parametrize("args, message", [
    (["--methods", "prune", "-p", "prune.ratio=0"], "ratio='0' must be 'preset' or a fraction"),
    (["--methods", "lowrank", "-p", "lowrank.ratio=1.5"], "ratio='1.5' must be 'preset' or a fraction"),
    (["--methods", "prune-unstructured", "-p", "prune-unstructured.ratio=-0.2"], "must be 'preset' or a fraction"),
    (["--methods", "prune", "-p", "prune.budget=flops"], "must be one of ['params', 'macs']"),
    (["--methods", "kd", "-p", "kd.temperature=0"], "temperature=0.0 must be > 0"),
    (["--methods", "kd", "-p", "kd.alpha=1.5"], "alpha=1.5 must be <= 1"),
    (["--methods", "hrf+nope"], "unknown method 'nope'"),
    (["--methods", "quant+hrf"], "quant must come last in a composition"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(main, ["run", "--results-dir", str(tmp_path / "results"),
                                       "--cache-dir", str(tmp_path / "cache"), *TINY, *args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


@pytest.mark.parametrize("method, ratio, message", [
    ("prune", "0.0001", "prune cannot reach params="),
    ("lowrank", "0.001", "lowrank cannot reach params="),
    ("prune-unstructured", "0.0001", "prune-unstructured cannot reach nonzero_params="),
])
def test_unreachable_budget_is_a_failed_record_before_anything_trains(tmp_path, caplog, method, ratio, message):
    cache = tmp_path / "cache"  # fresh: a trained model would appear in it
    with caplog.at_level(logging.WARNING, logger="bench"):
        result = CliRunner().invoke(main, ["run", "--methods", method, "-p", f"{method}.ratio={ratio}",
                                       "--results-dir", str(tmp_path / "results"), "--cache-dir", str(cache), *TINY])
    assert result.exit_code == 0, result.output
    record, = (json.loads(p.read_text()) for p in (tmp_path / "results" / "records").glob("*.json"))
    assert record["status"] == "failed" and message in record["status_reason"]
    assert "\n" not in record["status_reason"] and f"failed: {record['status_reason']}" in caplog.text
    assert f"failed run {record['run_id']}" in result.stderr and record["status_reason"] in result.stderr
    assert {"run_id", "method", "backbone", "preset", "dataset", "fold", "seed", "method_params", "train_epochs",
            "features_kind"} <= set(record)
    assert not {"ua", "wa", "params", "macs", "fit_seconds"} & set(record)  # no metrics
    assert set(record["recipe"]) == set(record["teacher_recipe"]) >= {"epochs", "lr", "label_smoothing"}  # resolved
    assert record["recipe"]["lr"] is not None and record["corpus_fingerprint"]  # as in a finished run's record
    assert not list(cache.glob("models/*.pt")) and not list((tmp_path / "results").glob("models/*.pt"))


def test_failed_run_does_not_stop_the_grid_and_is_kept_until_forced(grid, tmp_path):
    _, _, cache = grid  # the lightweight teacher is cached: kd only trains its student
    args = ["run", "--methods", "lowrank,kd", "-p", "lowrank.ratio=0.001", "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(cache), *TINY]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    paths = {json.loads(p.read_text())["method"]: p for p in (tmp_path / "results" / "records").glob("*.json")}
    statuses = {m: json.loads(p.read_text())["status"] for m, p in paths.items()}
    assert statuses == {"lowrank": "failed", "kd": "ok"}
    written = {m: p.stat().st_mtime_ns for m, p in paths.items()}
    assert CliRunner().invoke(main, args).exit_code == 0  # a recorded outcome: skipped like any other
    assert {m: p.stat().st_mtime_ns for m, p in paths.items()} == written
    forced = CliRunner().invoke(main, [*args[:2], "lowrank", *args[3:], "--force"])
    assert forced.exit_code == 0 and paths["lowrank"].stat().st_mtime_ns != written["lowrank"]
