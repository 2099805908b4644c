"""RepAdapter: the residual bottleneck trains (from the identity), folds exactly into the layer it feeds on
every backbone, and the deployed model is the plain preset model."""

from __future__ import annotations

import pytest
import torch

from bench.training.models import build_backbone
from bench.registry import BACKBONES, BenchError, load_builtin_plugins
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from conftest import TOY_DIM
from methods.repadapter import AdaptedAttention, AdaptedLinear, adapt_model, merge_model

load_builtin_plugins()
BACKBONE_NAMES = [n for n in BACKBONES.names() if BACKBONES.get(n).obj.__module__.startswith("backbones.")]


def batch(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([3, 41, 17])
    features = torch.randn(3, int(lengths.max()) + 5, dim)
    return features, lengths


@pytest.mark.parametrize("targets", ["attn+ffn", "ffn"])
@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_folding_is_exact_and_leaves_the_plain_model(backbone, targets):
    torch.manual_seed(0)
    plain = build_backbone(backbone, "tiny", TOY_DIM, 4)
    model = build_backbone(backbone, "tiny", TOY_DIM, 4)
    adapted = adapt_model(model, 0.5, targets)
    attentions = sum(isinstance(m, AdaptedAttention) for m in model.modules())
    assert adapted == attentions + sum(isinstance(m, AdaptedLinear) for m in model.modules()) > 0
    assert (attentions > 0) == (targets == "attn+ffn")
    with torch.no_grad():
        features, lengths = batch(TOY_DIM)
        model.eval()
        identity = model(features, lengths)  # B = 0: the adapters start as the identity
        for name, parameter in model.named_parameters():
            if "adapter.up" in name:
                parameter.normal_(std=0.2)  # as after training: adapters that change the function
        adapted_out = model(features, lengths)
        merged = merge_model(model)(features, lengths)
        plain.load_state_dict(model.state_dict())  # the folded model is the plain one, tensor for tensor
        plain_out = plain.eval()(features, lengths)
    assert (adapted_out - identity).abs().max() > 1e-3
    assert (merged - adapted_out).abs().max() < 1e-5 and (plain_out - merged).abs().max() < 1e-6
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]


def test_a_run_trains_the_adapters_and_records_what_it_folded(cache_dir):
    spec = RunSpec(method="repadapter", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=3, batch_size=16, lr=3e-3))
    record = execute(spec, Workspace(cache_dir, progress=False, defer_latency=True))
    assert record["status"] == "ok" and record["ua"] > 0.5
    assert record["repadapter_adapted_layers"] == 2  # one layer: its attention input and its FFN
    assert record["repadapter_train_params"] > record["repadapter_deploy_params"] == record["params"]
    assert record["fit_flops"] > 0 and record["repadapter_bottleneck_ratio"] == 0.25


def test_cross_attention_is_refused_with_one_line():
    attention = AdaptedAttention(torch.nn.MultiheadAttention(8, 2, batch_first=True), 4)
    query, memory = torch.randn(1, 5, 8), torch.randn(1, 7, 8)
    with pytest.raises(BenchError, match="needs self-attention"):
        attention(query, memory, memory)
