"""Every registered method on every backbone through the real runner (tiny preset, ``toy`` corpus,
three epochs: methods that fine-tune in steps, like iterative pruning, need one epoch per step); and
HRF's merge is exact on each backbone. Methods registered later join automatically: the matrix is
built from the registry at collection time."""

from __future__ import annotations

import math

import pytest
import torch

from bench.models import build_backbone
from bench.registry import METHODS, load_builtin_plugins
from bench.runner import RunSpec, Workspace, execute
from bench.train import TrainConfig
from conftest import TOY_DIM

load_builtin_plugins()
BACKBONE_NAMES = ["convtransformer", "conformer", "speechformer"]
TOY_PARAMS = {"speakers": 3, "per_speaker": 8}  # 8 train / 8 val / 8 test utterances per fold


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    """One cache per module, so tiny teachers are trained once per backbone and reused by methods."""
    return Workspace(tmp_path_factory.mktemp("matrix-cache"), progress=False)


def variable_length_batch(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([3, 41, 17])
    features = torch.randn(3, int(lengths.max()) + 5, dim)
    features[torch.arange(features.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return features, lengths


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("method", METHODS.names())
def test_method_runs_on_backbone(method, backbone, workspace):
    spec = RunSpec(method=method, backbone=backbone, preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=3, batch_size=8), dataset_params=TOY_PARAMS, teacher_preset="tiny")
    record = execute(spec, workspace)
    assert math.isfinite(record["ua"]) and 0.0 <= record["ua"] <= 1.0
    assert record["params"] > 0 and record["macs"] is not None and record["macs"] > 0
    model = record["_deploy_model"].eval()
    with torch.inference_mode():
        logits = model(*variable_length_batch(TOY_DIM))
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize("targets", ["ffn", "ffn+attn"])
@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_hrf_merge_is_exact(backbone, targets):
    """deHRF folds every expansion into its layer: same outputs, and exactly the plain model's size."""
    hrf = pytest.importorskip("methods.hrf", reason="the hrf method is not in this tree")
    torch.manual_seed(0)
    plain_params = sum(p.numel() for p in build_backbone(backbone, "tiny", TOY_DIM, 4).parameters())
    model = build_backbone(backbone, "tiny", TOY_DIM, 4)
    assert hrf.expand_model(model, 2.0, "default", targets) > 0
    model.eval()
    batch = variable_length_batch(TOY_DIM)
    with torch.no_grad():
        expanded = model(*batch)
        merged = hrf.merge_model(model)(*batch)
    assert (merged - expanded).abs().max().item() < 1e-5
    assert sum(p.numel() for p in model.parameters()) == plain_params
