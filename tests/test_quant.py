"""Dynamic int8 quantization: close to the float model, smaller when serialized, same parameters,
works on low-rank attention, refuses a second pass."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic

from bench import measure
from bench.budget import output_layers
from bench.models import build_backbone
from bench.registry import BACKBONES, BenchError
from methods.lowrank import factorizable_layers, factorize_model
from methods.quant import quantize_linear_int8, serialized_size

DIM = 16


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(4, 120, DIM, generator=generator), torch.tensor([120, 90, 41, 17])


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_quantized_output_stays_close_to_float(backbone):
    torch.manual_seed(0)
    model = build_backbone(backbone, "lightweight", DIM, 4).eval()
    quantized = quantize_linear_int8(model)
    features, lengths = padded_batch()
    with torch.no_grad():
        expected, got = model(features, lengths), quantized(features, lengths)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 0.05 * scale
    assert not torch.equal(got, expected)  # really quantized
    linears = [m for m in quantized.modules() if isinstance(m, quantized_dynamic.Linear)]
    assert linears and not any(type(m) is nn.Linear for m in quantized.modules())
    assert measure.count_params(quantized) == measure.count_params(model)  # int8 weights still counted
    assert serialized_size(quantized) < 0.7 * serialized_size(model)


def test_quantizes_low_rank_attention_factors():
    model = build_backbone("convtransformer", "tiny", DIM, 4).eval()
    layers = factorizable_layers(model, set(output_layers(model, DIM)))
    factorized = factorize_model(copy.deepcopy(model), {name: min(w.shape) for name, w in layers.items()}).eval()
    quantized = quantize_linear_int8(factorized)
    assert isinstance(quantized.layers[0].attn.in_proj[0], quantized_dynamic.Linear)
    features, lengths = padded_batch()
    with torch.no_grad():
        assert (quantized(features, lengths) - model(features, lengths)).abs().max() < 0.05 * model(features, lengths).abs().max()


def test_quantizing_twice_is_an_error():
    quantized = quantize_linear_int8(build_backbone("convtransformer", "tiny", DIM, 4))
    with pytest.raises(BenchError, match="already quantized"):
        quantize_linear_int8(quantized)
