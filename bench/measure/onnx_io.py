"""ONNX export of deploy models for one utterance (batch 1) of any length, checked against PyTorch.

torch 2.14's TorchScript exporter bakes the time length into ``nn.MultiheadAttention``'s reshapes, so
the export goes through ``torch.export`` (the dynamo exporter, with onnxscript), with a symbolic time
axis. The batch stays 1, as on a device classifying one utterance: a symbolic batch doubles the
export time (every shape expression gains a symbol). Exports take seconds to minutes per model, so
graphs are cached per architecture: a model whose module tree, tensor names, shapes and
dtypes match an earlier export reuses its graph with its own weights bound in (the graph is exported
unoptimized, so every weight is an initializer named after its state-dict entry; ONNX Runtime folds
constants when it loads it). The cache lives in this process and, given ``graph_cache``, on disk,
keyed also by the source code of the model's modules and of this exporter, and the torch version. Every exported file is
checked against PyTorch at two lengths; a reused graph that failed the check is exported afresh.

It also counts an ONNX graph's multiply-accumulates by precision (:func:`graph_macs`), which is how
int8 models (``quant``) are costed, and evaluates a graph in ONNX Runtime on a test split
(:func:`evaluate_graph`): the accuracy of the artifact that ships.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.measure.costs import example_input
from bench.measure.probe import CHECK_ATOL, ProbeError, ort_session
from bench.registry import BenchError
from bench.training.evaluate import predict, scores_of
from bench.training.metrics import declared_scores

log = logging.getLogger("bench")
INPUT_NAMES, OUTPUT_NAMES = ["features", "lengths"], ["logits"]
# The traced example: prime frame count and (padded) length, so that no length-dependent branch
# (padding to a window multiple, say) is traced in its special case.
EXPORT_FRAMES, EXPORT_LENGTH = 227, 163
MAX_PREDICTION_MISMATCH = 0.005  # a float export may disagree with PyTorch on at most this share of utterances
_graphs: dict[str, bytes] = {}  # architecture fingerprint -> serialized ModelProto (this process)


def architecture(model: nn.Module, input_dim: int) -> str:
    """Fingerprint of what the exported graph depends on besides weight values."""
    tensors = [(n, tuple(t.shape), str(t.dtype)) for n, t in (*model.named_parameters(), *model.named_buffers())]
    digest = hashlib.sha1(repr((repr(model), tensors, input_dim, torch.__version__)).encode())
    for source in [__file__, *sorted({inspect.getsourcefile(type(m)) or "" for m in model.modules()})]:
        digest.update(Path(source).read_bytes() if source else b"")
    return digest.hexdigest()


def _cached_graph(key: str, graph_cache: Path | None) -> bytes | None:
    if key not in _graphs and graph_cache is not None and (graph_cache / f"{key}.onnx").exists():
        _graphs[key] = (graph_cache / f"{key}.onnx").read_bytes()
    return _graphs.get(key)


def _store_graph(key: str, graph: bytes, graph_cache: Path | None) -> None:
    _graphs[key] = graph
    if graph_cache is not None:
        graph_cache.mkdir(parents=True, exist_ok=True)
        tmp = graph_cache / f".{key}.tmp{os.getpid()}"
        tmp.write_bytes(graph)
        os.replace(tmp, graph_cache / f"{key}.onnx")


def _torch_export(model: nn.Module, input_dim: int):
    """The ONNX ModelProto of ``model`` with symbolic frames (raises on unsupported models)."""
    features, _ = example_input(input_dim, EXPORT_FRAMES)
    lengths = torch.tensor([EXPORT_LENGTH])  # shorter than the input: padding masks are traced
    frames = torch.export.Dim("frames", min=16, max=1_000_000)
    with _quiet_exporter():
        program = torch.onnx.export(model, (features, lengths), dynamo=True, optimize=False, verbose=False,
                                    input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                    dynamic_shapes=({1: frames}, None))
        return program.model_proto  # serializing runs onnx_ir passes that log too


# modules whose warnings (on optional packages, deprecations inside the exporter) the export silences
EXPORTER_MODULES = r"(torch\.(onnx|export|_dynamo|_export|fx|_subclasses)|onnxscript|onnx_ir|onnx)(\.|$)"


@contextmanager
def _quiet_exporter():
    """The exporter logs and prints its steps and warns about optional packages: keep output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):  # its passes print() their progress
            # only what the exporter's own modules warn about; a warning about our model still shows
            warnings.filterwarnings("ignore", module=EXPORTER_MODULES)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _bind_weights(graph: bytes, model: nn.Module):
    """The cached graph with ``model``'s tensors as initializers (None if a shape differs)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(graph)
    tensors = {n: t.detach().cpu() for n, t in (*model.named_parameters(), *model.named_buffers())}
    for initializer in proto.graph.initializer:
        tensor = tensors.get(initializer.name)
        if tensor is None:  # a constant of the graph, not a weight (the round-trip check has the last word)
            continue
        if tuple(initializer.dims) != tuple(tensor.shape):
            return None
        initializer.CopyFrom(numpy_helper.from_array(tensor.numpy(), initializer.name))
    return proto


def _write(proto, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)


def export_onnx(model: nn.Module, input_dim: int, path: Path, check_frames: tuple[int, int] = (201, 501),
                what: str = "the deploy model", graph_cache: Path | None = None) -> float:
    """Write ``model`` as ONNX to ``path`` and return the largest |ONNX Runtime - PyTorch| difference
    over ``check_frames`` (at least 1e-4 apart is an error). Unsupported models raise a one-line
    BenchError naming ``what``."""
    model = model.eval()
    key = architecture(model, input_dim)
    graph = _cached_graph(key, graph_cache)
    if graph is not None:
        proto = _bind_weights(graph, model)
        if proto is not None:
            _write(proto, path)
            difference = round_trip_difference(model, path, input_dim, check_frames)
            if difference <= CHECK_ATOL:
                return difference
            log.debug("reused graph differs by %.2g for %s; exporting afresh", difference, what)
    try:
        proto = _torch_export(model, input_dim)
    except Exception as error:  # torch.export raises many types; the user needs the first line
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise BenchError(f"cannot export {what} to ONNX ({type(error).__name__}: {reason[:200]}); "
                         f"measure it with --runtimes torch-eager") from None
    _write(proto, path)
    difference = round_trip_difference(model, path, input_dim, check_frames)
    if difference > CHECK_ATOL:
        path.unlink()
        raise BenchError(f"ONNX export of {what} differs from PyTorch by {difference:.2g} (> {CHECK_ATOL}); "
                         f"measure it with --runtimes torch-eager")
    _store_graph(key, proto.SerializeToString(), graph_cache)
    return difference


def check_inputs(input_dim: int, check_frames: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An utterance of the first length, and one padded to the second (valid for two thirds of it)."""
    short, long = check_frames
    return [example_input(input_dim, short), (example_input(input_dim, long)[0], torch.tensor([long * 2 // 3]))]


def round_trip_difference(model: nn.Module, path: Path, input_dim: int, check_frames: tuple[int, int]) -> float:
    """Largest |ONNX Runtime - PyTorch| logit difference over :func:`check_inputs`."""
    try:
        session = ort_session(path, threads=1)
    except ProbeError as error:
        raise BenchError(str(error)) from None
    worst = 0.0
    with torch.inference_mode():
        for features, lengths in check_inputs(input_dim, check_frames):
            expected = model(features, lengths).numpy()
            actual = session.run(None, {"features": features.numpy(), "lengths": lengths.numpy()})[0]
            worst = max(worst, float(np.max(np.abs(actual - expected))))
    return worst


# Nodes that multiply-accumulate, and those among them that do it in integers.
INTEGER_OPS = {"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat"}
FLOAT_OPS = {"MatMul", "Gemm", "Conv"}


def graph_macs(graph: bytes, input_dim: int, frames: int) -> dict:
    """See :func:`_graph_macs`; a run asks twice for its int8 graph (latency's roofline and the record),
    so the last few answers are remembered (a pass over the graph takes about a second)."""
    return dict(_graph_macs(graph, input_dim, frames))


@functools.lru_cache(maxsize=4)
def _graph_macs(graph: bytes, input_dim: int, frames: int) -> dict:
    """Multiply-accumulates of one pass over ``frames`` frames of the ONNX ``graph``, split by the
    precision its nodes compute in: ``int8_macs`` (integer nodes, and float MatMul/Gemm/Conv whose
    data inputs both come from DequantizeLinear, which ONNX Runtime runs as integer kernels: the QDQ
    format) and ``float_macs`` (the rest). Shapes are read by running the graph once with every such
    node's operands exposed as outputs, so they are exact at this length."""
    import onnx

    proto = onnx.ModelProto.FromString(graph)
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    nodes = [n for n in proto.graph.node if n.op_type in INTEGER_OPS | FLOAT_OPS]
    known = {v.name for v in proto.graph.output}
    wanted = list(dict.fromkeys(name for n in nodes for name in (n.input[0], n.input[1], n.output[0])))
    for name in wanted:
        if name not in known:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    names = [o.name for o in proto.graph.output]
    session = _plain_session(proto.SerializeToString())
    features, lengths = example_input(input_dim, frames)
    values = dict(zip(names, session.run(names, {"features": features.numpy(), "lengths": lengths.numpy()})))
    shapes = {name: values[name].shape for name in wanted}
    constant = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    int8 = float_ = 0
    for node in nodes:
        macs = _node_macs(node, shapes, constant)
        data = [node.input[0], node.input[1]] if node.op_type in FLOAT_OPS else []
        if node.op_type in INTEGER_OPS or all(producers.get(name) == "DequantizeLinear" for name in data):
            int8 += macs
        else:
            float_ += macs
    return {"int8_macs": int8, "float_macs": float_, "macs": int8 + float_}


def _node_macs(node, shapes: dict, constant: dict) -> int:
    """MACs of one MatMul/Gemm/Conv-like node from its operand and output shapes."""
    out = int(np.prod(shapes[node.output[0]]))
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        weight = shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
        return out * int(np.prod(weight[1:]))  # each output: (in channels / groups) x kernel MACs
    first = shapes[node.input[0]]
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return out * int(first[0] if trans_a else first[-1])
    return out * int(first[-1])  # every MatMul variant: (..., M, K) x (..., K, N)


def _plain_session(graph: bytes):
    """A 1-thread session without graph optimizations, so that every node of ``graph`` runs as written."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def predict_graph(graph: bytes | Path, split) -> np.ndarray:
    """Class probabilities ``(N, C)`` of the ONNX model on every utterance of ``split``, one at a
    time at its own length (batch 1, as on a device)."""
    try:
        session = ort_session(graph, threads=1)
    except ProbeError as error:
        raise BenchError(str(error)) from None
    rows = []
    for features in split.features:
        logits = session.run(None, {"features": features[None].numpy().astype(np.float32),
                                    "lengths": np.array([features.shape[0]], dtype=np.int64)})[0][0]
        exp = np.exp(logits - logits.max())
        rows.append(exp / exp.sum())
    return np.stack(rows)


def shipped_figures(model: nn.Module, data, frames: int, graph_cache: Path | None,
                    graph: bytes | None = None) -> tuple[dict, dict | None]:
    """Record figures of the ONNX model that ships for ``model``: the ``graph`` its method ships (quant's
    int8 one), or else its float export (a failed export is recorded as ``onnx_status: "failed: ..."``);
    see :func:`onnx_figures`."""
    if graph is not None:
        return onnx_figures(graph, model, data, frames, shipped=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        try:
            export_onnx(model, data.input_dim, path, graph_cache=graph_cache)
        except BenchError as error:
            return {"onnx_status": f"failed: {error}"}, None
        return onnx_figures(path.read_bytes(), model, data, frames, shipped=False)


def onnx_figures(graph: bytes, model: nn.Module, data, frames: int, shipped: bool) -> tuple[dict, dict | None]:
    """``graph`` (an ONNX model of ``model``) evaluated in ONNX Runtime on the test split:
    ``onnx_status``, ``ua_onnx``, ``<headline>_onnx`` and the share of test utterances whose prediction
    differs from PyTorch's (``onnx_prediction_mismatch``). A float export that differs on more than
    0.5 % is a failed export. For a graph the method ships in the module's place (``shipped``: quant's
    int8 graph), its MACs by precision and size are the record's, and its test scores (returned second)
    are the headline, because it is what ships; else None."""
    probs = predict_graph(graph, data.test)
    mismatch = float(np.mean(probs.argmax(1) != predict(model, data.test)[0].argmax(1)))
    scores = scores_of(probs, data.test, data.num_classes)
    headline = data.corpus.headline_metric
    figures = {"onnx_status": "ok", "onnx_prediction_mismatch": mismatch, "ua_onnx": scores["ua"],
               f"{headline}_onnx": declared_scores(scores, (headline,), data.corpus.classes)[headline]}
    if not shipped:
        if mismatch > MAX_PREDICTION_MISMATCH:
            figures["onnx_status"] = (f"failed: the ONNX export's predictions differ from PyTorch's on {mismatch:.1%} "
                                      f"of the test utterances (at most {MAX_PREDICTION_MISMATCH:.1%} allowed)")
        return figures, None
    figures.update(graph_costs(graph, data.input_dim, frames))
    return figures, scores


def graph_costs(graph: bytes, input_dim: int, frames: int) -> dict:
    """The record's costs of a shipped ONNX graph: MACs by precision, FLOPs, size and its format
    (``int8 onnx`` when integer kernels do some of its MACs, else ``onnx``)."""
    costs = graph_macs(graph, input_dim, frames)
    return dict(costs, flops=2 * costs["macs"], size_bytes=len(graph),
                size_format="int8 onnx" if costs["int8_macs"] else "onnx")


def peak_graphs() -> dict[str, bytes]:
    """Two one-node graphs for :func:`bench.measure.probe.peak_gflops`: fp32 ``MatMul`` and int8 ``MatMulInteger``
    (uint8 x int8 -> int32, the kernel ONNX Runtime's int8 models run), both of ``a`` (m, k) and ``b`` (k, n)."""
    from onnx import TensorProto, helper

    def one_node(op: str, a: int, b: int, out: int) -> bytes:
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], f"peak-{op}",
                                  [helper.make_tensor_value_info("a", a, ["m", "k"]),
                                   helper.make_tensor_value_info("b", b, ["k", "n"])],
                                  [helper.make_tensor_value_info("c", out, ["m", "n"])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()

    return {"fp32": one_node("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT),
            "int8": one_node("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)}
