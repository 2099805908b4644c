"""A third-party plug-in package, end to end: a throw-away package with methods (the plug-in
guide's "Write your own method" code, docs/plugins.md; a variant of it that starts from the large model, and one that ships its
own ONNX graph) and a dataset, each registered by an entry point in its pyproject.toml, installed with
pip into a folder of its own; then `bench list` shows them, `bench run` runs them, the leaderboard of
`bench report` ranks them, and `bench export` and `bench probe` ship and time them, with nothing in the
harness knowing their names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import pytest

from bench.api import load_model
from bench.measure.costs import count_params

ROOT = Path(__file__).parent.parent

DATASET = '''"""blobs: random feature frames whose class shifts a band of dimensions (8 speakers x 12)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data.corpus import Corpus, Utterance, speaker_folds
from bench.registry import DATASETS, param

CLASSES = ["calm", "tense", "sad"]


@dataclass
class BlobParams:
    shift: float = param(1.0, "class offset (larger = easier)", low=0.0)


@DATASETS.register("blobs", "synthetic feature blobs from a third-party package", params=BlobParams)
def load(root, cache_dir, params):
    folder = Path(cache_dir) / f"blobs-{params.shift}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    utterances = []
    for speaker in range(8):
        for i in range(12):
            frames = rng.normal(size=(int(rng.integers(40, 80)), 12)).astype(np.float32)
            frames[:, 4 * (i % 3): 4 * (i % 3) + 4] += params.shift
            path = folder / f"{speaker}_{i}.npy"
            np.save(path, frames)
            utterances.append(Utterance(f"{speaker}_{i}", CLASSES[i % 3], f"spk{speaker}", features=path))
    speakers = sorted({u.speaker for u in utterances})
    return Corpus("blobs", CLASSES, utterances, speaker_folds(utterances, [speakers[k::4] for k in range(4)]),
                  fingerprint=f"blobs-{params.shift}")
'''

# Starts from the large (teacher-preset) model, declared on the interface: the harness trains and caches it
FROM_LARGE = '''"""ffn-magnitude-large: the plug-in guide's FFN magnitude pruning, applied to the trained large model."""
from bench.registry import METHODS

from hrf_bench_example.ffn_magnitude import FFNMagnitude, FFNMagnitudeParams


@METHODS.register("ffn-magnitude-large", "FFN magnitude pruning of the trained large model, then fine-tuning",
                  params=FFNMagnitudeParams)
class FFNMagnitudeLarge(FFNMagnitude):
    uses_large_model = True

    def build(self, ctx, start):
        return start if start is not None else ctx.large_model()
'''

# Ships its own ONNX graph (ONNX Runtime's offline basic graph optimizations of the float export)
OWN_GRAPH = '''"""ort-optimized: the plain model's ONNX export, optimized offline by ONNX Runtime, is what ships."""
import tempfile
from pathlib import Path

import onnxruntime as ort

from bench.method import Deployed, Method
from bench.measure.onnx_io import export_onnx
from bench.registry import METHODS


@METHODS.register("ort-optimized", "the plain model's ONNX graph with ONNX Runtime's basic optimizations baked in")
class OrtOptimized(Method):
    must_be_last = True  # a graph cannot be trained further
    trains_at = "plain"
    record_fields = {"graph_nodes_saved": "ONNX nodes the optimizations removed"}

    def build(self, ctx, start):
        return start if start is not None else ctx.trained_model(ctx.spec.preset)

    def train(self, model, ctx):
        return model

    def deploy(self, model, ctx):
        import onnx

        with tempfile.TemporaryDirectory() as folder:
            plain, optimized = Path(folder) / "plain.onnx", Path(folder) / "optimized.onnx"
            export_onnx(model.eval(), ctx.data.input_dim, plain)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(optimized)
            ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
            before = len(onnx.load(str(plain)).graph.node)
            graph = optimized.read_bytes()
        self.saved = before - len(onnx.ModelProto.FromString(graph).graph.node)
        return Deployed(model, graph)

    def record(self):
        return {"graph_nodes_saved": self.saved}
'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "hrf-bench-example"
version = "0.1.0"

[project.entry-points."hrf_bench.methods"]
ffn-magnitude = "hrf_bench_example.ffn_magnitude"
ffn-magnitude-large = "hrf_bench_example.from_large"
ort-optimized = "hrf_bench_example.own_graph"

[project.entry-points."hrf_bench.datasets"]
blobs = "hrf_bench_example.blobs"
'''


def readme_method() -> str:
    """The method code of the plug-in guide's "Write your own method" section."""
    section = ROOT.joinpath("docs", "plugins.md").read_text().split("### Write your own method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The package built and installed by pip (``--target``: not into the test environment), and the
    environment under which ``bench`` processes see it."""
    source = tmp_path_factory.mktemp("plugin-source")
    package = source / "hrf_bench_example"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ffn_magnitude.py").write_text(readme_method())
    (package / "blobs.py").write_text(DATASET)
    (package / "from_large.py").write_text(FROM_LARGE)
    (package / "own_graph.py").write_text(OWN_GRAPH)
    (source / "pyproject.toml").write_text(PYPROJECT)
    site = tmp_path_factory.mktemp("plugin-site")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    assert (site / "hrf_bench_example" / "ffn_magnitude.py").exists()
    path = os.pathsep.join([str(site), str(ROOT)])
    return dict(os.environ, PYTHONPATH=path, HRF_BENCH_CACHE=str(tmp_path_factory.mktemp("plugin-cache")),
                OMP_NUM_THREADS="1")


def bench(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "bench", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_installed_package_is_listed_run_and_ranked(installed, tmp_path):
    listed = bench(installed, "list", cwd=tmp_path).stdout
    assert "  ffn-magnitude: magnitude pruning of FFN hidden units" in listed
    assert "keep: float = 0.5 in (0.0, 1.0]" in listed
    assert "  blobs: synthetic feature blobs from a third-party package" in listed

    bench(installed, "run", "--methods", "baseline,ffn-magnitude", "--datasets", "blobs", "--presets", "tiny",
          "--folds", "1,2", "--seeds", "0", "--epochs", "3", "-p", "ffn-magnitude.keep=0.25", "--quiet",
          cwd=tmp_path)
    runs = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert sorted(runs["method"]) == ["baseline", "baseline", "ffn-magnitude", "ffn-magnitude"]
    assert set(runs["dataset"]) == {"blobs"} and runs["ua"].notna().all()
    by_method = runs.groupby("method")
    pruned, plain = by_method["params"].first()["ffn-magnitude"], by_method["params"].first()["baseline"]
    assert pruned < plain and runs.loc[runs["method"] == "ffn-magnitude", "ffn_keep"].eq(0.25).all()
    assert by_method["macs"].first()["ffn-magnitude"] < by_method["macs"].first()["baseline"]
    # the pruned model was saved with its changed layer shapes (torch modules: no plug-in import needed)
    rid = runs.loc[runs["method"] == "ffn-magnitude", "run_id"].iloc[0]
    assert count_params(load_model(rid, tmp_path / "results")) == pruned

    bench(installed, "report", "--light-preset", "tiny", "--quiet", cwd=tmp_path)
    summary = pd.read_csv(tmp_path / "results" / "tables" / "summary.csv")
    ranked = summary[summary["dataset"] == "blobs"]
    assert sorted(ranked["method"]) == ["baseline", "ffn-magnitude"]
    assert ranked["headline_mean"].is_monotonic_decreasing  # ranked by the dataset's headline metric
    page = (tmp_path / "reports" / "index.html").read_text()
    board = re.search(r'<table class="leaderboard" id="board-blobs".*?</table>', page, re.S)
    assert board, "no leaderboard for the plug-in dataset"
    order = re.findall(r'<tr data-dataset="blobs"[^>]*data-method="([^"]+)"', board.group(0))
    assert order == list(ranked["method"])  # the page ranks them as the summary does
    assert json.loads((tmp_path / "results" / "records" / f"{rid}.json").read_text())["method"] == "ffn-magnitude"


def test_methods_from_the_large_model_and_with_their_own_graph_need_no_harness_change(installed, tmp_path):
    """What the harness needs is declared on the interface: ``uses_large_model`` (the large model is
    trained, cached and recorded as the teacher) and a :class:`bench.method.Deployed` graph (scored,
    costed, saved, exported and probed as what ships)."""
    # the float exports' check is the other test's business: here only the graph that ships is scored
    bench(dict(installed, HRF_BENCH_ONNX_CHECK="0"), "run", "--methods", "ffn-magnitude-large,ort-optimized",
          "--datasets", "blobs", "--presets", "tiny", "--folds", "1", "--seeds", "0", "--epochs", "2",
          "-p", "ffn-magnitude-large.keep=0.25", "--quiet", cwd=tmp_path)
    results = tmp_path / "results"
    runs = pd.read_csv(results / "runs.csv").set_index("method")
    assert sorted(runs.index) == ["ffn-magnitude-large", "ort-optimized"] and (runs["status"] == "ok").all()
    large = runs.loc["ffn-magnitude-large"]
    assert large["teacher_preset"] == "large" and large["ffn_keep"] == 0.25 and large["reused_fit_flops"] > 0
    document = torch.load(results / "models" / f"{large['run_id']}.pt", weights_only=True)
    assert document["preset"] == "large" and document["changes"]  # the large model's build, its FFNs pruned
    own = runs.loc["ort-optimized"]
    graph = results / "models" / f"{own['run_id']}.onnx"
    assert own["accuracy_runtime"] == "onnxruntime" and own["size_format"] == "onnx"
    assert own["size_bytes"] == graph.stat().st_size and own["ua"] == own["ua_onnx"] and own["latency_runtime"] == "onnxruntime"
    assert own["graph_nodes_saved"] >= 0
    assert not (results / "models" / f"{large['run_id']}.onnx").exists()  # the module's own export ships

    bench(installed, "report", "--light-preset", "tiny", "--quiet", cwd=tmp_path)
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert set(summary.loc[summary["dataset"] == "blobs", "method"]) == set(runs.index)

    bench(installed, "export", "--out", str(tmp_path / "ship"), "--seconds", "2", cwd=tmp_path)
    models = {m["method"]: m for m in json.loads((tmp_path / "ship" / "manifest.json").read_text())["models"]}
    assert set(models) == set(runs.index)
    assert (tmp_path / "ship" / models["ort-optimized"]["file"]).read_bytes() == graph.read_bytes()
    assert models["ort-optimized"]["size_format"] == "onnx"
    bench(installed, "probe", str(tmp_path / "ship"), "--device", "box", "--threads", "1", "--seconds", "2",
          "--max-seconds", "0.2", cwd=tmp_path)
    rows = json.loads((tmp_path / "ship" / "latency-box.json").read_text())["rows"]
    assert {r["run_id"] for r in rows} == set(runs["run_id"]) and all(r["latency_ms"] > 0 for r in rows)
