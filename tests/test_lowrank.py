"""Low-rank factorization: exact at full rank (layer, attention, whole model), smaller at a budget."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backbones.ffn import FeedForward
from bench import measure
from bench.budget import Budget, bisect_budget, output_layers
from bench.models import build_backbone
from bench.registry import BACKBONES
from methods.lowrank import LowRankAttention, energy_ranks, factorizable_layers, factorize_linear, factorize_model

DIM = 16


def padded_batch(dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 90, dim, generator=generator), torch.tensor([90, 47, 23])


def test_full_rank_factor_pair_reproduces_the_layer():
    torch.manual_seed(0)
    layer = nn.Linear(48, 20)
    pair = factorize_linear(layer.weight, layer.bias, rank=20)
    assert isinstance(pair, nn.Sequential) and pair[0].weight.shape == (20, 48) and pair[0].bias is None
    x = torch.randn(7, 48)
    assert torch.allclose(pair(x), layer(x), atol=1e-5)
    truncated = factorize_linear(layer.weight, layer.bias, rank=5)
    assert measure.count_params(truncated) == 5 * 48 + 20 * 5 + 20 < measure.count_params(layer)


@pytest.mark.parametrize("batch_first", [True, False])
def test_full_rank_attention_reproduces_multihead_attention(batch_first):
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(24, 4, dropout=0.1, batch_first=batch_first).eval()
    low = LowRankAttention.from_attention(attn, in_rank=24, out_rank=24).eval()
    assert isinstance(low, nn.MultiheadAttention) and low.in_proj_weight is None
    x = torch.randn(2, 9, 24) if batch_first else torch.randn(9, 2, 24)
    other = torch.randn_like(x)
    padding = torch.tensor([[False] * 9, [False] * 5 + [True] * 4])
    causal = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        for args, kwargs in [((x, x, x), dict(key_padding_mask=padding, need_weights=False)),
                             ((x, x, x), dict(attn_mask=causal, need_weights=False)),
                             ((x, other, other), dict(key_padding_mask=padding)),  # weights returned too
                             ((x, other, x), dict(attn_mask=causal.float() * -1e4, need_weights=False))]:
            expected, expected_weights = attn(*args, **kwargs)
            got, weights = low(*args, **kwargs)
            assert torch.allclose(got, expected, atol=1e-5)
            assert (weights is None) == (expected_weights is None)
            if weights is not None:
                assert torch.allclose(weights, expected_weights, atol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_full_rank_model_reproduces_the_model_on_masked_batches(backbone):
    model = build_backbone(backbone, "tiny", DIM, 4).eval()
    layers = factorizable_layers(model, set(output_layers(model, DIM)))
    ffns = [name for name, m in model.named_modules() if isinstance(m, FeedForward)]
    assert ffns and all(f"{name}.w1" in layers and f"{name}.w2" in layers for name in ffns)
    assert any(name.endswith(".in_proj") for name in layers) and any(name.endswith(".out_proj") for name in layers)
    full = factorize_model(copy.deepcopy(model), {name: min(w.shape) for name, w in layers.items()}).eval()
    assert not any(type(m) is nn.MultiheadAttention for m in full.modules())  # every attention converted
    features, lengths = padded_batch()
    with torch.no_grad():
        assert torch.allclose(full(features, lengths), model(features, lengths), atol=1e-5)
    full.train()
    full(features, lengths).sum().backward()  # trainable: the factors get gradients
    assert all(p.grad is not None for p in full.parameters() if p.requires_grad)


def test_budgeted_factorization_is_smaller_in_params_and_macs():
    model = build_backbone("convtransformer", "lightweight", DIM, 4).eval()
    layers = factorizable_layers(model, set(output_layers(model, DIM)))
    with torch.no_grad():  # a trained-like spectrum: decaying singular values
        for weight in layers.values():
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            weight.copy_(u @ torch.diag(s * torch.exp(-torch.arange(len(s)) / 8.0)) @ vh)
    spectra = {n: torch.linalg.svdvals(w.detach().double()) for n, w in layers.items()}
    shapes = {n: tuple(w.shape) for n, w in layers.items()}
    source = measure.count_params(model)
    budget = Budget("params", source // 2, "ratio 0.5", source)

    def build(energy):
        candidate = factorize_model(copy.deepcopy(model), energy_ranks(spectra, shapes, energy))
        return candidate, measure.count_params(candidate)

    energy, factorized, reached = bisect_budget(build, budget)
    assert budget.within(reached) and 0 < energy < 1
    assert measure.count_macs(factorized, DIM, 300) < measure.count_macs(model, DIM, 300)
    features, lengths = padded_batch()
    assert factorized(features, lengths).shape == (3, 4)
