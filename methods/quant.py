"""``quant``: post-training dynamic int8 quantization of the deploy model's ``nn.Linear`` layers
(weights int8 per tensor, activations quantized on the fly; ``torch.ao.quantization.quantize_dynamic``,
CPU kernels of the ``fbgemm``/``qnnpack`` engines).

Alone it quantizes the trained plain model of the run's preset (the cached baseline model); composed
(``hrf+quant``, ``kd+quant``, ``prune+quant``) it quantizes the previous method's deploy model. It
must come last in a composition: nothing trains a quantized model further.

What it changes and what it does not: parameter count and MACs stay (an int8 multiply-accumulate is
still one); the serialized size drops and so, where the int8 kernels win, does latency. The MACs in
its record are counted on the float model just before quantization, because the FLOP counter does
not see the quantized kernels. PyTorch's dynamic quantization does not reach the projections inside
``nn.MultiheadAttention``, so each attention is first rebuilt with ``nn.Linear`` projections (same
function, still an ``nn.MultiheadAttention``); the record counts int8 and float linear layers.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic

from bench import measure
from bench.method import Method
from bench.registry import METHODS, BenchError
from methods.lowrank import LowRankAttention

__all__ = ["Quant", "quantize_linear_int8", "serialized_size"]


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what shipping the weights costs."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, quantized_dynamic.Linear) for m in model.modules())


def with_module_projections(model: nn.Module) -> nn.Module:
    """``model`` with every plain ``nn.MultiheadAttention`` replaced by the same attention computing its
    projections with ``nn.Linear`` modules (:class:`methods.lowrank.LowRankAttention` at full width),
    so that dynamic quantization reaches them; the function is unchanged."""
    for name, attn in [(n, m) for n, m in model.named_modules() if type(m) is nn.MultiheadAttention]:
        if attn._qkv_same_embed_dim and attn.bias_k is None and not attn.add_zero_attn:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    LowRankAttention.from_attention(attn, None, None))
    return model


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every ``nn.Linear``, attention projections included,
    dynamically quantized to int8."""
    if is_quantized(model):
        raise BenchError("the model is already quantized: use quant once, as the last method of a composition")
    model = with_module_projections(copy.deepcopy(model).eval())
    with warnings.catch_warnings():  # torch.ao's deprecation notice (torchao is its successor, not installed here)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


@METHODS.register("quant", "post-training dynamic int8 quantization of every linear layer (attention projections "
                  "included); alone on the plain preset model, or last in a composition (hrf+quant, kd+quant)")
class Quant(Method):
    must_be_last = True  # checked when a grid is validated

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        self.source = "previous method's deploy model" if start is not None else f"plain {ctx.spec.preset} model"
        return start if start is not None else ctx.trained_model(ctx.spec.preset)

    def train(self, model: nn.Module, ctx) -> nn.Module:
        return model  # post-training: nothing to train

    def deploy(self, model: nn.Module, ctx) -> nn.Module:
        from bench.runner import LATENCY_SECONDS  # the runner imports the method plug-ins
        model.eval()
        frames = ctx.spec.features.frames(LATENCY_SECONDS)
        try:
            self.float_macs = measure.count_macs(model, ctx.data.input_dim, frames)
        except Exception:  # noqa: BLE001 - as the runner: a counter failure is never fatal
            self.float_macs = None
        self.float_nonzero = measure.count_nonzero_params(model)
        self.float_size = serialized_size(model)
        quantized = quantize_linear_int8(model)
        self.int8_size = serialized_size(quantized)
        self.int8_layers = sum(isinstance(m, quantized_dynamic.Linear) for m in quantized.modules())
        self.float_layers = sum(isinstance(m, nn.Linear) for m in quantized.modules())
        return quantized

    def record(self) -> dict:
        return {"quant_source": self.source, "quant_dtype": "qint8 weights, dynamic int8 activations",
                "quant_int8_linear_layers": self.int8_layers, "quant_float_linear_layers": self.float_layers,
                "size_float32_bytes": self.float_size, "size_int8_bytes": self.int8_size,
                "size_ratio": self.int8_size / self.float_size,
                "macs": self.float_macs, "nonzero_params": self.float_nonzero,
                "macs_note": "MACs counted on the float model before quantization: int8 kernels do the same "
                             "multiply-accumulates, and the FLOP counter does not see them"}
