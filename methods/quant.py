"""``quant``: post-training int8 quantization of the exported ONNX graph with ONNX Runtime
(``onnxruntime.quantization``), so that the int8 model is what ships and what the probe times.

- ``scheme=static`` (default): QDQ format, activation ranges calibrated (min/max) on training
  utterances only (``calibration_utterances`` of them, drawn with the run seed); every convolution,
  matmul and Gemm becomes int8, attention's activation x activation matmuls included.
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
# The compute nodes quantized; data-movement nodes (Reshape, Transpose...) stay float, because a
# quantize/dequantize pair around each costs more than it saves at these sizes.
STATIC_OPS = ["Conv", "MatMul", "Gemm"]
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
        else:
            if not calibration:
                raise BenchError("static quantization needs calibration utterances: give quant.calibration_utterances >= 1")
            with np.errstate(all="ignore"):  # ranges of all-zero tensors divide by zero inside the quantizer
                quantize_static(str(prepared), str(quantized), Utterances(), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=STATIC_OPS, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return quantized.read_bytes()


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
