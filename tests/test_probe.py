"""The portable probe: ``bench export`` writes ONNX models, a manifest and probe.py; probe.py runs in a
fresh virtual environment holding only onnxruntime and numpy; ``bench import-latency`` merges its rows
under their device tag. Bad inputs end with one line and exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from filelock import FileLock

from bench.measure import model_store

from bench.measure import probe
from bench.cli.main import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def probe_python(request, tmp_path_factory) -> Path:
    """Python of a virtual environment with only onnxruntime and numpy (and their dependencies) from
    the package registry, cached in pytest's cache folder so that reruns are quick."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("probe-venv") if cache is not None else tmp_path_factory.mktemp("probe-venv")
    python = folder / "env" / "bin" / "python"
    with FileLock(folder / "create.lock"):
        ready = python.exists() and subprocess.run([python, "-c", "import onnxruntime, numpy"],
                                                   capture_output=True).returncode == 0
        if not ready:
            subprocess.run([sys.executable, "-m", "venv", "--clear", folder / "env"], check=True, capture_output=True)
            installed = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                        "onnxruntime", "numpy"], capture_output=True, text=True, timeout=600)
            if installed.returncode != 0:
                pytest.skip(f"pip could not install onnxruntime and numpy from the package registry: "
                            f"{(installed.stderr.strip().splitlines() or ['no output'])[-1]}")
    return python


def run_probe(python: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([python, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture
def results(recorded_run, tmp_path, cache_dir, monkeypatch) -> Path:
    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))
    return Path(shutil.copytree(recorded_run, tmp_path / "results"))


@pytest.fixture
def exported(results, tmp_path) -> Path:
    out = tmp_path / "export"
    result = invoke("export", "--out", out, "--results-dir", results, "--seconds", "2,5")
    assert result.exit_code == 0, result.output
    return out


def test_export_writes_models_manifest_and_the_probe(exported, results):
    manifest = json.loads((exported / "manifest.json").read_text())
    record, = (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))
    model, = manifest["models"]
    assert (model["run_id"], model["method"], model["backbone"]) == (record["run_id"], "baseline", "convtransformer")
    assert model["input_dim"] == 16 and [i["seconds"] for i in model["inputs"]] == [2.0, 5.0]
    assert all(i["flops"] == 2 * i["macs"] > 0 for i in model["inputs"])
    assert (exported / model["file"]).stat().st_size > 4 * model["params"]
    assert len(model["check"]["logits"][0]) == 4 and (exported / model["check"]["input"]).exists()
    assert (exported / "probe.py").read_text() == Path(probe.__file__).read_text()
    assert (exported / model["reference"]).stat().st_size > 0  # the plain lightweight model, to time against


@pytest.mark.slow
def test_probe_in_a_bare_venv_then_import_keeps_devices_apart(probe_python, exported, results, tmp_path):
    assert run_probe(probe_python, "-c", "import torch", cwd=tmp_path).returncode != 0  # really without torch
    done = run_probe(probe_python, exported / "probe.py", exported, "--device", "testpi", "--threads", "1",
                     "--seconds", "2", "--max-seconds", "0.2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads((exported / "latency-testpi.json").read_text())
    row, = document["rows"]
    assert document["device"] == row["device"] == "testpi" and row["runtime"] == "onnxruntime"
    assert row["check_ok"] and row["check_max_abs_diff"] <= 1e-4 and row["latency_samples"] >= 3
    assert row["flops"] == 2 * row["macs"] and row["rtf"] == pytest.approx(row["latency_ms"] / 2000)
    assert (exported / "latency-testpi.csv").exists()

    here = invoke("measure", "--results-dir", results, "--runtimes", "torch-eager", "--threads", "1",
                  "--seconds", "2", "--max-seconds", "0.2")
    assert here.exit_code == 0, here.output
    host_file, = (results / "latency").glob("*.json")
    before = host_file.read_bytes()
    for _ in range(2):  # importing twice replaces, never duplicates
        imported = invoke("import-latency", exported / "latency-testpi.json", "--results-dir", results)
        assert imported.exit_code == 0, imported.output
    table = pd.read_csv(results / "latency.csv")
    assert sorted(table.device) == sorted(["testpi", probe.device_tag(None)])
    pi = table[table.device == "testpi"].iloc[0]
    assert pi.run_id == row["run_id"] and pi.runtime == "onnxruntime" and pi.latency_ms == row["latency_ms"]
    assert host_file.read_bytes() == before

    csv_import = invoke("import-latency", exported / "latency-testpi.csv", "--results-dir", results,
                        "--device", "testpi-csv")
    assert csv_import.exit_code == 0, csv_import.output
    assert set(pd.read_csv(results / "latency.csv").device) == {"testpi", "testpi-csv", probe.device_tag(None)}


def test_bench_probe_measures_here_in_the_same_schema(exported):
    result = invoke("probe", exported, "--device", "here", "--threads", "1", "--seconds", "5", "--max-seconds", "0.2")
    assert result.exit_code == 0, result.output
    row, = json.loads((exported / "latency-here.json").read_text())["rows"]
    assert row["schema_version"] == probe.SCHEMA_VERSION and row["input_seconds"] == 5.0 and row["check_ok"]


@pytest.mark.parametrize("field, named", [("file", "../../../etc/passwd"), ("file", "/etc/passwd"),
                                          ("reference", "../outside.onnx"), ("check", "/tmp/planted.npy"),
                                          ("file", 7)])
def test_a_manifest_naming_files_outside_its_folder_is_refused(exported, tmp_path, field, named):
    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["models"][0]
    if field == "check":
        entry["check"]["input"] = named
    else:
        entry[field] = named
    (folder / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(folder.rglob("*"))
    result = invoke("probe", folder, "--device", "here", "--threads", "1", "--seconds", "2", "--max-seconds", "0.1")
    assert result.exit_code == 2
    assert "not a file inside the export folder" in one_line_error(result.output) or "outside the export folder" in result.output
    assert sorted(folder.rglob("*")) == before  # no rows written


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


@pytest.mark.slow
def test_probe_refuses_a_file_that_is_not_onnx(probe_python, exported, tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_text("not a model")
    bare = run_probe(probe_python, exported / "probe.py", garbage, cwd=tmp_path)
    assert bare.returncode == 2 and "is not a readable ONNX model" in one_line_error(bare.stderr)
    model = json.loads((exported / "manifest.json").read_text())["models"][0]["file"]
    (exported / model).write_text("overwritten")
    broken = run_probe(probe_python, exported / "probe.py", exported, cwd=tmp_path)
    assert broken.returncode == 2 and "is not a readable ONNX model" in one_line_error(broken.stderr)
    via_bench = invoke("probe", garbage)
    assert via_bench.exit_code == 2 and "is not a readable ONNX model" in one_line_error(via_bench.output)


class DataDependent(torch.nn.Module):
    """A model whose output branches on an input's value: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 4)

    def forward(self, features, lengths):
        pooled = self.linear(features).mean(1)
        return pooled if int(lengths.max()) % 2 else -pooled


def test_export_of_a_model_onnx_cannot_express_is_refused_or_left_out(results, tmp_path, monkeypatch):
    path, = (results / "models").glob("*.pt")
    # saved as data like any deploy model; its class is trusted the way a registered plug-in's package is
    trusted = model_store._trusted_packages() | {__name__.partition(".")[0]}
    monkeypatch.setattr(model_store, "_trusted_packages", lambda: trusted)
    model_store.save_deploy_model(DataDependent(), path, "convtransformer", 16, 4)
    assert isinstance(model_store.load_deploy_model(path).model, DataDependent)
    refused = invoke("export", "--out", tmp_path / "out", "--results-dir", results)
    assert refused.exit_code == 2 and "cannot export run" in one_line_error(refused.output.splitlines()[-1])
    assert not (tmp_path / "out").exists()  # nothing half-written
    left_out = invoke("export", "--out", tmp_path / "out", "--results-dir", results, "--skip-unexportable")
    assert left_out.exit_code == 0 and "left out (not exportable)" in left_out.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["models"] == []


def test_export_refuses_a_file_or_a_used_folder_and_replaces_an_earlier_export_whole(exported, results, tmp_path):
    file = tmp_path / "models.txt"
    file.write_text("mine")
    result = invoke("export", "--out", file, "--results-dir", results)
    assert result.exit_code == 2 and "is a file" in one_line_error(result.output) and file.read_text() == "mine"

    (exported / "old-run.onnx").write_bytes(b"stale model")
    (exported / "latency-pi4.json").write_text("{}")
    before = {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()}
    result = invoke("export", "--out", exported, "--results-dir", results, "--seconds", "2")
    assert result.exit_code == 2 and "already exists" in one_line_error(result.output)
    assert {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()} == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    result = invoke("export", "--out", mine, "--results-dir", results, "--replace")
    assert result.exit_code == 2 and "not an earlier export" in one_line_error(result.output)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    # the device measurements a probe wrote into the export, and a user's file, are never deleted by --replace
    (exported / "notes.txt").write_text("mine")
    result = invoke("export", "--out", exported, "--results-dir", results, "--seconds", "2", "--replace")
    assert result.exit_code == 2 and "2 file(s) an export does not write (latency-pi4.json" in one_line_error(result.output)
    assert {p: p.read_bytes() for p in exported.rglob("*") if p.is_file()} == before | {exported / "notes.txt": b"mine"}
    (exported / "latency-pi4.json").rename(tmp_path / "latency-pi4.json")
    (exported / "notes.txt").unlink()
    replaced = invoke("export", "--out", exported, "--results-dir", results, "--seconds", "2", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert not (exported / "old-run.onnx").exists()  # a stale model of the earlier export is replaced
    manifest = json.loads((exported / "manifest.json").read_text())
    assert [i["seconds"] for i in manifest["models"][0]["inputs"]] == [2.0]
    assert not list(tmp_path.glob(".export*"))  # no staging folder left behind


@pytest.mark.slow
def test_an_int8_model_exports_and_is_probed_in_a_bare_venv(probe_python, results, tmp_path):
    done = invoke("run", "--methods", "quant", "--datasets", "toy", "--presets", "tiny", "--folds", "1", "--seeds",
                  "0", "--epochs", "1", "--quiet", "--defer-latency", "--results-dir", results)
    assert done.exit_code == 0, done.output
    record = next(r for r in map(json.loads, map(Path.read_text, (results / "records").glob("*.json")))
                  if r["method"] == "quant")
    out = tmp_path / "export"
    assert invoke("export", "--out", out, "--results-dir", results, "--runs", record["run_id"],
                  "--seconds", "2").exit_code == 0
    model, = json.loads((out / "manifest.json").read_text())["models"]
    assert (out / model["file"]).read_bytes() == (results / "models" / f"{record['run_id']}.onnx").read_bytes()
    assert model["size_format"] == "int8 onnx" and model["inputs"][0]["int8_macs"] == model["inputs"][0]["macs"] > 0
    probed = run_probe(probe_python, out / "probe.py", out, "--device", "testpi", "--threads", "1", "--seconds", "2",
                       "--max-seconds", "0.2", cwd=tmp_path)
    assert probed.returncode == 0, probed.stderr
    row, = json.loads((out / "latency-testpi.json").read_text())["rows"]
    assert row["check_ok"] and row["int8_macs"] == row["macs"] and row["roofline_ratio"] > 1
    assert row["latency_ratio_ci_low"] <= row["latency_ratio"] <= row["latency_ratio_ci_high"]
    assert row["latency_ratio"] < 1 and row["reference_latency_ms"] > 0  # tiny int8 against the lightweight model
    assert row["peak_gflops_int8"] > 0 and row["peak_gflops"] == pytest.approx(row["peak_gflops_int8"])


def test_import_refuses_other_schemas_and_another_machine_under_a_taken_tag(exported, results, tmp_path):
    invoke("probe", exported, "--device", "board", "--threads", "1", "--seconds", "2", "--max-seconds", "0.1")
    document = json.loads((exported / "latency-board.json").read_text())
    future = tmp_path / "future.json"
    future.write_text(json.dumps(document | {"schema_version": 2}))
    result = invoke("import-latency", future, "--results-dir", results)
    assert result.exit_code == 2 and "schema version 2" in one_line_error(result.output)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"rows": []}))
    result = invoke("import-latency", foreign, "--results-dir", results)
    assert result.exit_code == 2 and "not a latency file" in one_line_error(result.output)

    assert invoke("import-latency", exported / "latency-board.json", "--results-dir", results).exit_code == 0
    other = tmp_path / "other-board.json"
    other.write_text(json.dumps(document | {"rows": [r | {"env_cpu": "Cortex-A72"} for r in document["rows"]]}))
    result = invoke("import-latency", other, "--results-dir", results)
    assert result.exit_code == 2 and "already holds rows of another machine" in one_line_error(result.output)
    assert invoke("import-latency", other, "--results-dir", results, "--device", "pi4").exit_code == 0
