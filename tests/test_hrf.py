"""HRF re-parameterization: the deHRF merge is exact (a property over random shapes, ratios, seeds,
inits, targets and every registered backbone), the merged model is the plain preset in structure,
parameters and MACs, the ``equivalent`` init starts from the plain function, bad parameters are
one-line errors, and real tiny training runs move the expansions, merge into a deploy model with the
trained model's outputs that beats chance on the separable toy corpus, and record their rows."""

from __future__ import annotations

import copy
import random

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from backbones.ffn import FeedForward
from backbones.layers import EncoderLayer
import bench
from bench.cli.main import main
from bench.execution.grid import make_grid, run_grid
from bench.measure.costs import count_macs, count_params
from bench.training.models import build_backbone
from bench.registry import BACKBONES, METHODS, BenchError
from bench.reporting.results import RecordStore
from bench.execution.context import RunContext
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from bench.training.evaluate import evaluate
from methods.hrf import ExpandedAttention, ExpandedLinear, expand_model, merge_model

RATIOS = [0.3, 0.5, 1.0, 1.7, 2.5, 4.0, 7.3]
INPUT_DIM, FRAMES = 40, 120


def perturb(model: nn.Module, seed: int) -> None:
    """Stand-in for training: move every parameter (zero biases of H included) off its init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def smallest_preset(backbone: str) -> str:
    presets = BACKBONES.get(backbone).extra["presets"]
    return "tiny" if "tiny" in presets else next(iter(presets))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, FRAMES, INPUT_DIM, generator=generator), torch.tensor([FRAMES, 77, 31])


def assert_same_structure(merged: nn.Module, plain: nn.Module) -> None:
    assert [type(m) for m in merged.modules()] == [type(m) for m in plain.modules()]
    assert {k: v.shape for k, v in merged.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    fresh = copy.deepcopy(plain)
    fresh.load_state_dict(merged.state_dict(), strict=True)


def random_layer_cases(count: int = 12):
    rng = random.Random(1234)
    for case in range(count):
        heads = rng.choice([1, 2, 4])
        yield pytest.param(dict(d_model=heads * rng.randint(2, 12), num_heads=heads, ffn_dim=rng.randint(4, 96),
                                pre_norm=rng.random() < 0.5, activation=rng.choice(["relu", "gelu", "silu"])),
                           rng.choice(RATIOS), rng.choice(["default", "equivalent"]), rng.choice(["ffn", "ffn+attn"]),
                           case, id=f"case{case}")


@pytest.mark.parametrize("shape, ratio, init, targets, seed", random_layer_cases())
def test_merge_is_exact_for_random_encoder_layers(shape, ratio, init, targets, seed):
    torch.manual_seed(seed)
    plain = EncoderLayer(shape["d_model"], shape["num_heads"], shape["ffn_dim"], pre_norm=shape["pre_norm"],
                         activation=shape["activation"])
    model = copy.deepcopy(plain)
    expanded = expand_model(model, ratio, init, targets)
    assert expanded == (3 if targets == "ffn+attn" else 1)
    assert isinstance(model.ffn.w1, ExpandedLinear)
    assert isinstance(model.attn, ExpandedAttention) == (targets == "ffn+attn")
    perturb(model, seed)
    model.eval()
    x = torch.randn(2, 9, shape["d_model"])
    mask = torch.tensor([[False] * 9, [False] * 5 + [True] * 4])
    with torch.no_grad():
        before = model(x, mask)
        merged = merge_model(model).eval()
        after = merged(x, mask)
    assert relative_error(after, before) <= 1e-5
    assert_same_structure(merged, plain)
    assert count_params(merged) == count_params(plain)


@pytest.mark.parametrize("ratio, init", [(0.5, "default"), (2.3, "equivalent")])
def test_merge_is_exact_for_attention_without_bias_with_bias_kv_not_batch_first(ratio, init):
    torch.manual_seed(0)
    plain = nn.ModuleDict({"ffn": FeedForward(12, 20, pre_norm=True),
                           "attn": nn.MultiheadAttention(12, 3, bias=False, add_bias_kv=True)})
    model = copy.deepcopy(plain)
    expand_model(model, ratio, init, "ffn+attn")
    perturb(model, 1)
    model.eval()
    query, memory = torch.randn(5, 2, 12), torch.randn(7, 2, 12)  # (L, B, E): cross-attention
    with torch.no_grad():
        out, weights = model["attn"](query, memory, memory)
        ffn_out = model["ffn"](query)
        merge_model(model).eval()
        merged_out, merged_weights = model["attn"](query, memory, memory)
        assert relative_error(model["ffn"](query), ffn_out) <= 1e-5
    assert relative_error(merged_out, out) <= 1e-5 and relative_error(merged_weights, weights) <= 1e-5
    assert_same_structure(model, plain)


@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("init", ["default", "equivalent"])
@pytest.mark.parametrize("targets", ["ffn", "ffn+attn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_merge_is_exact_for_every_backbone(backbone, init, targets, seed):
    ratio = random.Random(f"{backbone}{init}{targets}{seed}").choice(RATIOS)
    preset = smallest_preset(backbone)
    torch.manual_seed(seed)
    plain = build_backbone(backbone, preset, INPUT_DIM, 4).eval()
    model = copy.deepcopy(plain)
    expand_model(model, ratio, init, targets)
    train_params = count_params(model)
    perturb(model, seed)
    model.eval()
    features, lengths = batch(seed)
    with torch.no_grad():
        before = model(features, lengths)
        merged = merge_model(model).eval()
        after = merged(features, lengths)
    assert relative_error(after, before) <= 1e-5, f"r={ratio}"
    assert_same_structure(merged, plain)
    assert count_params(merged) == count_params(plain) != train_params
    assert count_macs(merged, INPUT_DIM, FRAMES) == count_macs(plain, INPUT_DIM, FRAMES)


@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("targets", ["ffn", "ffn+attn"])
def test_equivalent_init_starts_from_the_plain_function(backbone, targets):
    preset = smallest_preset(backbone)
    features, lengths = batch(0)
    torch.manual_seed(0)
    plain = build_backbone(backbone, preset, INPUT_DIM, 4).eval()
    with torch.no_grad():
        reference = plain(features, lengths)
        for ratio in (1.0, 1.5, 4.0):
            model = copy.deepcopy(plain)
            expand_model(model, ratio, "equivalent", targets)
            assert relative_error(model.eval()(features, lengths), reference) <= 1e-5
        default = copy.deepcopy(plain)
        expand_model(default, 4.0, "default", targets)
        assert relative_error(default.eval()(features, lengths), reference) > 1e-3  # a different function


@pytest.mark.parametrize("overrides, message", [
    ({"expansion_ratio": "0"}, "must be > 0.0"),
    ({"expansion_ratio": -1.5}, "must be > 0.0"),
    ({"expansion_ratio": "wide"}, "not a valid float"),
    ({"targets": "attn"}, "must be one of ['ffn', 'ffn+attn']"),
    ({"init": "xavier"}, "must be one of ['default', 'equivalent']"),
])
def test_invalid_parameters_are_bench_errors(overrides, message):
    with pytest.raises(BenchError) as error:
        METHODS.get("hrf").make_params(overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("param", ["hrf.expansion_ratio=0", "hrf.targets=everything"])
def test_invalid_parameters_on_the_command_line_exit_2(tmp_path, param):
    result = CliRunner().invoke(main, ["run", "--methods", "hrf", "--datasets", "toy", "--presets", "tiny", "-p", param,
                                       "--results-dir", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: parameter"), result.stderr


HRF_PARAMS = {"expansion_ratio": 2.5, "targets": "ffn+attn", "init": "equivalent"}
EPOCHS = 8  # enough for the tiny model to separate the toy classes (UA 0.81-1.0 over seeds 0-2)


def test_trained_expansions_merge_into_a_deploy_model_with_the_same_outputs(cache_dir):
    """Through the method's own hooks on a real fold: training moves H, and the merged deploy model
    gives the trained model's logits on every test utterance and beats chance (4 classes)."""
    spec = RunSpec(method="hrf", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=EPOCHS), method_params={"hrf": HRF_PARAMS})
    workspace = Workspace(cache_dir, progress=False, defer_latency=True)
    data = workspace.fold_data(spec)
    ctx = RunContext(spec, data, workspace)
    entry = METHODS.get("hrf")
    method = entry.obj(entry.make_params(HRF_PARAMS))
    model = method.build(ctx, None)
    initial = copy.deepcopy(model)
    model = method.train(model, ctx)
    expansions = [(n, m) for n, m in model.named_modules() if isinstance(m, ExpandedLinear)]
    assert expansions and all(not torch.equal(m.expand.weight, initial.get_submodule(n).expand.weight)
                              for n, m in expansions)
    trained = copy.deepcopy(model).eval()
    deployed = method.deploy(model, ctx).eval()
    assert not any(isinstance(m, (ExpandedLinear, ExpandedAttention)) for m in deployed.modules())
    with torch.no_grad():
        for features, label in zip(data.test.features, data.test.labels):
            lengths = torch.tensor([len(features)])
            expected = trained(features[None], lengths)
            assert relative_error(deployed(features[None], lengths), expected) < 1e-4
    assert evaluate(deployed, data.test, data.num_classes)["ua"] >= 0.6


def test_training_run_records_hrf_and_baseline_rows(tmp_path, cache_dir):
    grid = make_grid({"methods": ["baseline", "hrf"], "backbones": ["convtransformer"], "presets": ["tiny"],
                      "datasets": ["toy"], "folds": [1], "seeds": [0], "train": {"epochs": EPOCHS}, "method_params": {"hrf": HRF_PARAMS}})
    store = RecordStore(tmp_path / "results")
    records = run_grid(grid, store, cache_dir, progress=False)
    table = pd.read_csv(store.root / "runs.csv").set_index("method")
    assert sorted(table.index) == ["baseline", "hrf"] and len(records) == 2
    hrf, baseline = table.loc["hrf"], table.loc["baseline"]
    assert hrf["params"] == baseline["params"] == hrf["hrf_deploy_params"]
    assert hrf["macs"] == baseline["macs"]
    assert hrf["train_params"] == hrf["hrf_train_params"] > hrf["params"]
    assert (hrf["hrf_expansion_ratio"], hrf["hrf_init"], hrf["hrf_targets"]) == (2.5, "equivalent", "ffn+attn")
    assert hrf["ua"] >= 0.6 and hrf["val_ua"] >= 0.5  # chance is 0.25
    deployed = bench.load_model(hrf["run_id"], store.root)
    plain = build_backbone("convtransformer", "tiny", 16, 4)  # the toy corpus: 16-d features, 4 classes
    plain.load_state_dict(deployed.state_dict(), strict=True)
    assert_same_structure(deployed, plain)
    test = Workspace(cache_dir, progress=False).fold_data(RunSpec(
        method="hrf", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0)).test
    assert evaluate(deployed, test, 4)["ua"] == pytest.approx(hrf["ua"])  # the record scores the saved model
