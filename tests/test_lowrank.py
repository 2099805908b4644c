"""Low-rank factorization: exact at full rank (layer, attention, whole model), smaller at a budget,
costing what the dense layers cost when kept dense, and able to reach the default budget."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones.ffn import FeedForward
from bench.measure import costs
from bench.measure.budget import Budget, bisect_budget, output_layers
from bench.training.models import build_backbone
from bench.registry import BACKBONES
from methods.lowrank import (LowRankAttention, energy_ranks, factorizable_layers, factorize_linear, factorize_model,
                             smallest_model)

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
    assert costs.count_params(truncated) == 5 * 48 + 20 * 5 + 20 < costs.count_params(layer)


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
    source = costs.count_params(model)
    budget = Budget("params", source // 2, "ratio 0.5", source)

    def build(energy):
        candidate = factorize_model(copy.deepcopy(model), energy_ranks(spectra, shapes, energy))
        return candidate, costs.count_params(candidate)

    energy, factorized, reached = bisect_budget(build, budget)
    assert budget.within(reached) and 0 < energy < 1
    assert costs.count_macs(factorized, DIM, 300) < costs.count_macs(model, DIM, 300)
    features, lengths = padded_batch()
    assert factorized(features, lengths).shape == (3, 4)


def attention_macs(attn: nn.Module, *inputs: torch.Tensor) -> int:
    with costs.countable_attention(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        attn.eval()(*inputs, need_weights=False)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("batch_first, batched", [(True, True), (False, True), (False, False)])
def test_dense_attention_projects_self_attention_once(batch_first, batched):
    """Self-attention runs the packed projection once, whatever the layout (torchaudio's Conformer is
    not batch-first): the dense LowRankAttention costs exactly what nn.MultiheadAttention costs."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(24, 4, batch_first=batch_first)
    low = LowRankAttention.from_attention(attn, None, None)
    x = torch.randn(2, 9, 24) if batch_first else torch.randn(9, 2, 24)
    x = x if batched else x[:, 0]
    tokens = x.numel() // 24
    assert attention_macs(low, x, x, x) == attention_macs(attn, x, x, x) == tokens * (4 * 24 * 24 + 2 * 9 * 24)
    with torch.no_grad():
        assert torch.allclose(low(x, x, x)[0], attn(x, x, x)[0], atol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_dense_equivalent_model_costs_what_the_model_costs(backbone):
    """Every factorizable layer converted but kept dense: the same parameters and MACs as the model."""
    model = build_backbone(backbone, "lightweight", DIM, 4).eval()
    layers = factorizable_layers(model, set(output_layers(model, DIM)))
    dense = factorize_model(copy.deepcopy(model), {name: None for name in layers}).eval()
    assert any(isinstance(m, LowRankAttention) for m in dense.modules())
    assert costs.count_params(dense) == costs.count_params(model)
    assert costs.count_macs(dense, DIM, 301) == costs.count_macs(model, DIM, 301)


def test_pointwise_convolutions_are_factorized_and_depthwise_ones_are_not():
    model = build_backbone("conformer", "tiny", DIM, 4).eval()
    layers = factorizable_layers(model, set(output_layers(model, DIM)))
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv1d)}
    pointwise = {name for name, m in convs.items() if m.kernel_size == (1,)}
    assert len(pointwise) == 2 and pointwise <= set(layers) and not set(convs) - pointwise & set(layers)
    low = factorize_model(copy.deepcopy(model), {name: 2 for name in pointwise}).eval()
    for name in pointwise:
        pair = low.get_submodule(name)
        assert [type(m) for m in pair] == [nn.Conv1d, nn.Conv1d] and pair[0].out_channels == 2


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_default_budget_is_reachable_from_the_large_model(backbone):
    """At rank 1 wherever that is smaller, the large model fits under the lightweight model's
    parameters and MACs (80-d log-mel input, 5 s), so lowrank's default budget can be met: the
    Conformer's pointwise convolutions alone held more than the budget."""
    large = build_backbone(backbone, "large", 80, 4).eval()
    light = build_backbone(backbone, "lightweight", 80, 4).eval()
    smallest = smallest_model(large, set(output_layers(large, 80)))
    assert costs.count_params(smallest) < costs.count_params(light)
    assert costs.count_macs(smallest, 80, 501) < costs.count_macs(light, 80, 501)
