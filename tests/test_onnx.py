"""ONNX export round trip for every registered backbone x method deploy model: ONNX Runtime's logits
equal PyTorch's to 1e-4 at lengths other than the traced one, padded too; the graph's MAC count equals
PyTorch's; a float graph whose test predictions disagree with PyTorch's is a failed export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.measure.costs import count_macs, example_input
from bench.training.models import build_backbone
from bench.measure.onnx_io import EXPORT_FRAMES, export_onnx, graph_macs, onnx_figures
from bench.measure.probe import ort_session
from bench.registry import BACKBONES, METHODS
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from conftest import TOY_DIM

PAIRS = [(backbone, method) for backbone in BACKBONES.names() for method in METHODS.names()]
# Every model stays at the tiny preset (exports of larger ones take minutes): methods that start from
# the large model start from the tiny one, and those that shrink it to a budget halve it.
HALF_BUDGET = {"ratio": "0.5"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    workspace = Workspace(tmp_path_factory.mktemp("onnx-cache"), progress=False, defer_latency=True)
    workspace.onnx_check = True  # every run's float export evaluated against PyTorch (HRF_BENCH_ONNX_CHECK=1)
    return workspace


@pytest.fixture(scope="module")
def graph_cache(request) -> Path | None:
    """Exported graphs persist across test sessions here (keyed by architecture and source code)."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: export everything
    return cache.mkdir("onnx-graphs") if cache is not None else None


def onnx_vs_torch(model: torch.nn.Module, path: Path, frames: int, length: int) -> float:
    features, _ = example_input(TOY_DIM, frames)
    lengths = torch.tensor([length])
    with torch.inference_mode():
        expected = model(features, lengths).numpy()
    actual = ort_session(path, threads=1).run(None, {"features": features.numpy(), "lengths": lengths.numpy()})[0]
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)))


@pytest.mark.slow
@pytest.mark.parametrize("backbone, method", PAIRS)
def test_deploy_model_round_trips_through_onnx(backbone, method, workspace, graph_cache, tmp_path):
    takes_ratio = any(info.name == "ratio" for info in METHODS.get(method).params)
    spec = RunSpec(method=method, backbone=backbone, preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=3), teacher_preset="tiny",
                   method_params={method: HALF_BUDGET} if takes_ratio else {})
    record = execute(spec, workspace)
    shipped = record["_deploy_model"]
    model = shipped.model.eval()
    assert record["onnx_status"] == "ok" and (shipped.graph is not None) == (method == "quant")
    if method != "quant":  # int8 may change a few predictions: what matters is that it ships with its own scores
        assert record["onnx_prediction_mismatch"] <= 0.005 and record["ua_onnx"] == pytest.approx(record["ua"], abs=0.02)
    path = tmp_path / "model.onnx"
    reported = export_onnx(model, TOY_DIM, path, check_frames=(40, 120), graph_cache=graph_cache)
    assert reported <= 1e-4
    # the record's MACs (PyTorch's counter, or the int8 graph's) equal the exported graph's own count
    assert graph_macs(path.read_bytes(), TOY_DIM, record["input_frames"])["macs"] == record["macs"]
    assert record["flops"] == 2 * record["macs"]
    assert onnx_vs_torch(model, path, 57, 57) <= 1e-4  # neither the traced length nor a checked one
    assert onnx_vs_torch(model, path, 200, 200) <= 1e-4  # a multiple of every window and merge size
    assert onnx_vs_torch(model, path, 3 * EXPORT_FRAMES, 100) <= 1e-4  # mostly padding


def test_a_graph_reused_for_another_model_of_the_same_architecture_carries_that_models_weights(tmp_path):
    torch.manual_seed(1)
    first = build_backbone("convtransformer", "tiny", TOY_DIM, 4).eval()
    torch.manual_seed(2)
    second = build_backbone("convtransformer", "tiny", TOY_DIM, 4).eval()
    export_onnx(first, TOY_DIM, tmp_path / "first.onnx", check_frames=(40, 120))
    export_onnx(second, TOY_DIM, tmp_path / "second.onnx", check_frames=(40, 120))
    assert onnx_vs_torch(second, tmp_path / "second.onnx", 90, 45) <= 1e-4
    assert onnx_vs_torch(first, tmp_path / "second.onnx", 90, 45) > 1e-3  # not the first model's weights


@pytest.mark.parametrize("backbone", [b if b == "convtransformer" else pytest.param(b, marks=pytest.mark.slow)
                                      for b in BACKBONES.names()])  # other exports take minutes on 2 busy cores
def test_the_graphs_own_mac_count_equals_pytorchs(backbone, graph_cache, tmp_path):
    model = build_backbone(backbone, "tiny", TOY_DIM, 4).eval()
    export_onnx(model, TOY_DIM, tmp_path / "model.onnx", check_frames=(40, 120), graph_cache=graph_cache)
    for frames in (64, 301):
        counted = graph_macs((tmp_path / "model.onnx").read_bytes(), TOY_DIM, frames)
        assert counted == {"int8_macs": 0, "float_macs": count_macs(model, TOY_DIM, frames),
                           "macs": count_macs(model, TOY_DIM, frames)}


def test_a_float_graph_whose_predictions_differ_from_pytorch_is_a_failed_export(workspace, tmp_path):
    spec = RunSpec(method="baseline", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0)
    data = workspace.fold_data(spec)
    torch.manual_seed(1)
    shipped = build_backbone("convtransformer", "tiny", TOY_DIM, 4).eval()
    torch.manual_seed(2)
    other = build_backbone("convtransformer", "tiny", TOY_DIM, 4).eval()  # e.g. weights bound from a stale file
    export_onnx(shipped, TOY_DIM, tmp_path / "model.onnx", check_frames=(40, 120))
    graph = (tmp_path / "model.onnx").read_bytes()
    figures, headline = onnx_figures(graph, shipped, data, 64, shipped=False)
    assert figures["onnx_status"] == "ok" and figures["onnx_prediction_mismatch"] == 0 and headline is None
    figures, _ = onnx_figures(graph, other, data, 64, shipped=False)
    assert figures["onnx_prediction_mismatch"] > 0.005
    assert figures["onnx_status"].startswith("failed: the ONNX export's predictions differ from PyTorch's on")


def test_a_low_rank_models_recorded_macs_equal_its_graphs_count(workspace, graph_cache, tmp_path):
    spec = RunSpec(method="lowrank", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=1), teacher_preset="tiny", method_params={"lowrank": HALF_BUDGET})
    record = execute(spec, workspace)
    export_onnx(record["_deploy_model"].model, TOY_DIM, tmp_path / "model.onnx", check_frames=(40, 120),
                graph_cache=graph_cache)
    counted = graph_macs((tmp_path / "model.onnx").read_bytes(), TOY_DIM, record["input_frames"])
    assert record["macs"] == counted["macs"] == record["float_macs"] and record["flops"] == 2 * counted["macs"]
    assert record["onnx_status"] == "ok" and record["onnx_prediction_mismatch"] <= 0.005


def test_float_exports_are_checked_unless_switched_off(tmp_path, monkeypatch):
    monkeypatch.delenv("HRF_BENCH_ONNX_CHECK", raising=False)
    assert Workspace(tmp_path, progress=False).onnx_check  # the default: every run's export is checked
    monkeypatch.setenv("HRF_BENCH_ONNX_CHECK", "0")
    assert not Workspace(tmp_path, progress=False).onnx_check
