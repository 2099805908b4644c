"""Statistics pooling (backbones.layers.StatsPooling): exact masking, the statistics themselves, widths,
every backbone in every mode (forward, backward, padding, analytic MACs), ONNX export, and the methods
that edit a model (structured pruning, low-rank, HRF's merge) on the wider pooled embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from backbones.layers import POOLING_MODES, StatsPooling, padding_mask
from bench.measure import costs
from bench.measure.budget import output_layers
from bench.training.models import build_backbone, preset_config
from bench.registry import BACKBONES, BenchError

BACKBONE_NAMES = ["convtransformer", "conformer", "speechformer"]
WIDE_MODES = ["meanstd", "attentive"]
DIM, CLASSES, WIDTH = 16, 4, 6
LENGTHS = [1, 4, 9, 23]  # a single-frame utterance included


def utterances(width: int = WIDTH, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, width, generator=generator) * 3 + 1 for n in LENGTHS]


def padded(items: list[torch.Tensor], extra: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, max T + extra, D)`` padded with large noise (never zeros), and the lengths ``(B,)``."""
    generator = torch.Generator().manual_seed(seed)
    batch = 100 * torch.randn(len(items), max(len(x) for x in items) + extra, items[0].shape[1], generator=generator)
    for row, x in zip(batch, items):
        row[: len(x)] = x
    return batch, torch.tensor([len(x) for x in items])


def pooling(mode: str, width: int = WIDTH) -> StatsPooling:
    torch.manual_seed(0)
    return StatsPooling(width, mode, attention_dim=5).eval()


# --- the module ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_output_does_not_depend_on_the_batch_padding(mode):
    pool, items = pooling(mode), utterances()
    with torch.no_grad():
        alone = torch.cat([pool(x[None], torch.tensor([len(x)])) for x in items])
        for extra in (0, 7, 40):
            assert (pool(*padded(items, extra, seed=extra)) - alone).abs().max().item() < 1e-5, extra


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_output_width(mode):
    pool = pooling(mode)
    assert pool.output_dim == (WIDTH if mode == "mean" else 2 * WIDTH)
    assert pool(*padded(utterances(), 3)).shape == (len(LENGTHS), pool.output_dim)
    assert (pool.attention is not None) == (mode == "attentive")


def test_mean_and_meanstd_equal_the_statistics_of_the_valid_frames():
    items = utterances()
    batch = padded(items, 5)
    with torch.no_grad():
        mean, meanstd = pooling("mean")(*batch), pooling("meanstd")(*batch)
    for row, x in enumerate(items):
        expected_std = x.var(0, unbiased=False).clamp(min=1e-5).sqrt()  # population std, as x-vectors
        assert torch.allclose(mean[row], x.mean(0), atol=1e-5)
        assert torch.allclose(meanstd[row, :WIDTH], x.mean(0), atol=1e-5)
        assert torch.allclose(meanstd[row, WIDTH:], expected_std, atol=1e-5)
    assert torch.allclose(meanstd[0, WIDTH:], torch.full((WIDTH,), 1e-5 ** 0.5))  # one frame: std at its floor


def test_attentive_weights_are_a_softmax_over_valid_frames_only_and_give_the_weighted_statistics():
    pool, items = pooling("attentive"), utterances()
    features, lengths = padded(items, 6)
    with torch.no_grad():
        weights = pool.frame_weights(features, lengths)[..., 0]  # (B, T)
        pooled = pool(features, lengths)
    pad = padding_mask(lengths, features.shape[1])
    assert (weights[pad] == 0).all()  # exactly zero, whatever the padding holds
    assert (weights[~pad] > 0).all()
    assert torch.allclose(weights.sum(1), torch.ones(len(items)))
    assert weights[0, 0] == 1.0  # the single-frame utterance
    assert weights[-1, : LENGTHS[-1]].std() > 1e-3  # learned scores, not a uniform mean
    for row, x in enumerate(items):
        w = weights[row, : len(x), None]
        mean = (w * x).sum(0)
        std = (w * (x - mean) ** 2).sum(0).clamp(min=1e-5).sqrt()
        assert torch.allclose(pooled[row], torch.cat([mean, std]), atol=1e-5)


@pytest.mark.parametrize("mode", WIDE_MODES)
def test_constant_and_single_frame_utterances_have_finite_gradients(mode):
    pool = pooling(mode).train()
    features = torch.cat([torch.ones(1, 8, WIDTH), torch.randn(1, 8, WIDTH)]).requires_grad_(True)
    lengths = torch.tensor([8, 1])
    out = pool(features, lengths)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(features.grad).all()
    assert (features.grad[1, 1:] == 0).all()  # padded frames get no gradient
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters())


def test_an_unknown_mode_is_an_error_naming_it_and_the_choices():
    with pytest.raises(ValueError, match=r"'max'.*mean, meanstd, attentive"):
        StatsPooling(8, "max")
    for name in BACKBONE_NAMES:
        with pytest.raises(BenchError, match=r"unknown pooling 'avg'; choose one of: mean, meanstd, attentive"):
            build_backbone(name, "tiny", DIM, CLASSES, pooling="avg")


# --- the backbones ------------------------------------------------------------------------------------


def test_every_preset_states_its_pooling():
    for name in BACKBONE_NAMES:
        for preset, config in BACKBONES.get(name).extra["presets"].items():
            assert config["pooling"] == "mean", (name, preset)


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_backbone_runs_forward_and_backward_in_every_mode(name, mode):
    torch.manual_seed(0)
    model = build_backbone(name, "tiny", DIM, CLASSES, pooling=mode)
    items = [torch.randn(n, DIM) for n in (1, 13, 57)]
    features, lengths = padded(items, 0)
    model.train()
    loss = nn.functional.cross_entropy(model(features, lengths), torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        embedding = model.embed(features, lengths)
        alone = torch.cat([model(x[None], torch.tensor([len(x)])) for x in items])
        batched = model(*padded(items, 19))
    width = model.pooling.output_dim
    assert model.pooling.mode == mode and embedding.shape == (3, width)
    assert width == (1 if mode == "mean" else 2) * model.pooling.d_model
    assert model.head.mlp[0].in_features == width
    assert (batched - alone).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_analytic_macs_follow_the_pooling_and_the_counter_sees_it(name):
    counted_by_mode = {}
    for mode in POOLING_MODES:
        model = build_backbone(name, "tiny", DIM, CLASSES, pooling=mode)
        config = preset_config(name, "tiny") | {"pooling": mode}
        figures = costs.cost_figures(model, DIM, 201)
        expected = BACKBONES.get(name).extra["analytic_macs"](config, DIM, CLASSES, 201)
        assert figures["macs"] == expected and figures["flops"] == 2 * expected, mode
        counted_by_mode[mode] = figures["macs"]
    width = build_backbone(name, "tiny", DIM, CLASSES).pooling.d_model
    head = width // 2 if name == "speechformer" else CLASSES  # the head's first layer widens by ``width`` inputs
    assert counted_by_mode["meanstd"] - counted_by_mode["mean"] == width * head
    assert counted_by_mode["attentive"] > counted_by_mode["meanstd"]  # plus the frame scorer


def test_onnx_export_of_attentive_pooling_matches_pytorch(tmp_path):
    from bench.measure.onnx_io import export_onnx, graph_macs
    from bench.measure.probe import ort_session

    torch.manual_seed(0)
    model = build_backbone("convtransformer", "tiny", DIM, CLASSES, pooling="attentive").eval()
    path = tmp_path / "attentive.onnx"
    assert export_onnx(model, DIM, path, check_frames=(40, 120)) <= 1e-4
    session = ort_session(path, threads=1)
    features, _ = costs.example_input(DIM, 150)
    for length in (150, 61):  # whole, and mostly padding
        lengths = torch.tensor([length])
        with torch.no_grad():
            expected = model(features, lengths).numpy()
        actual = session.run(None, {"features": features.numpy(), "lengths": lengths.numpy()})[0]
        assert abs(actual - expected).max() <= 1e-4, length
    assert graph_macs(path.read_bytes(), DIM, 64)["macs"] == costs.count_macs(model, DIM, 64)


# --- methods that edit the model -----------------------------------------------------------------------


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 110, DIM, generator=generator), torch.tensor([110, 53, 21])


@pytest.mark.parametrize("mode", WIDE_MODES)
def test_pruning_a_residual_channel_removes_its_mean_and_its_std_input_of_the_head(mode):
    from methods.prune import dependency_graph

    model = build_backbone("convtransformer", "tiny", DIM, CLASSES, pooling=mode).eval()
    d = model.pooling.d_model
    head = model.head.mlp[0].weight.detach().clone()
    removed = [3, 7]
    graph = dependency_graph(model, DIM)
    graph.get_pruning_group(model.layers[0].ffn.w2, tp.prune_linear_out_channels, idxs=removed).prune()
    kept = [c for c in range(d) if c not in removed]
    assert model.pooling.d_model == d  # the attribute is the built width; the layers shrank
    assert model.final_norm.normalized_shape == (d - 2,)
    assert torch.equal(model.head.mlp[0].weight, head[:, kept + [d + c for c in kept]])
    if mode == "attentive":
        assert model.pooling.attention[0].in_features == d - 2 and model.pooling.attention[2].out_features == 1
    features, lengths = padded_batch()
    with torch.no_grad():
        batched = model(features, lengths)
        alone = model(features[2:, :21], lengths[2:])
    assert torch.allclose(batched[2:], alone, atol=1e-5)


@pytest.mark.parametrize("mode", WIDE_MODES)
def test_structured_pruning_meets_the_budget_and_shrinks_the_pooled_width(mode):
    from methods.prune import channel_scores, output_layer_names, prunable_units, prune_to_budget

    model = build_backbone("convtransformer", "tiny", DIM, CLASSES, pooling=mode).eval()
    keep = output_layer_names(model, DIM)
    units, skipped = prunable_units(model, DIM, keep)
    assert not skipped and any(u.name == "layers.0.ffn.w2" for u in units)  # the residual width is prunable
    target = costs.count_params(model) // 2
    pruned, reached, _ = prune_to_budget(model, DIM, units, channel_scores(units, "magnitude"), target,
                                         costs.count_params, keep)
    assert abs(reached - target) <= 0.05 * target and costs.count_params(pruned) == reached
    width = pruned.final_norm.normalized_shape[0]
    assert width < pruned.pooling.d_model and pruned.head.mlp[0].in_features == 2 * width
    features, lengths = padded_batch()
    with torch.no_grad():
        batched = pruned(features, lengths)
        alone = pruned(features[2:, :21], lengths[2:])
    assert torch.isfinite(batched).all() and torch.allclose(batched[2:], alone, atol=1e-4)


@pytest.mark.parametrize("mode", WIDE_MODES)
def test_low_rank_factorization_at_full_rank_and_at_a_budget(mode):
    from methods.lowrank import factorizable_layers, factorize_model

    model = build_backbone("convtransformer", "tiny", DIM, CLASSES, pooling=mode).eval()
    layers = factorizable_layers(model, set(output_layers(model, DIM)))
    assert "head.mlp.0" not in layers and ("pooling.attention.0" in layers) == (mode == "attentive")
    features, lengths = padded_batch()
    full = factorize_model(copy.deepcopy(model), {n: min(w.shape) for n, w in layers.items()}).eval()
    low = factorize_model(copy.deepcopy(model), {n: 2 for n, w in layers.items() if 2 * sum(w.shape) < w.numel()})
    with torch.no_grad():
        assert torch.allclose(full(features, lengths), model(features, lengths), atol=1e-5)
        assert torch.isfinite(low.eval()(features, lengths)).all()
    assert costs.count_params(low) < costs.count_params(model)
    assert costs.count_macs(low, DIM, 200) < costs.count_macs(model, DIM, 200)


@pytest.mark.parametrize("targets", ["ffn", "ffn+attn"])
@pytest.mark.parametrize("mode", WIDE_MODES)
def test_hrf_merge_is_exact(mode, targets):
    from methods.hrf import expand_model, merge_model

    torch.manual_seed(0)
    plain = build_backbone("convtransformer", "tiny", DIM, CLASSES, pooling=mode).eval()
    model = copy.deepcopy(plain)
    assert expand_model(model, 2.0, "default", targets) > 0
    model.eval()
    features, lengths = padded_batch()
    with torch.no_grad():
        expanded = model(features, lengths)
        merged = merge_model(model).eval()
        assert (merged(features, lengths) - expanded).abs().max().item() < 1e-5
    assert costs.count_params(merged) == costs.count_params(plain)
    assert costs.count_macs(merged, DIM, 200) == costs.count_macs(plain, DIM, 200)


@pytest.mark.parametrize("mode", WIDE_MODES)
def test_kd_embedding_width_is_the_pooled_width(mode):
    from methods.kd import embedding_width

    model = build_backbone("speechformer", "tiny", DIM, CLASSES, pooling=mode)
    assert embedding_width(model, DIM) == model.pooling.output_dim == 2 * model.pooling.d_model
