"""The Python API: the README's notebook example in a fresh interpreter, one code path for the API and
the CLI, lazy plug-ins, deploy models saved as data (exact round trips, old pickles), and honest
dependencies (optional extras, the private APIs the code relies on)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import bench
from bench.cli.main import main
from bench.measure.costs import example_input
from bench.measure.model_store import load_deploy_model
from bench.registry import BenchError
from bench.execution.runner import execute, save_model
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig

ROOT = Path(__file__).parent.parent
TINY_SETTINGS = 'settings = dict(datasets=["toy"], presets=["tiny"], folds=[1], seeds=[0], epochs=1)'


def readme_example() -> str:
    """The first ``python`` code block of the README's "Python API" section."""
    section = ROOT.joinpath("README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_notebook_example_runs_in_a_fresh_interpreter(tmp_path, bench_env):
    """The example exactly as printed, with its ``settings = ...`` line swapped for a tiny toy grid."""
    code = readme_example()
    settings_line = re.search(r"^settings = .*$", code, re.M)
    assert settings_line, "the README example must keep its grid settings on one `settings = ...` line"
    script = tmp_path / "example.py"
    script.write_text(code.replace(settings_line.group(0), TINY_SETTINGS))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=bench_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = bench.load_runs(tmp_path / "results")
    assert (tmp_path / "reports" / "index.html").exists()
    assert sorted(runs["method"]) == ["baseline", "hrf"] and runs["ua"].notna().all()
    assert "hrf" in done.stdout and "ua_mean" in done.stdout  # the printed summary


def test_api_and_cli_are_one_code_path(tmp_path, bench_env, cache_dir):
    records = bench.run(methods="baseline", datasets=["toy"], folds="1-2", seeds=0, presets=["tiny"], epochs=1,
                        results_dir=tmp_path / "results", cache_dir=cache_dir, progress=False)
    assert sorted(r["fold"] for r in records) == [1, 2] and all(r["train_epochs"] == 1 for r in records)
    again = subprocess.run([sys.executable, "-m", "bench", "run", "--methods", "baseline", "--datasets", "toy",
                            "--folds", "1,2", "--seeds", "0", "--presets", "tiny", "--epochs", "1", "--quiet",
                            "--results-dir", str(tmp_path / "results")], env=bench_env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "2 of 2 runs already recorded" in again.stderr  # the same grid, the same run ids

    summary = bench.load_summary(tmp_path / "results", light_preset="tiny")
    assert list(summary["method"]) == ["baseline"] and {"ci_low", "ci_high", "pairs"} <= set(summary.columns)
    for _ in range(2):  # the first call imports the module bench.report, which must not replace the function
        page = bench.report(tmp_path / "results", tmp_path / "reports", light_preset="tiny")
        assert page.index.exists()


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(BenchError, match="unknown setting 'epoch'; valid settings: .*epochs"):
        bench.run(methods=["baseline"], epoch=3, results_dir=tmp_path)
    with pytest.raises(BenchError, match="bad folds value '1-x'"):
        bench.run(folds="1-x", results_dir=tmp_path)
    with pytest.raises(BenchError, match="unknown method 'hfr'. Did you mean 'hrf'"):
        bench.run(methods=["hfr"], results_dir=tmp_path)
    with pytest.raises(BenchError, match="run 'abc123' has no saved deploy model"):
        bench.load_model("abc123", tmp_path)
    for folder in (tmp_path / "typo", tmp_path):
        with pytest.raises(BenchError, match="is not a results folder"):
            bench.load_runs(folder)
        with pytest.raises(BenchError, match="is not a results folder"):
            bench.load_summary(folder)
    for outside in ("../../../../elsewhere/model", "*", "ab[cd]", "/etc/passwd", "", "ABC123"):
        with pytest.raises(BenchError, match="is not a run id: give the 16 hex digits"):
            bench.load_model(outside, tmp_path)


def test_import_is_cheap_and_plugins_load_on_first_lookup():
    """In a notebook: no ``load_builtin_plugins()``, and torch is not imported by ``import bench``."""
    code = ("import sys, bench\n"
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules\n"
            "import bench.execution.grid\n"
            "grid = bench.execution.grid.make_grid({'methods': ['hrf'], 'backbones': ['convtransformer']})\n"
            "print(len(grid.specs()), 'convtransformer' in bench.list_backbones(), 'emodb' in bench.list_datasets())")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "True"]


# ---- deploy models saved as data --------------------------------------------------------------

@pytest.fixture(scope="module")
def deploy_models(tmp_path_factory):
    """Real 1-epoch trainings on ``toy``: each method's deploy model in memory and saved to a file."""
    folder = tmp_path_factory.mktemp("models")
    workspace = Workspace(tmp_path_factory.mktemp("cache"), progress=False, defer_latency=True)
    saved = {}
    for method, params in [("baseline", {}), ("hrf", {}), ("prune", {}), ("lowrank", {"lowrank": {"ratio": 0.5}}),
                           ("quant", {})]:
        spec = RunSpec(method, "convtransformer", "tiny", "toy", 1, 0, TrainConfig(epochs=1), method_params=params,
                       teacher_preset="lightweight")
        record = execute(spec, workspace)
        shipped = record.pop("_deploy_model")
        save_model(shipped, folder / f"{record['run_id']}.pt", record)
        saved[method] = (shipped, folder / f"{record['run_id']}.pt", record)
    return saved


@pytest.mark.parametrize("method", ["baseline", "hrf", "prune", "lowrank", "quant"])
def test_saved_deploy_model_is_data_and_gives_identical_outputs(deploy_models, method):
    shipped, path, record = deploy_models[method]
    model = shipped.model
    document = torch.load(path, weights_only=True)  # tensors and plain values only: no pickled classes
    assert (document["backbone"], document["input_dim"], document["num_classes"]) == ("convtransformer", 16, 4)
    changed = {c["path"] for c in document["changes"]}
    if method in ("baseline", "hrf"):  # deHRF gives back the plain preset exactly
        assert document["preset"] == "tiny" and not changed
    elif method == "prune":  # pruned from the teacher: smaller layers of the same types
        assert document["preset"] == "lightweight" and any(c["settings"].get("out_features") for c in document["changes"])
    elif method == "lowrank":  # factor pairs and LowRankAttention replace modules of the teacher
        assert document["preset"] == "lightweight"
        assert any(c["class"] == "methods.lowrank:LowRankAttention" for c in document["changes"])
    else:  # quant: the float plain model as data, the int8 ONNX graph it ships beside it, loaded with it
        assert document["preset"] == "tiny" and not changed
        assert shipped.graph is not None and load_deploy_model(path).graph == path.with_suffix(".onnx").read_bytes()
    assert (shipped.graph is None) == (not path.with_suffix(".onnx").exists())

    loaded = load_deploy_model(path).model
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert not loaded.training
    for frames in (37, 120):
        features, lengths = example_input(16, frames, batch=2)
        lengths[1] = frames // 2  # one padded utterance
        with torch.inference_mode():
            assert torch.equal(model.eval()(features, lengths), loaded(features, lengths))


def test_a_module_inserted_before_unchanged_ones_keeps_its_place(tmp_path):
    """A changed module's children come back in their order (nn.Sequential runs them in it), also when a
    new child precedes one the fresh build provides."""
    from collections import OrderedDict

    from torch import nn

    from bench.measure.model_store import save_deploy_model
    from bench.training.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("convtransformer", "tiny", 16, 4).eval()
    last = model.head.mlp[0]
    model.head.mlp = nn.Sequential(OrderedDict(pre=nn.Linear(last.in_features, last.in_features), **{"0": last}))
    save_deploy_model(model, tmp_path / "m.pt", "convtransformer", 16, 4, ["tiny"])
    loaded = load_deploy_model(tmp_path / "m.pt").model
    assert list(loaded.head.mlp._modules) == ["pre", "0"]
    features, lengths = example_input(16, 40)
    with torch.inference_mode():
        assert torch.equal(model(features, lengths), loaded(features, lengths))


def test_load_model_by_run_id_prefix_and_pickles_are_refused_unrun(deploy_models, tmp_path, code_payload):
    shipped, path, record = deploy_models["prune"]
    model = shipped.model
    models = tmp_path / "results" / "models"
    models.mkdir(parents=True)
    (models / path.name).write_bytes(path.read_bytes())
    loaded = bench.load_model(record["run_id"][:6], tmp_path / "results")
    features, lengths = example_input(16, 50)
    with torch.inference_mode():
        assert torch.equal(model(features, lengths), loaded(features, lengths))

    torch.save(model, models / "0123456789abcdef.pt")  # how hrf-bench 0.1 saved deploy models: a pickled module
    with pytest.raises(BenchError, match="holds pickled objects.*not loaded.*bench run --force"):
        bench.load_model("0123456789abcdef", tmp_path / "results")
    payload, marker = code_payload
    torch.save(payload, models / "fedcba9876543210.pt")  # a planted file whose unpickling would write ``marker``
    with pytest.raises(BenchError, match="holds pickled objects"):
        bench.load_model("fedcba9876543210", tmp_path / "results")
    assert not marker.exists()


@pytest.mark.parametrize("named", ["os:system", "torch:os.system", "builtins:eval", "torch:nn.Module.__init__.__globals__"])
def test_a_saved_document_cannot_name_code_outside_torch_and_the_plugins(deploy_models, tmp_path, named):
    _, path, _ = deploy_models["lowrank"]
    document = torch.load(path, weights_only=True)
    assert document["changes"], "lowrank changes the build: its document names classes"
    document["changes"][0]["class"] = named
    planted = tmp_path / "planted.pt"
    torch.save(document, planted)
    with pytest.raises(BenchError, match="not loaded|does not exist here"):
        load_deploy_model(planted)


# ---- dependencies -----------------------------------------------------------------------------

def test_cluster_drivers_are_extras_and_fail_in_one_line_without_them(tmp_path, monkeypatch):
    project = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    assert "submitit" not in required and "psycopg" not in required and "ptflops" not in required
    assert any(d.startswith("submitit") for d in project["optional-dependencies"]["slurm"])
    assert any(d.startswith("psycopg2-binary") for d in project["optional-dependencies"]["postgres"])
    assert "'.[test,slurm,postgres]'" in ROOT.joinpath(".ci", "run").read_text()  # CI runs those tests

    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    result = CliRunner().invoke(main, ["run", "--methods", "baseline", "--datasets", "toy", "--presets", "tiny",
                                       "--results-dir", str(tmp_path), "--executor", "submitit"])
    assert result.exit_code == 2 and result.output.strip() == \
        "error: --executor submitit needs submitit: pip install 'hrf-bench[slurm]'"
    from bench.tuning.storage import make_storage
    with pytest.raises(BenchError, match=r"needs the PostgreSQL driver: pip install 'hrf-bench\[postgres\]'"):
        make_storage("postgresql://bench:bench@127.0.0.1/bench")


def test_private_apis_the_code_relies_on_still_exist():
    """bench tune and methods/prune.py use private names of optuna and torch-pruning; pyproject bounds
    both packages, and this test names what to fix when a new release removes them."""
    import optuna
    import torch_pruning

    try:
        from optuna.storages._heartbeat import BaseHeartbeat
    except ImportError as error:
        pytest.fail(f"optuna {optuna.__version__} has no optuna.storages._heartbeat.BaseHeartbeat ({error}): "
                    f"bench/tuning/tune.py's journal heartbeat needs a new base; keep optuna below this version")
    missing = {"record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
               "get_heartbeat_stale_trial_callback"} - set(dir(BaseHeartbeat))
    assert not missing, f"optuna {optuna.__version__}'s BaseHeartbeat lost {sorted(missing)}: update bench/tuning/tune.py"
    try:
        from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
        _FlattenIndexMapping(stride=4, reverse=True)
    except (ImportError, TypeError) as error:
        pytest.fail(f"torch-pruning {torch_pruning.__version__} changed index_mapping._FlattenIndexMapping(stride, "
                    f"reverse) ({error}): update methods/prune.py's _map_flattened_channels")
    bounds = {d.split(">")[0].split("<")[0]: d for d in
              tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]["dependencies"]}
    assert "<" in bounds["optuna"] and "<" in bounds["torch-pruning"]
