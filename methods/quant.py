"""``quant``: post-training int8 quantization of the exported ONNX graph with ONNX Runtime
(``onnxruntime.quantization``), so that the int8 model is what ships and what the probe times.

- ``scheme=static`` (default): QDQ format, activation ranges calibrated (min/max) on training
  utterances only (``calibration_utterances`` of them, drawn with the run seed); every convolution,
  matmul and Gemm becomes int8, attention's activation x activation matmuls included, with each
  convolution's ReLU folded into its output range. ONNX Runtime fuses the QDQ pairs around those
  nodes into integer operators (QLinearConv, QLinearMatMul, QGemm) when it loads the graph, so what
  the format costs is the float islands between them: the convolutional front-end's padding masks
  (``Where``) were the largest, a dequantize, a float select and a requantize of its biggest
  activations between its two convolutions. The shipped graph runs those masks on the uint8 tensor
  itself (the ReLU moved before the mask, the mask selecting the zero point; exact, see
  :func:`_masks_in_int8`), so the front-end stays int8 from one convolution to the next.
- ``scheme=dynamic``: MatMul/Gemm weights int8, activations quantized at run time; convolutions
  stay float.

Alone it quantizes the trained plain model of the run's preset (the cached baseline model); composed
(``hrf+quant``, ``kd+quant``, ``prune+quant``, ``lowrank+quant``) it quantizes the previous method's
deploy model. It must come last in a composition: nothing trains a quantized model further.

``deploy`` returns a :class:`bench.method.Deployed`: the float PyTorch model (saved as usual) and the
int8 graph, which ships in its place and is saved beside it as ``<run_id>.onnx``. The runner
evaluates that graph in ONNX Runtime, and its figures are the run's headline (what ships); its
``int8_macs`` and ``float_macs`` come from the quantized graph's own nodes.
"""

from __future__ import annotations

import io
import logging
import tempfile
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.method import Deployed, Method
from bench.measure.onnx_io import export_onnx
from bench.registry import METHODS, BenchError, param

__all__ = ["Quant", "QuantParams", "quantize_graph"]

SCHEMES = ("static", "dynamic")
# The compute nodes quantized (Relu so that it folds into the convolution before it instead of
# running as a float island after a dequantize); data-movement nodes (Reshape, Transpose...) stay
# float, because a quantize/dequantize pair around each costs more than it saves at these sizes.
STATIC_OPS = ["Conv", "MatMul", "Gemm", "Relu"]
DYNAMIC_OPS = ["MatMul", "Gemm"]


@dataclass
class QuantParams:
    scheme: str = param("static", "static: QDQ int8 calibrated on training utterances (convolutions and attention "
                        "matmuls too); dynamic: int8 MatMul/Gemm weights, activations quantized at run time",
                        choices=SCHEMES)
    calibration_utterances: int = param(64, "training utterances for static calibration", low=1)


def quantize_graph(float_graph: Path, scheme: str, calibration: list[torch.Tensor] | None = None) -> bytes:
    """The int8 ONNX graph of ``float_graph`` (a file written by :func:`bench.measure.onnx_io.export_onnx`).
    ``calibration``: training utterances ``(frames, dims)`` for the static scheme's activation ranges."""
    # imported here: onnx and the quantizer are slow to import, and every `bench` command loads this plug-in
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Utterances(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration or [])

        def get_next(self):
            features = next(self.items, None)
            if features is None:
                return None
            return {"features": features[None].numpy().astype(np.float32),
                    "lengths": np.array([features.shape[0]], dtype=np.int64)}

    with tempfile.TemporaryDirectory() as folder, _quiet_quantizer():
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        # Folds constants (the exporter's weight transposes) so the quantizer sees constant weights;
        # ORT's symbolic shape inference cannot follow the exporter's shape arithmetic, so it is skipped.
        quant_pre_process(str(float_graph), str(prepared), skip_symbolic_shape=True)
        if scheme == "dynamic":
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8,
                             op_types_to_quantize=DYNAMIC_OPS)
            return quantized.read_bytes()
        if not calibration:
            raise BenchError("static quantization needs calibration utterances: give quant.calibration_utterances >= 1")
        proto = onnx.load(str(prepared))
        _relu_before_mask(proto.graph)
        onnx.save(proto, str(prepared))
        with np.errstate(all="ignore"):  # ranges of all-zero tensors divide by zero inside the quantizer
            quantize_static(str(prepared), str(quantized), Utterances(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=STATIC_OPS, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        proto = onnx.load(str(quantized))
        _masks_in_int8(proto.graph)
        return proto.SerializeToString()


def _constant(name: str, graph, producers: dict) -> np.ndarray | None:
    """The value of ``name`` when it is a constant: an initializer, a Constant node, or a Cast of one."""
    from onnx import numpy_helper  # see quantize_graph

    for initializer in graph.initializer:
        if initializer.name == name:
            return numpy_helper.to_array(initializer)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return None if value is None else numpy_helper.to_array(value)
    if node is not None and node.op_type in ("Cast", "CastLike"):
        return _constant(node.input[0], graph, producers)
    return None


def _is_zero_fill(where, graph, producers: dict) -> bool:
    fill = _constant(where.input[1], graph, producers)
    return fill is not None and fill.size == 1 and float(fill.reshape(())) == 0.0


def _consumers(graph) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _relu_before_mask(graph) -> None:
    """``Relu(Where(pad, 0, x))`` -> ``Where(pad, 0, Relu(x))`` (the same values: relu(0) = 0). The
    convolutional front-end zeroes its padded frames between each convolution and its ReLU; moved
    after the ReLU, the mask sits between two convolutions, so the quantizer fuses the ReLU into the
    first (its output range starts at 0) and :func:`_masks_in_int8` can run the mask on its int8
    output: no dequantize, float select and requantize of the front-end's largest activations."""
    from onnx import helper  # see quantize_graph

    producers = {out: n for n in graph.node for out in n.output}
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    for where in nodes:
        users = consumers.get(where.output[0], [])
        if (where.op_type != "Where" or len(users) != 1 or users[0].op_type != "Relu" or where.output[0] in outputs
                or not _is_zero_fill(where, graph, producers)):
            continue
        relu = users[0]
        rectified = relu.output[0] + "_before_mask"
        new_relu = helper.make_node("Relu", [where.input[2]], [rectified], name=relu.name + "_before_mask")
        new_where = helper.make_node("Where", [where.input[0], where.input[1], rectified], [relu.output[0]],
                                          name=where.name)
        at = list(graph.node).index(where)
        graph.node.remove(relu)
        graph.node.remove(where)
        graph.node.insert(at, new_where)
        graph.node.insert(at, new_relu)


def _masks_in_int8(graph) -> None:
    """``Q(Where(pad, 0, DQ(x8; s, z)); s2, z2)`` -> ``Where(pad, z, x8)`` dequantized as ``(s, z)``
    downstream: selecting the zero point in int8 is exactly selecting 0.0 after dequantization, so the
    padding mask runs on uint8 (a quarter of the bytes) instead of as a float island with a
    dequantize before it and a quantize after. (ORT's own QLinearWhere requantizes element by element
    and is slower than the float select.)"""
    from onnx import helper, numpy_helper  # see quantize_graph

    producers = {out: n for n in graph.node for out in n.output}
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    orphans: set[str] = set()
    for where in [n for n in graph.node if n.op_type == "Where"]:
        dequantize = producers.get(where.input[2])
        if (dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3
                or where.output[0] in outputs or not _is_zero_fill(where, graph, producers)):
            continue
        scale = _constant(dequantize.input[1], graph, producers)
        zero = _constant(dequantize.input[2], graph, producers)
        if scale is None or zero is None or scale.size != 1:
            continue
        users = consumers.get(where.output[0], [])
        downstream = consumers.get(users[0].output[0], []) if len(users) == 1 else []
        fold = (users[0].op_type == "QuantizeLinear" and users[0].output[0] not in outputs and bool(downstream)
                and all(n.op_type == "DequantizeLinear" for n in downstream)) if len(users) == 1 else False
        fill = where.name + "_zero_point"
        graph.initializer.append(numpy_helper.from_array(zero.reshape(()), fill))
        at = list(graph.node).index(where)
        graph.node.remove(where)
        if fold:  # its uint8 output replaces the requantized one, read with the scale it was made with
            graph.node.remove(users[0])
            orphans.update(users[0].input[1:])
            selected = users[0].output[0]
            for node in downstream:
                node.input[1], node.input[2] = dequantize.input[1], dequantize.input[2]
        else:  # float consumers: dequantize after the select instead of before it
            selected = where.output[0] + "_uint8"
            graph.node.insert(at, helper.make_node("DequantizeLinear", [selected, *dequantize.input[1:3]],
                                                        [where.output[0]], name=where.name + "_dequantize"))
        graph.node.insert(at, helper.make_node("Where", [where.input[0], fill, dequantize.input[0]], [selected],
                                                    name=where.name))
        if len(consumers.get(dequantize.output[0], [])) == 1 and dequantize.output[0] not in outputs:
            graph.node.remove(dequantize)
    used = {name for node in graph.node for name in node.input}
    for initializer in [i for i in graph.initializer if i.name in orphans - used]:
        graph.initializer.remove(initializer)  # the folded requantizations' scales


@contextmanager
def _quiet_quantizer():
    """The quantizer logs a line per tensor it leaves float on the root logger, and its preprocessing
    prints its optimizer's steps: keep the run's output readable."""
    logging.disable(logging.INFO)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


@METHODS.register("quant", "post-training int8 quantization of the ONNX graph with ONNX Runtime (static QDQ "
                  "calibrated on training utterances, or dynamic); alone on the plain preset model, or last in a "
                  "composition (hrf+quant, kd+quant, prune+quant, lowrank+quant)", params=QuantParams)
class Quant(Method):
    must_be_last = True
    trains_at = "plain"
    record_fields = {
        "quant_source": "the model that was quantized",
        "quant_scheme": "the quantization scheme (static QDQ, per-channel or per-tensor)",
        "quant_runtime": "the runtime that runs the int8 graph",
        "quant_calibration_utterances": "training utterances the activation ranges were calibrated on",
        "size_float32_bytes": "size of the float graph",
        "size_int8_bytes": "size of the int8 graph",
        "size_ratio": "int8 size over float size",
    }

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        self.source = "previous method's deploy model" if start is not None else f"plain {ctx.spec.preset} model"
        return start if start is not None else ctx.trained_model(ctx.spec.preset)

    def train(self, model: nn.Module, ctx) -> nn.Module:
        return model  # post-training: nothing to train

    def deploy(self, model: nn.Module, ctx) -> Deployed:
        model.eval()
        train = ctx.data.train.features
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.spec.seed))
        calibration = [train[i] for i in order[:self.params.calibration_utterances].tolist()]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "float.onnx"
            export_onnx(model, ctx.data.input_dim, path, what=f"the {self.source} to quantize",
                        graph_cache=ctx.workspace.cache_dir / "onnx-graphs")
            self.float_size = path.stat().st_size
            graph = quantize_graph(path, self.params.scheme, calibration)
        self.int8_size = len(graph)
        self.calibrated_on = len(calibration) if self.params.scheme == "static" else 0
        return Deployed(model, graph)

    def record(self) -> dict:
        return {"quant_source": self.source, "quant_scheme": self.params.scheme,
                "quant_runtime": "onnxruntime", "quant_calibration_utterances": self.calibrated_on,
                "size_float32_bytes": self.float_size, "size_int8_bytes": self.int8_size,
                "size_ratio": self.int8_size / self.float_size}
