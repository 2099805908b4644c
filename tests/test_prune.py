"""Structured pruning with DepGraph: budgets met on every backbone, pruned models physically smaller
and still working on masked variable-length batches, heads kept whole, exact where it must be;
and unstructured magnitude masks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from bench.measure import costs
from bench.training.models import build_backbone
from bench.registry import BACKBONES, BenchError
from methods.prune import (apply_plan, channel_scores, dependency_graph, output_layer_names, prunable_units,
                           prune_to_budget, removed_channels, step_epochs, plan_unit)
from methods.prune_unstructured import global_magnitude_masks, prunable_weights

DIM = 16


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 110, DIM, generator=generator), torch.tensor([110, 53, 21])


def attentions(model: nn.Module) -> list[nn.MultiheadAttention]:
    return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]


def prune(model: nn.Module, target: int, measure_cost=costs.count_params, criterion: str = "magnitude"):
    keep = output_layer_names(model, DIM)
    units, skipped = prunable_units(model, DIM, keep)
    scores = channel_scores(units, criterion)
    return prune_to_budget(model, DIM, units, scores, target, measure_cost, keep)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_prune_to_budget_on_every_backbone(backbone):
    model = build_backbone(backbone, "tiny", DIM, 4).eval()
    source_params, source_macs = costs.count_params(model), costs.count_macs(model, DIM, 200)
    source_widths = [a.embed_dim for a in attentions(model)]
    target = source_params // 2
    pruned, reached, plan = prune(model, target)
    assert abs(reached - target) <= 0.05 * target
    assert costs.count_params(pruned) == reached < source_params  # physically smaller
    assert costs.count_macs(pruned, DIM, 200) < source_macs
    for attn, width in zip(attentions(pruned), source_widths):  # consistent heads, shrunk
        assert attn.num_heads * attn.head_dim == attn.embed_dim < width
        assert attn.in_proj_weight.shape == (3 * attn.embed_dim, attn.embed_dim)
        assert attn.out_proj.weight.shape == (attn.embed_dim, attn.embed_dim)
    features, lengths = padded_batch()
    with torch.no_grad():
        batched = pruned(features, lengths)
        alone = pruned(features[2:, :21], lengths[2:])  # the short utterance without the batch's padding
    assert batched.shape == (3, 4) and torch.isfinite(batched).all()
    assert torch.allclose(batched[2:], alone, atol=1e-4)
    assert plan["structure"]


def test_macs_budget_lands_within_tolerance():
    model = build_backbone("convtransformer", "lightweight", DIM, 4).eval()
    target = costs.count_macs(model, DIM, 501) // 3
    _, reached, _ = prune(model, target, lambda m: costs.count_macs(m, DIM, 501))
    assert abs(reached - target) <= 0.05 * target


def test_removed_conv_channels_and_ffn_units_leave_the_function_unchanged():
    """Channels whose weights are zero can go without changing the output: this holds only if DepGraph
    removes the matching projection inputs (the conv front-end's flatten) and FFN rows/columns."""
    model = build_backbone("convtransformer", "lightweight", DIM, 4).eval()
    with torch.no_grad():
        for channel in (3, 17):
            model.subsampling.conv2.weight[channel] = 0
            model.subsampling.conv2.bias[channel] = 0
        for unit in (5, 100, 150):
            model.layers[1].ffn.w1.weight[unit] = 0
            model.layers[1].ffn.w1.bias[unit] = 0
    features, lengths = padded_batch()
    with torch.no_grad():
        expected = model(features, lengths)
    graph = dependency_graph(model, DIM)
    graph.get_pruning_group(model.subsampling.conv2, tp.prune_conv_out_channels, idxs=[3, 17]).prune()
    graph.get_pruning_group(model.layers[1].ffn.w1, tp.prune_linear_out_channels, idxs=[5, 100, 150]).prune()
    assert model.subsampling.conv2.out_channels == 30 and model.projection.in_features == 30 * 4
    assert model.layers[1].ffn.w1.out_features == 189 and model.layers[1].ffn.w2.in_features == 189
    with torch.no_grad():
        assert torch.allclose(model(features, lengths), expected, atol=1e-5)


def test_attention_keeps_whole_heads_with_their_own_weights():
    model = build_backbone("convtransformer", "lightweight", DIM, 4).eval()  # 4 heads x 24 dims
    original = copy.deepcopy(model)
    keep = output_layer_names(model, DIM)
    units, _ = prunable_units(model, DIM, keep)
    scores = channel_scores(units, "magnitude")
    stream = next(u for u in units if u.heads)
    heads, channels = plan_unit(stream, 0.3)
    assert heads < 4 and channels // heads < 24  # both heads and head size shrink
    kept = sorted(set(range(96)) - set(removed_channels(stream, scores[stream.name], heads, channels)))
    per_head = {}
    for channel in kept:
        per_head.setdefault(channel // 24, []).append(channel)
    assert len(per_head) == heads and {len(v) for v in per_head.values()} == {channels // heads}
    apply_plan(model, DIM, scores, {stream.name: 0.3}, keep)
    rows = kept + [96 + c for c in kept] + [192 + c for c in kept]
    for before, after in zip(attentions(original), attentions(model)):
        assert (after.num_heads, after.head_dim, after.embed_dim) == (heads, channels // heads, channels)
        assert torch.equal(after.in_proj_weight, before.in_proj_weight[rows][:, kept])
        assert torch.equal(after.out_proj.weight, before.out_proj.weight[kept][:, kept])


def test_taylor_scores_use_gradients():
    model = build_backbone("convtransformer", "tiny", DIM, 4)
    keep = output_layer_names(model, DIM)
    units, _ = prunable_units(model, DIM, keep)
    features, lengths = padded_batch()
    nn.functional.cross_entropy(model(features, lengths), torch.tensor([0, 1, 2])).backward()
    taylor, magnitude = channel_scores(units, "taylor"), channel_scores(units, "magnitude")
    for unit in units:
        assert taylor[unit.name].shape == (unit.channels,) and taylor[unit.name].abs().sum() > 0
        assert not torch.allclose(taylor[unit.name], magnitude[unit.name])


def test_epochs_split_over_steps_and_too_few_weights_is_an_error():
    assert step_epochs(7, 3) == [3, 2, 2] and step_epochs(2, 3) == [1, 1]  # at least one epoch per step
    weights = {"a": nn.Parameter(torch.tensor([[0.5, -0.1], [0.0, 2.0]]))}
    with pytest.raises(BenchError, match="use a larger ratio"):
        global_magnitude_masks(weights, remove=3)


def test_global_magnitude_masks_remove_exactly_the_smallest_nonzero_weights():
    model = build_backbone("convtransformer", "tiny", DIM, 4)
    weights = prunable_weights(model)
    assert any(name.endswith("in_proj_weight") for name in weights)
    nonzero = sum(int((w != 0).sum()) for w in weights.values())
    masks = global_magnitude_masks(weights, remove=1000)
    assert sum(int(m.sum()) for m in masks.values()) == nonzero - 1000
    kept = torch.cat([w.detach().abs()[m] for w, m in zip(weights.values(), masks.values())])
    dropped = torch.cat([w.detach().abs()[~m] for w, m in zip(weights.values(), masks.values())])
    assert dropped.max() <= kept.min()


def test_heads_follow_the_width_kept_since_the_source_when_pruning_in_steps():
    model = build_backbone("convtransformer", "lightweight", DIM, 4).eval()  # 4 heads x 24 dims
    keep = output_layer_names(model, DIM)
    units, _ = prunable_units(model, DIM, keep)
    sources = {u.name: (u.heads, u.channels) for u in units}
    stream = next(u for u in units if u.heads).name
    for _ in range(3):  # three steps keeping 0.7 of the width each: 0.343 overall
        current, _ = prunable_units(model, DIM, keep)
        apply_plan(model, DIM, channel_scores(current, "magnitude"), {stream: 0.7}, keep, sources)
    one_step = build_backbone("convtransformer", "lightweight", DIM, 4).eval()
    apply_plan(one_step, DIM, channel_scores(prunable_units(one_step, DIM, keep)[0], "magnitude"), {stream: 0.343}, keep)
    assert attentions(model)[0].num_heads == attentions(one_step)[0].num_heads == 3
