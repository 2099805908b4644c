"""Shipped studies parse into valid grids; ``bench run --dry-run`` lists runs, shared plain models and a
calibrated estimate without training or recording anything; the device options reach the record."""

from __future__ import annotations

import json
from pathlib import Path
import time
import sys
import subprocess

import pytest
from click.testing import CliRunner

from bench.cli.main import main
from bench.execution.grid import load_config, make_grid
from bench.registry import BACKBONES, METHODS, BenchError
from bench.studies import study_names, study_path

STUDIES = ["cremad", "daicwoz", "emodb", "iemocap", "m3ed", "ravdess"]
TINY = ["--backbones", "convtransformer", "--datasets", "toy", "--folds", "1,2", "--seeds", "0", "--epochs", "1", "--quiet"]


@pytest.mark.parametrize("name", STUDIES)
def test_study_files_are_valid_grids_over_every_backbone_method_and_preset(name):
    assert set(STUDIES) <= set(study_names())
    grid = make_grid(load_config(study_path(name)))
    assert grid.datasets == [name] and grid.seeds == [0, 1, 2]
    by_default = {n for n in METHODS.names() if METHODS.get(n).obj.included_by_default}  # as each declares
    assert set(grid.backbones) == set(BACKBONES.names()) and set(grid.method_names()) == by_default
    # the runs' presets (expanding the runs themselves needs the corpus, for its fingerprint)
    assert set(grid.presets_for("baseline")) == {"tiny", "lightweight", "medium", "large"}
    assert {p for m in grid.method_names() if m != "baseline" for p in grid.presets_for(m)} == {"lightweight"}
    assert grid.train.epochs >= 20
    assert grid.train.final_fit and grid.features.normalize == "speaker"  # the recipe chosen on validation
    text = study_path(name).read_text()
    assert "Tuning budgets" in text and "0 trials" in text  # the fairness note


def test_the_curves_study_sweeps_budgets_and_presets_against_the_plain_frontier(tmp_path):
    """``emodb-curves``: prune and lowrank at 5 fractions of the large model by params and by MACs,
    prune-unstructured at the same 5, the over-parameterizing methods and kd at every plain preset but
    the large one, each point paired with the plain frontier's folds."""
    grid = make_grid(load_config(study_path("emodb-curves")))
    ratios = {"0.5", "0.25", "0.125", "0.0625", "0.03125"}
    for method, budgets in (("prune", {"params", "macs"}), ("lowrank", {"params", "macs"}),
                            ("prune-unstructured", {"params"})):
        settings = [METHODS.get(method).make_params(p.get(method)) for p in grid.method_settings(method)]
        assert {(s.ratio, getattr(s, "budget", "params")) for s in settings} == {(r, b) for r in ratios for b in budgets}
    assert set(grid.presets_for("baseline")) == {"tiny", "lightweight", "medium", "large"}
    for method in ("hrf", "repadapter", "expandnets", "kd", "matched-compute"):
        assert set(grid.presets_for(method)) == {"tiny", "lightweight", "medium"}
    assert grid.folds == [1, 2, 3, 4, 5] and grid.seeds == [0] and grid.train.final_fit


def test_a_sweep_runs_each_combination_once_with_the_ids_of_fixed_parameters(tmp_path):
    from bench.api import grid_values

    toy = {"datasets": ["toy"], "folds": [1], "seeds": [0]}
    swept = make_grid(grid_values(methods=["prune"], sweeps={"prune": {"ratio": [0.5, 0.25], "budget": ["params", "macs"]}},
                                  **toy)).specs()
    fixed = [make_grid(grid_values(methods=["prune"], method_params={"prune": {"ratio": r, "budget": b}}, **toy)).specs()[0]
             for r in ("0.5", "0.25") for b in ("params", "macs")]
    assert sorted(s.run_id for s in swept) == sorted(s.run_id for s in fixed) and len({s.run_id for s in swept}) == 4
    for sweeps, message in (({"prune": {"ratio": [0.5, "0.5"]}}, "repeats a value"),
                            ({"hrf": {"expansion_ratio": [2.0]}}, "sweep given for 'hrf'"),
                            ({"prune": {"ratio": [2]}}, "must be 'preset' or a fraction")):
        with pytest.raises(BenchError, match=message):
            make_grid(grid_values(methods=["prune"], sweeps=sweeps, **toy))
    with pytest.raises(BenchError, match="both swept and fixed"):
        make_grid(grid_values(methods=["prune"], sweeps={"prune": {"ratio": [0.5]}},
                              method_params={"prune": {"ratio": "0.5"}}, **toy))
    bad = tmp_path / "grid.toml"
    bad.write_text("[sweeps.prune]\nratio = 0.5\n")
    with pytest.raises(BenchError, match="sweeps must be a table of tables of non-empty lists"):
        load_config(bad)


def test_list_names_the_studies_and_recipes():
    out = CliRunner().invoke(main, ["list"], catch_exceptions=False).output
    assert all(f"  {name}: " in out for name in STUDIES)
    assert "preset medium:" in out and "recipe: lr=" in out and "label_smoothing=0.1" in out and "keep_weights=last" in out


def test_unknown_study_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["run", "--study", "nope", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2 and result.output.startswith("error: unknown study 'nope'")
    assert "emodb" in result.output and not (tmp_path / "records").exists()


def test_dry_run_lists_runs_shared_models_and_an_estimate_without_running(tmp_path, cache_dir, monkeypatch):
    from bench.execution import estimate

    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))
    # Each model is calibrated once for the whole test: the estimates compared below differ in what they
    # count (cached models cost nothing), and two calibrations of a loaded machine differ by more than that.
    calibrated, original = {}, estimate.time_steps

    def calibrated_once(backbone, preset, *args, method=None, **kwargs):
        key = (backbone, preset, type(method).__name__)
        if key not in calibrated:
            calibrated[key] = original(backbone, preset, *args, method=method, **kwargs)
        return calibrated[key]

    monkeypatch.setattr(estimate, "time_steps", calibrated_once)
    results = tmp_path / "results"
    args = ["run", "--methods", "baseline,kd", "--presets", "tiny", "--teacher-preset", "lightweight",
            "--results-dir", str(results), *TINY]
    out = CliRunner().invoke(main, [*args, "--dry-run"], catch_exceptions=False).output
    first = out
    assert "4 runs in the grid, 0 already recorded, 4 to run" in out
    assert out.count(" kd convtransformer/tiny teacher lightweight toy fold ") == 2
    # per fold: the tiny baseline model and the lightweight teacher, each trained once
    assert "4 plain models trained once and reused" in out
    assert "convtransformer/lightweight toy: 2 models (fold x seed), used by 2 runs" in out
    assert "convtransformer/tiny toy: 2 models (fold x seed), used by 2 runs" in out
    assert "device-hours on cpu" in out and "ms per training step" in out
    assert "upper bound" not in out  # the recipe trains every epoch: the estimate is not a bound
    stopping = CliRunner().invoke(main, [*args, "--patience", "3", "--keep-weights", "best", "--dry-run"],
                                  catch_exceptions=False).output
    assert "an upper bound where early stopping ends trainings sooner" in stopping
    assert not (results / "records").exists() and not (cache_dir / "models").exists()
    # once recorded, the dry run says so
    CliRunner().invoke(main, ["run", "--methods", "baseline", "--presets", "tiny", "--results-dir", str(results),
                              "--device", "cpu", *TINY], catch_exceptions=False)
    out = CliRunner().invoke(main, [*args, "--dry-run"], catch_exceptions=False).output
    assert "4 runs in the grid, 2 already recorded, 2 to run" in out
    assert "2 plain models trained once and reused (cached under --cache-dir/models), 0 of them already trained" in out
    # with --force the baselines run again, on their cached tiny models: those cost nothing more
    forced = CliRunner().invoke(main, [*args, "--force", "--dry-run"], catch_exceptions=False).output
    assert "4 runs in the grid, 0 already recorded, 4 to run" in forced
    assert "4 plain models trained once and reused (cached under --cache-dir/models), 2 of them already trained" in forced
    assert "convtransformer/tiny toy: 2 models (fold x seed), used by 2 runs; 2 cached" in forced
    minutes = lambda text: float(text.split("plain models still to train: ")[1].split("(")[1].split(" min")[0])  # noqa: E731
    assert 0 < minutes(forced) < minutes(first)  # 2 lightweight teachers, fewer than the 4 models of the first dry run
    records = [json.loads(p.read_text()) for p in (results / "records").glob("*.json")]
    assert len(records) == 2 and {r["train_device"] for r in records} == {"cpu"}


def test_the_estimate_times_what_an_over_parameterizing_method_trains(tmp_path, cache_dir, monkeypatch):
    """hrf and expandnets train a wider model than they deploy: the dry run times a step of that model
    (``Method.training_model``), not the plain one's; a method without one shares the plain timing."""
    from bench.execution import estimate

    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))
    timed = []
    original = estimate.time_steps

    def recording(*args, method=None, **kwargs):
        timed.append(None if method is None else type(method).__name__)
        return original(*args, method=method, **kwargs)

    monkeypatch.setattr(estimate, "time_steps", recording)
    out = CliRunner().invoke(main, ["run", "--methods", "baseline,hrf,expandnets,kd", "--presets", "tiny",
                                    "--teacher-preset", "lightweight", "--results-dir", str(tmp_path), *TINY,
                                    "--dry-run"], catch_exceptions=False).output
    assert "convtransformer/tiny on toy, as hrf trains it:" in out and "as expandnets trains it:" in out
    assert "as kd trains it" not in out and "as baseline trains it" not in out
    assert sorted(timed, key=str) == sorted([None, None, "HRF", "ExpandNets"], key=str)  # tiny, lightweight, 2 methods


def test_cuda_device_without_a_gpu_is_one_line_exit_2(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    result = CliRunner().invoke(main, ["run", "--device", "cuda", "--results-dir", str(tmp_path), *TINY])
    assert result.exit_code == 2 and result.output.startswith("error: device 'cuda' asked for")


def test_a_study_narrowed_to_other_methods_drops_its_baseline_presets(tmp_path):
    from bench.api import grid_values
    from bench.execution.grid import make_grid

    grid = make_grid(grid_values(study_path("emodb"), methods="hrf,kd"))
    assert grid.method_names() == ["hrf", "kd"] and grid.presets_for("hrf") == ["lightweight"]
    full = make_grid(grid_values(study_path("emodb")))
    assert full.presets_for("baseline") == ["tiny", "lightweight", "medium", "large"]
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text('methods = ["baseline", "hrf"]\n[method_params.hrf]\nexpansion_ratio = 4\n')
    assert make_grid(grid_values(grid_file, methods="baseline")).method_params == {}
    with pytest.raises(BenchError, match="-p given for 'kd'"):  # an explicit one still is an error
        make_grid(grid_values(grid_file, methods="baseline", method_params={"kd": {"temperature": "2"}}))


def test_the_dry_run_reports_the_machine_load_and_warns_when_neighbours_kept_cores_busy():
    """Two busy-looping neighbours kept (about) every core busy while this process slept: MachineLoad
    counts them, not its own time, and its line warns that the calibration is unreliable."""
    from bench.execution.estimate import LOADED_CORES, MachineLoad

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for spinner in spinners:  # wait on a state: each neighbour is running, not still starting
            while int(Path(f"/proc/{spinner.pid}/stat").read_text().rsplit(")", 1)[1].split()[11]) == 0:
                time.sleep(0.01)
        with MachineLoad() as load:
            time.sleep(1.0)  # this process does nothing: whatever was busy was a neighbour
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert load.others >= min(LOADED_CORES * 2, load.cores * 0.6), load.others
    assert "other processes kept" in load.line() and "warning: the machine was loaded" in load.line()
