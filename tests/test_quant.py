"""``quant``: int8 through ONNX Runtime. The method run end to end on the toy corpus records the int8
graph's own MACs by precision (static QDQ: every convolution and matmul; dynamic: convolutions stay
float), its ONNX Runtime accuracy as the headline, and saves the int8 graph beside the float model;
the int8 graph stays close to the float model; quantizing twice is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import bench
from bench.measure import costs
from bench.cli.main import main
from bench.data.features import FeatureConfig
from bench.training.models import build_backbone
from bench.measure.onnx_io import export_onnx, graph_macs
from bench.measure.probe import ort_session
from bench.registry import METHODS, BenchError
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from conftest import TOY_DIM
from methods.quant import quantize_graph

TINY = ["--backbones", "convtransformer", "--datasets", "toy", "--presets", "tiny", "--folds", "1", "--seeds", "0", "--epochs", "1", "--quiet",
        "--defer-latency"]


@pytest.fixture(scope="module")
def quant_runs(tmp_path_factory) -> tuple[dict, object]:
    """Real ``quant`` runs (static and dynamic) and ``hrf+quant`` through the CLI, with their results folder."""
    results, cache = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cache")
    for args in (["--methods", "quant,hrf+quant"], ["--methods", "quant", "-p", "quant.scheme=dynamic"]):
        done = CliRunner().invoke(main, ["run", *args, "--results-dir", str(results), "--cache-dir", str(cache), *TINY],
                                  catch_exceptions=False)
        assert done.exit_code == 0, done.output
    records = {}
    for path in (results / "records").glob("*.json"):
        record = json.loads(path.read_text())
        records[f"{record['method']}-{record['quant_scheme']}"] = record
    return records, results


def test_static_quant_makes_every_multiply_accumulate_int8_and_ships_the_onnx_accuracy(quant_runs):
    records, results = quant_runs
    record = records["quant-static"]
    plain = build_backbone("convtransformer", "tiny", TOY_DIM, 4)
    float_macs = costs.count_macs(plain, TOY_DIM, record["input_frames"])  # independent count of the same shapes
    assert record["quant_scheme"] == "static" and record["quant_calibration_utterances"] > 0
    assert record["int8_macs"] == record["macs"] == float_macs and record["float_macs"] == 0
    assert record["flops"] == 2 * record["macs"]
    assert record["accuracy_runtime"] == "onnxruntime int8" and record["onnx_status"] == "ok"
    assert record["ua"] == record["ua_onnx"] and 0 <= record["ua_torch"] <= 1
    assert record["size_format"] == "int8 onnx" and record["size_bytes"] == record["size_int8_bytes"]
    graph = results / "models" / f"{record['run_id']}.onnx"
    assert graph.stat().st_size == record["size_bytes"]
    saved = torch.load(results / "models" / f"{record['run_id']}.pt", weights_only=True)
    assert not any(isinstance(v, bytes) for v in saved.values())  # the .pt is the float model; int8 lies beside
    assert bench.load_deployed(record["run_id"], results).graph == graph.read_bytes()  # and loads with it
    assert graph_macs(graph.read_bytes(), TOY_DIM, record["input_frames"])["int8_macs"] == float_macs
    # the validation score is the int8 graph's too (as a tune trial scores it), not the float model's
    from bench.measure.onnx_io import predict_graph
    from bench.execution.spec import RunSpec
    from bench.execution.workspace import Workspace
    from bench.training.evaluate import scores_of
    spec = RunSpec(method="quant", backbone="convtransformer", preset="tiny", dataset="toy", fold=record["fold"],
                   seed=record["seed"])
    data = Workspace(results.parent / "unused-cache", progress=False).fold_data(spec)
    assert record["val_ua"] == pytest.approx(scores_of(predict_graph(graph.read_bytes(), data.val), data.val, 4)["ua"])


def test_dynamic_quant_leaves_the_convolutions_and_attention_products_float(quant_runs):
    records, _ = quant_runs
    static, dynamic = records["quant-static"], records["quant-dynamic"]
    assert dynamic["quant_scheme"] == "dynamic" and dynamic["quant_calibration_utterances"] == 0
    assert dynamic["macs"] == static["macs"] and dynamic["int8_macs"] + dynamic["float_macs"] == dynamic["macs"]
    # Weights-only int8: what multiplies two activations (the conv front-end's input aside, attention's
    # q k^T and weights x v: 2 T^2 d per layer) and the convolutions stay float.
    model = build_backbone("convtransformer", "tiny", TOY_DIM, 4).eval()
    outputs = []
    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.MultiheadAttention)
    hooks = [m.register_forward_hook(lambda m, args, out: outputs.append((m, args[0], out)))
             for m in model.modules() if isinstance(m, kinds)]
    with torch.inference_mode():
        model(*costs.example_input(TOY_DIM, dynamic["input_frames"]))
    for hook in hooks:
        hook.remove()
    conv = sum(out.numel() * m.weight[0].numel() for m, _, out in outputs if not isinstance(m, kinds[2]))
    attention = sum(2 * x.shape[1] ** 2 * x.shape[2] for m, x, _ in outputs if isinstance(m, kinds[2]))
    assert conv > 0 and attention > 0 and dynamic["float_macs"] == conv + attention


def test_composed_quant_quantizes_the_previous_methods_deploy_model(quant_runs):
    records, results = quant_runs
    composed = records["hrf+quant-static"]
    assert composed["quant_source"] == "previous method's deploy model" and composed["hrf_expansion_ratio"] > 0
    assert composed["int8_macs"] == records["quant-static"]["int8_macs"]  # deHRF: the plain tiny model's shapes
    assert (results / "models" / f"{composed['run_id']}.onnx").exists()


@pytest.mark.parametrize("scheme", ["static", "dynamic"])
def test_int8_graph_stays_close_to_the_float_model(scheme, tmp_path):
    torch.manual_seed(0)
    features = FeatureConfig()
    model = build_backbone("convtransformer", "lightweight", features.dim, 4).eval()
    export_onnx(model, features.dim, tmp_path / "float.onnx")
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(int(n), features.dim, generator=generator) for n in (150, 300, 420, 501)]
    graph = quantize_graph(tmp_path / "float.onnx", scheme, calibration)
    session = ort_session(graph, threads=1)
    worst = 0.0
    for frames, length in ((301, 301), (501, 333)):
        x, _ = costs.example_input(features.dim, frames)
        lengths = torch.tensor([length])
        with torch.inference_mode():
            expected = model(x, lengths).numpy()
        got = session.run(None, {"features": x.numpy(), "lengths": lengths.numpy()})[0]
        assert not np.array_equal(got, expected)  # really quantized
        worst = max(worst, float(np.abs(got - expected).max() / np.abs(expected).max()))
    assert worst < 0.1, worst
    assert len(graph) < 0.4 * (tmp_path / "float.onnx").stat().st_size


def test_static_graph_masks_the_front_ends_padding_in_uint8(tmp_path):
    """The convolutional front-end's padding masks run on the uint8 activations between its
    convolutions (no dequantize -> float Where -> requantize island, no float ReLU after them), and the
    graph still follows the float model on a padded utterance, where the masks select something."""
    import onnx

    torch.manual_seed(0)
    features = FeatureConfig()
    model = build_backbone("convtransformer", "lightweight", features.dim, 4).eval()
    export_onnx(model, features.dim, tmp_path / "float.onnx")
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(int(n), features.dim, generator=generator) for n in (150, 300, 501)]
    graph = quantize_graph(tmp_path / "float.onnx", "static", calibration)
    nodes = onnx.ModelProto.FromString(graph).graph.node
    producers = {out: node.op_type for node in nodes for out in node.output}
    masks = [node for node in nodes if node.op_type == "Where" and producers.get(node.input[2]) == "QuantizeLinear"]
    assert len(masks) >= 2  # one after each front-end convolution
    assert not any(node.op_type == "Where" and producers.get(node.input[2]) == "DequantizeLinear" for node in nodes)
    assert not any(node.op_type == "Relu" and producers.get(node.input[0]) in ("Where", "DequantizeLinear")
                   for node in nodes)
    session = ort_session(graph, threads=1)
    x, _ = costs.example_input(features.dim, 501)
    lengths = torch.tensor([287])
    with torch.inference_mode():
        expected = model(x, lengths).numpy()
    got = session.run(None, {"features": x.numpy(), "lengths": lengths.numpy()})[0]
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 0.1


def test_a_graph_shipped_before_the_last_component_is_refused(tmp_path, monkeypatch):
    """What a method ships as its own ONNX graph cannot be trained further: a method that ships one but is
    composed before another (not declared ``must_be_last``, so no grid caught it) fails with one line."""
    class GraphFirst(METHODS.get("quant").obj):
        must_be_last = False

    monkeypatch.setitem(METHODS._entries, "graph-first", replace(METHODS.get("quant"), name="graph-first", obj=GraphFirst))
    spec = RunSpec("graph-first+hrf", "convtransformer", "tiny", "toy", 1, 0, TrainConfig(epochs=1))
    with pytest.raises(BenchError, match="graph-first ships its own ONNX graph.*must come last"):
        execute(spec, Workspace(tmp_path, progress=False, defer_latency=True))
