"""Every registered method on every backbone through the real runner at the default setting: the
``lightweight`` deploy preset, shrunk from or taught by the ``large`` model (trained once per
backbone: the cache is shared by the module), on the ``toy`` corpus for one epoch. The recorded
parameters, MACs and FLOPs must equal an independent count of the deploy model (state_dict entries;
forward hooks on every layer with hand formulas), MACs must equal the backbone's analytic formula
wherever the deploy model is the plain preset, budgets must be met within 5 %, and the training
time must be split into the method's own and that of the cached models it reused. Methods registered
later join automatically. And HRF's merge is exact on each backbone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench import schema

from bench.measure import costs
from bench.measure.budget import TOLERANCE
from bench.training.models import build_backbone, preset_config
from bench.registry import BACKBONES, METHODS, load_builtin_plugins
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from conftest import TOY_CLASSES, TOY_DIM
from methods.svm import FunctionalSVM

load_builtin_plugins()
BACKBONE_NAMES = [n for n in BACKBONES.names() if BACKBONES.get(n).obj.__module__.startswith("backbones.")]
TOY_PARAMS = {"speakers": 3, "per_speaker": 8}  # 8 train / 8 val / 8 test utterances per fold
PLAIN_METHODS = {n for n in METHODS.names() if METHODS.get(n).obj.deploys_preset_model}  # as each declares
BUDGET_KINDS = {"prune": "params", "lowrank": "params", "prune-unstructured": "nonzero_params"}
INT8_METHODS = {"quant"}  # deployed as int8: only the parameter count is the float model's, whatever the scheme


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(method, backbone, preset="lightweight")`` -> its record (with ``_deploy_model``), each
    executed once per module on one cache, so the large model of a backbone is trained once."""
    workspace = Workspace(tmp_path_factory.mktemp("matrix-cache"), progress=False, defer_latency=True)
    records = {}

    def run_once(method: str, backbone: str, preset: str = "lightweight") -> dict:
        if (method, backbone, preset) not in records:
            spec = RunSpec(method=method, backbone=backbone, preset=preset, dataset="toy", fold=1, seed=0,
                           train=TrainConfig(epochs=1, batch_size=8), dataset_params=TOY_PARAMS)
            records[method, backbone, preset] = execute(spec, workspace)
        return records[method, backbone, preset]
    return run_once


def plain_model(backbone: str, preset: str = "lightweight") -> nn.Module:
    return build_backbone(backbone, preset, TOY_DIM, len(TOY_CLASSES))


def state_dict_params(model: nn.Module, nonzero: bool = False) -> int:
    """Parameters as shipped: the state_dict's entries that are not buffers (BatchNorm statistics)."""
    buffers = {name for name, _ in model.named_buffers()}
    return sum(int((t != 0).sum()) if nonzero else t.numel() for name, t in model.state_dict().items()
               if name not in buffers)


def hooked_macs(model: nn.Module, input_dim: int, frames: int) -> int:
    """MACs of one forward pass (batch 1) counted layer by layer from the shapes each layer sees:
    Linear in x out per token, convolution (in / groups) x kernel per output element, attention 2 x E
    per query and key pair (scores and context) plus, where ``nn.MultiheadAttention`` projects
    internally, E per input element for each of q, k, v and the output projection; the classical SVM:
    the sums of the frames and of their squares (T x F each) and those of the T - 1 deltas, each support
    vector against the standardized functionals (D x S), the dual coefficients of every class pair
    (S x P), and the votes and confidences of every pair for every class (3 x P x C)."""
    counted = []

    def svm(module, args, output):
        batch, steps, width = args[0].shape
        support, dim = module.support_vectors.shape
        pairs, classes = module.pair_sign.shape
        sums = 2 * steps * width + 2 * max(steps - 1, 1) * width if module.functionals == "stats" else 0
        counted.append(batch * (sums + dim * support + support * pairs + 3 * pairs * classes))

    def linear(module, args, output):
        counted.append(args[0].numel() * module.out_features)

    def convolution(module, args, output):
        counted.append(output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size))

    def attention(module, args, kwargs, output):
        query, key, value = (*args, *(kwargs[k] for k in ("query", "key", "value") if k in kwargs))[:3]
        width = module.embed_dim
        keys = key.shape[1 if module.batch_first and key.dim() == 3 else 0]
        counted.append(2 * query.numel() * keys)  # numel(query) = queries x E
        if module.in_proj_weight is not None:  # F.multi_head_attention_forward projects without modules
            counted.append((query.numel() + key.numel() + value.numel()) * width + query.numel() * width)

    hooks = []
    for module in model.modules():
        if isinstance(module, FunctionalSVM):
            hooks.append(module.register_forward_hook(svm))
        elif isinstance(module, nn.MultiheadAttention):
            hooks.append(module.register_forward_hook(attention, with_kwargs=True))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            hooks.append(module.register_forward_hook(convolution))
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, frames, input_dim, generator=generator)
    try:
        with torch.no_grad():
            model.eval()(features, torch.tensor([frames]))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted)


def variable_length_batch(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([3, 41, 17])
    features = torch.randn(3, int(lengths.max()) + 5, dim)
    features[torch.arange(features.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return features, lengths


def is_plain(model: nn.Module, backbone: str) -> bool:
    """Whether ``model`` has exactly the plain lightweight model's modules and tensor shapes."""
    plain = plain_model(backbone)
    return ([type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
            and {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()})


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("method", METHODS.names())
def test_recorded_costs_are_the_deploy_models_true_costs(method, backbone, run):
    record = run(method, backbone)
    assert record["status"] == "ok" and math.isfinite(record["ua"]) and 0.0 <= record["ua"] <= 1.0
    written = {k: v for k, v in record.items() if k != "_deploy_model"} | {"worker": "w", "schema_version": 1,
                                                                            "checksum": ""}
    assert schema.problems(written) == []  # every field declared, by the harness or the method
    model = record["_deploy_model"].model.eval()
    with torch.inference_mode():
        logits = model(*variable_length_batch(TOY_DIM))
    assert logits.shape == (3, len(TOY_CLASSES)) and torch.isfinite(logits).all()
    light = state_dict_params(plain_model(backbone))
    if method in INT8_METHODS:
        assert record["params"] == light
        return
    frames = record["input_frames"]
    assert record["params"] == state_dict_params(model)
    assert record["nonzero_params"] == state_dict_params(model, nonzero=True)
    macs = hooked_macs(model, TOY_DIM, frames)
    assert record["macs"] == macs and record["flops"] == 2 * macs
    if method in PLAIN_METHODS:
        assert is_plain(model, backbone), f"{method} should deploy the plain lightweight model"
    if is_plain(model, backbone):
        analytic = BACKBONES.get(backbone).extra["analytic_macs"](preset_config(backbone, "lightweight"), TOY_DIM,
                                                                   len(TOY_CLASSES), frames)
        assert abs(record["macs"] - analytic) <= 0.01 * analytic, (record["macs"], analytic)
    if method in BUDGET_KINDS:
        reached = record["nonzero_params" if BUDGET_KINDS[method] == "nonzero_params" else "params"]
        assert record["budget_source"] == "preset lightweight" and record["budget_target"] == light
        assert record["budget_reached"] == reached and abs(reached - light) <= TOLERANCE * light
        assert record["source_params"] == state_dict_params(plain_model(backbone, "large"))


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_training_time_is_split_into_own_and_reused(backbone, run):
    """The method's own training is ``fit_seconds``; the cached models it starts from or learns from
    count as ``reused_fit_seconds``, exactly the training time their own baseline records state."""
    large, light = run("baseline", backbone, "large"), run("baseline", backbone)
    assert large["fit_seconds"] > 0 and large["reused_fit_seconds"] == 0
    quant = run("quant", backbone)
    assert quant["fit_seconds"] == 0 and quant["reused_fit_seconds"] == light["fit_seconds"]
    for method in ("kd", "prune", "lowrank", "prune-unstructured"):
        record = run(method, backbone)
        assert record["reused_fit_seconds"] == large["fit_seconds"], method
        assert 0 < record["fit_seconds"] < record["wall_seconds"], method
    hrf = run("hrf", backbone)
    assert hrf["fit_seconds"] > 0 and hrf["reused_fit_seconds"] == 0


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_training_flops_are_those_of_the_model_that_trains(backbone, run, tmp_path):
    """``fit_flops``: 3 x the forward FLOPs of the model that trains (plus a teacher's forward) at the
    training split's mean length x utterances x epochs; the cached models a run builds on count as
    ``reused_fit_flops``, exactly what their own records state."""
    light, large = run("baseline", backbone), run("baseline", backbone, "large")
    spec = RunSpec(method="baseline", backbone=backbone, preset="lightweight", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=1, batch_size=8), dataset_params=TOY_PARAMS)
    train = Workspace(tmp_path, progress=False).fold_data(spec).train
    frames = round(sum(f.shape[0] for f in train.features) / len(train))
    forward = {p: 2 * costs.count_macs(plain_model(backbone, p), TOY_DIM, frames) for p in ("lightweight", "large")}
    assert light["fit_flops"] == 3 * forward["lightweight"] * len(train) and light["reused_fit_flops"] == 0
    assert large["fit_flops"] == 3 * forward["large"] * len(train)
    kd = run("kd", backbone)  # the student trains, the teacher runs forward on every batch
    assert kd["fit_flops"] >= (3 * forward["lightweight"] + forward["large"]) * len(train)  # + its projection
    assert kd["reused_fit_flops"] == large["fit_flops"]
    hrf = run("hrf", backbone)  # the expanded model trains: more than the plain one
    assert hrf["fit_flops"] > light["fit_flops"] and hrf["reused_fit_flops"] == 0
    quant = run("quant", backbone)
    assert quant["fit_flops"] == 0 and quant["reused_fit_flops"] == light["fit_flops"]


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
