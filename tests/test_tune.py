"""``bench tune``: real Optuna studies on the tiny ``toy`` corpus (1 epoch, tiny preset): creation,
extension, the tidy table and plots, the best setting recorded on test folds, retry of a killed
worker's trial, and one-line errors that leave no study behind."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli.main import main
from bench.tuning.storage import make_storage

TINY = ["--method", "hrf", "--backbone", "convtransformer", "--preset", "tiny", "--dataset", "toy",
        "--epochs", "1", "--folds", "1,2", "--quiet"]


def tune(*args: str):
    return CliRunner().invoke(main, ["tune", *TINY, *args])


@pytest.fixture
def results(tmp_path, cache_dir, monkeypatch) -> Path:
    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))
    return tmp_path / "results"


def test_study_runs_extends_and_writes_table_plot_and_best_runs(results):
    first = tune("--param", "expansion_ratio=1:8", "--param", "init=default,equivalent", "--trials", "4",
                 "--study-name", "s", "--results-dir", str(results))
    assert first.exit_code == 0, first.output
    table = pd.read_csv(results / "tune" / "s.csv")
    assert list(table["trial"]) == [0, 1, 2, 3]
    for column in ("study", "state", "value", "params_expansion_ratio", "params_init", "fold_1_val_ua",
                   "fold_2_val_ua", "seconds", "datetime_start"):
        assert column in table.columns
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert table.loc[0, "params_expansion_ratio"] == 4.0 and table.loc[0, "params_init"] == "default"  # enqueued
    assert table["params_expansion_ratio"].between(1, 8).all()
    done = table[table["state"] == "COMPLETE"]
    assert ((done["fold_1_val_ua"] + done["fold_2_val_ua"]) / 2 - done["value"]).abs().max() < 1e-12
    assert (results / "tune" / "s_ua_vs_expansion_ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert (results / "tune" / "s_ua_vs_init.png").exists()

    # the best setting was re-run on the test folds and recorded like any run
    runs = pd.read_csv(results / "runs.csv")
    best = done.loc[done["value"].idxmax()]
    assert sorted(runs["fold"]) == [1, 2] and set(runs["method"]) == {"hrf"}
    assert runs["hrf_expansion_ratio"].iloc[0] == pytest.approx(best["params_expansion_ratio"])
    assert set(runs["hrf_init"]) == {best["params_init"]}
    assert runs["ua"].notna().all() and (runs["train_params"] != runs["params"]).all()

    second = tune("--param", "expansion_ratio=1:8", "--param", "init=default,equivalent", "--trials", "2",
                  "--study-name", "s", "--results-dir", str(results))
    assert second.exit_code == 0, second.output
    extended = pd.read_csv(results / "tune" / "s.csv")
    assert list(extended["trial"]) == [0, 1, 2, 3, 4, 5]
    assert (extended["params_expansion_ratio"].iloc[:4] == table["params_expansion_ratio"]).all()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{results / 'optuna.db'}")
    assert len(study.trials) == 6
    assert [t.number for t in study.trials if "fixed_params" in t.system_attrs] == [0]  # enqueued on creation only


def test_multi_objective_log_scale_study_on_journal_storage(results, tmp_path):
    journal = tmp_path / "journal.log"
    result = tune("--param", "expansion_ratio=0.5:4:log", "--param", "targets=ffn+attn", "--objectives", "ua,macs",
                  "--trials", "2", "--folds", "1", "--storage", f"journal:{journal}", "--study-name", "m",
                  "--results-dir", str(results))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(results / "tune" / "m.csv")
    assert len(table) == 2 and {"value", "value_1", "fold_1_macs"} <= set(table.columns)
    assert table["value_1"].nunique() == 1  # merged HRF costs the same whatever the ratio
    assert (results / "tune" / "m_ua_vs_macs.png").exists()
    runs = pd.read_csv(results / "runs.csv")
    assert set(runs["hrf_targets"]) == {"ffn+attn"} and (runs["macs"] == table["value_1"].iloc[0]).all()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trial_of_a_killed_worker_is_retried(results, tmp_path, kind):
    url = f"sqlite:///{tmp_path / 'o.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'o.log'}"
    args = ["--param", "expansion_ratio=1:8", "--folds", "1", "--storage", url, "--study-name", "k",
            "--heartbeat", "1", "--results-dir", str(results)]
    assert tune(*args, "--trials", "1").exit_code == 0
    # A worker that started a trial, beat once, and was killed: the trial stays RUNNING.
    storage = make_storage(url, heartbeat_interval=1)
    study = optuna.load_study(study_name="k", storage=storage)
    killed = study.ask({"expansion_ratio": optuna.distributions.FloatDistribution(1, 8)})
    storage.record_heartbeat(killed._trial_id)
    # Longer than the grace period (2 heartbeats) even after SQLite's CURRENT_TIMESTAMP, which
    # Optuna uses for heartbeats, truncates both ends to whole seconds.
    time.sleep(3.5)

    result = tune(*args, "--trials", "1")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(results / "tune" / "k.csv").set_index("trial")
    assert table.loc[killed.number, "state"] == "FAIL"
    retry = table[table["retry_of"] == killed.number]
    assert len(retry) == 1 and retry["state"].iloc[0] == "COMPLETE"
    # the same value, read back from the CSV (the last bit may differ with the CSV parser's precision)
    assert retry["params_expansion_ratio"].iloc[0] == pytest.approx(killed.params["expansion_ratio"], rel=1e-12)


@pytest.mark.parametrize("args, message", [
    (["--param", "expansion_ratio=1:x"], "does not parse"),
    (["--param", "expansion_ratio=1:8:cubic"], "does not parse"),
    (["--param", "expansion_ratio=0:8"], "must be > 0.0"),
    (["--param", "expansion_ratio=8:1"], "need LOW < HIGH"),
    (["--param", "init=1:2"], "declares no numeric range"),
    (["--param", "init=default,xavier"], "must be one of"),
    (["--param", "nothing=1:2"], "is not a parameter"),
    (["--param", "expansion_ratio"], "bad --param"),
    (["--param", "targets=ffn"], "nothing to search"),
    (["--param", "expansion_ratio=1:8", "--objectives", "ua,energy"], "bad --objectives"),
    (["--param", "expansion_ratio=1:8", "--storage", "nosuchdb://x/y"], "cannot open storage"),
    (["--param", "expansion_ratio=1:8", "--storage", "sqlite:////nonexistent/dir/o.db"], "cannot open storage"),
    (["--param", "expansion_ratio=1:8", "--folds", "9"], "fold 9 does not exist"),
    (["--param", "expansion_ratio=1:8", "--backbone", "nope"], "unknown backbone"),
])
def test_bad_input_is_one_line_exit_2_and_creates_no_study(results, args, message):
    result = CliRunner().invoke(main, ["tune", *TINY, "--trials", "1", "--results-dir", str(results), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (results / "optuna.db").exists() and not (results / "tune").exists()


def test_extending_with_other_settings_is_refused(results):
    args = ["--param", "expansion_ratio=1:8", "--folds", "1", "--study-name", "x", "--results-dir", str(results)]
    assert tune(*args, "--trials", "1").exit_code == 0
    result = CliRunner().invoke(main, ["tune", *TINY[:-5], "--epochs", "2", "--folds", "1", "--quiet",
                                       *args[:2], "--study-name", "x", "--results-dir", str(results), "--trials", "1"])
    assert result.exit_code == 2 and "was created with other settings (train=" in result.stderr
    changed_kind = tune("--param", "expansion_ratio=1,2,4", "--folds", "1", "--study-name", "x", "--results-dir",
                        str(results), "--trials", "1")
    assert changed_kind.exit_code == 2 and "searched expansion_ratio as FloatDistribution" in changed_kind.stderr
    assert len(optuna.load_study(study_name="x", storage=f"sqlite:///{results / 'optuna.db'}").trials) == 1


def test_a_trial_scores_what_a_recorded_run_ships_and_reuses_its_cached_models(tmp_path, monkeypatch):
    """A trial of ``kd+quant`` reuses the large model ``bench run`` trained (same corpus fingerprint),
    and is scored on the int8 graph in ONNX Runtime with the records' latency ratio."""
    from dataclasses import replace

    from bench.measure import onnx_io
    from bench.execution.claims import execute_claimed
    from bench.reporting.results import RecordStore
    from bench.execution.context import cached_model_path
    from bench.execution.spec import RunSpec
    from bench.execution.workspace import Workspace
    from bench.training.config import TrainConfig
    from bench.tuning.objective import validation_scores

    workspace = Workspace(tmp_path / "cache", progress=False, defer_latency=True)
    spec = RunSpec(method="kd+quant", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=1), teacher_preset="lightweight",
                   corpus_fingerprint=workspace.fingerprint("toy", {}))
    store = RecordStore(tmp_path / "results")
    assert execute_claimed(spec, store, workspace)
    record, = store.load()[0]
    large = cached_model_path(workspace.cache_dir, spec.plain_model_name("lightweight"))
    trained = large.stat().st_mtime_ns
    scored = []  # the graphs the trial's validation score comes from (the real predict_graph runs)
    predict_graph = onnx_io.predict_graph
    monkeypatch.setattr(onnx_io, "predict_graph", lambda graph, split: scored.append(graph) or predict_graph(graph, split))
    # a trial builds its spec without the fingerprint, as TuneSetting.spec does
    scores = validation_scores(replace(spec, corpus_fingerprint=""), workspace, "latency_ratio")
    assert len(scored) == 1 and isinstance(scored[0], bytes)  # the int8 graph, not the float model
    assert large.stat().st_mtime_ns == trained  # reused, not trained again
    assert len(list((workspace.cache_dir / "models").glob("convtransformer-lightweight-*.pt"))) == 1
    assert record["accuracy_runtime"] == "onnxruntime int8"
    assert 0.0 <= scores["val_ua"] <= 1.0 and 0.0 < scores["latency_ratio"] < 10.0


def test_a_study_whose_latency_objective_was_milliseconds_is_not_extended(results):
    """Studies created before the latency objective became the interleaved ratio stored milliseconds:
    extending one would mix the two units in one Pareto front."""
    args = ["--param", "expansion_ratio=1:8", "--folds", "1", "--objectives", "ua,latency", "--study-name", "lat",
            "--results-dir", str(results), "--trials", "1"]
    assert tune(*args).exit_code == 0
    study = optuna.load_study(study_name="lat", storage=f"sqlite:///{results / 'optuna.db'}")
    older = {k: v for k, v in study.user_attrs["setting"].items() if k != "latency_objective"}
    study.set_user_attr("setting", older)  # as such a study was stored
    result = tune(*args)
    assert result.exit_code == 2 and "was created with other settings (latency_objective=None)" in result.stderr


def test_python_api_tunes_kd_on_the_run_device_and_reruns_the_best_setting(results, monkeypatch):
    """``bench.tune`` is ``bench tune``: a kd study (the large model trained once, reused by every trial
    and the final runs), trials trained on the device ``bench run`` would use, the best setting re-run
    and recorded on the test folds."""
    import bench
    import bench.execution.runner

    devices = []
    original = bench.execution.workspace.Workspace.__init__

    def spying(self, *args, **kwargs):
        original(self, *args, **kwargs)
        devices.append(self.device.type)

    monkeypatch.setattr(bench.execution.workspace.Workspace, "__init__", spying)
    result = bench.tune("kd", "convtransformer", "tiny", "toy", ["temperature=1:8"], trials=2, folds=[1],
                        seeds=0, epochs=1, teacher_preset="lightweight", results_dir=results, progress=False)
    assert isinstance(result.study, optuna.Study) and len(result.study.trials) == 2
    assert list(result.trials["trial"]) == [0, 1] and result.trials_csv.exists()
    assert [r["method"] for r in result.records] == ["kd"] and result.records[0]["status"] == "ok"
    assert result.records[0]["kd_temperature"] == pytest.approx(result.best[0].params["temperature"])
    assert result.records[0]["lightweight_model_cache"] == "hit"  # the teacher the trials trained, reused
    assert set(devices) == {bench.training.devices.resolve_device("auto").type}  # trials and final runs: bench run's default
    with pytest.raises(bench.BenchError, match="bad folds"):
        bench.tune("kd", "convtransformer", "tiny", "toy", ["temperature=1:8"], folds=["x"], results_dir=results)
