"""ExpandNets: linear and convolution chains train in place of each layer and fold exactly back into the
plain preset model on every backbone; the method runs where a grid names it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.execution.grid import make_grid
from bench.training.models import build_backbone
from bench.registry import BACKBONES, load_builtin_plugins
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from conftest import TOY_DIM
from methods.expandnets import ConvChain, LinearChain, expand_model, merge_model

load_builtin_plugins()
BACKBONE_NAMES = [n for n in BACKBONES.names() if BACKBONES.get(n).obj.__module__.startswith("backbones.")]


@pytest.mark.parametrize("targets", ["fc+conv", "fc"])
@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_folding_is_exact_and_leaves_the_plain_model(backbone, targets):
    torch.manual_seed(0)
    plain = build_backbone(backbone, "tiny", TOY_DIM, 4)
    model = build_backbone(backbone, "tiny", TOY_DIM, 4)
    counts = expand_model(model, 2.0, targets)
    assert counts["linear"] == sum(isinstance(m, LinearChain) for m in model.modules()) > 0
    assert counts["conv"] == sum(isinstance(m, ConvChain) for m in model.modules())
    assert counts["conv"] == 0 or targets == "fc+conv"
    lengths = torch.tensor([3, 41, 17])
    features = torch.randn(3, int(lengths.max()) + 5, TOY_DIM)
    with torch.no_grad():
        expanded = model.eval()(features, lengths)
        merged = merge_model(model)(features, lengths)
        plain.load_state_dict(model.state_dict())  # the folded model is the plain one, tensor for tensor
        plain_out = plain.eval()(features, lengths)
    assert (merged - expanded).abs().max() < 1e-5 and (plain_out - merged).abs().max() < 1e-6
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]


@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), (2, 2, 2)])
def test_a_convolution_chain_folds_into_one_kernel_with_its_stride_padding_and_layout(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=padding, dilation=dilation).to(memory_format=torch.channels_last)
    chain = ConvChain(conv, 3.0)
    assert [layer.kernel_size for layer in chain.layers] == [(1, 1), (3, 3), (1, 1)]
    assert chain.layers[0].bias is None  # exact under zero padding
    x = torch.randn(2, 3, 17, 12)
    with torch.no_grad():
        merged = chain.merged()
        assert (merged(x) - chain(x)).abs().max() < 1e-5
    assert merged.weight.shape == conv.weight.shape and merged.stride == conv.stride
    assert merged.weight.is_contiguous(memory_format=torch.channels_last)
    one_d = ConvChain(nn.Conv1d(4, 6, 5, padding=2), 2.0)
    signal = torch.randn(2, 4, 30)
    with torch.no_grad():
        assert (one_d.merged()(signal) - one_d(signal)).abs().max() < 1e-5


def test_it_runs_where_named_and_not_in_grids_that_name_no_methods(cache_dir):
    assert "expandnets" not in make_grid({}).method_names()
    assert make_grid({"methods": ["expandnets"]}).method_names() == ["expandnets"]
    spec = RunSpec(method="expandnets", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=2, batch_size=16, lr=3e-3))
    record = execute(spec, Workspace(cache_dir, progress=False, defer_latency=True))
    assert record["status"] == "ok" and record["expandnets_conv_layers"] == 2
    assert record["expandnets_train_params"] > record["expandnets_deploy_params"] == record["params"]
