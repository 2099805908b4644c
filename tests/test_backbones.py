"""The three backbones: presets, counted MACs against hand-derived formulas and their growth with
length, padding invariance, variable-length training, and the modules that methods look for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from torch import nn

from backbones.ffn import FeedForward
from bench.measure.costs import count_macs, count_params
from bench.training.models import build_backbone, preset_config
from bench.registry import BACKBONES
from bench.training.config import TrainConfig
from bench.training.evaluate import evaluate
from bench.training.splits import Split
from bench.training.trainer import fit
from conftest import ToyParams, load_toy

BACKBONE_NAMES = ["convtransformer", "conformer", "speechformer"]
PRESETS = ["tiny", "lightweight", "medium", "large"]
DIM, CLASSES = 80, 4


def analytic(name: str, preset: str, frames: int) -> int:
    return BACKBONES.get(name).extra["analytic_macs"](preset_config(name, preset), DIM, CLASSES, frames)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_presets_are_data_with_expected_size_ratio(name):
    presets = BACKBONES.get(name).extra["presets"]
    assert set(PRESETS) <= set(presets)
    assert all(isinstance(config, dict) for config in presets.values())
    params = {p: count_params(build_backbone(name, p, DIM, CLASSES)) for p in PRESETS}
    assert params["tiny"] < params["lightweight"] < params["medium"] < params["large"]
    ratio = params["large"] / params["lightweight"]
    # SpeechFormer follows the paper (small 1.06 M vs base 2.10 M); the others a lightweight/large gap.
    assert 1.8 < ratio < 2.2 if name == "speechformer" else 8 <= ratio <= 20


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_counted_macs_match_analytic_formula(name, preset):
    model = build_backbone(name, preset, DIM, CLASSES)
    for seconds in (2, 5):
        frames = 100 * seconds + 1  # 10 ms hop, centered STFT
        counted, expected = count_macs(model, DIM, frames), analytic(name, preset, frames)
        assert abs(counted - expected) <= 0.01 * expected, (seconds, counted, expected)


def _head_macs(name: str, config: dict) -> int:
    if name != "speechformer":
        return config["d_model"] * CLASSES
    d = config["d_model"] * config["expand"][2]
    return d * (d // 2) + (d // 2) * (d // 4) + (d // 4) * CLASSES


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_macs_grow_quadratically_with_global_attention_and_linearly_with_windows(name):
    """Doubling a length that every stride, window and merge divides: all linear terms cancel in
    ``macs(2L) - 2 macs(L)``, leaving the global attention's score and context matmuls
    (2 d T^2 per layer) minus the length-independent head."""
    config = preset_config(name, "lightweight")
    model = build_backbone(name, "lightweight", DIM, CLASSES)
    short, long = 1800, 3600  # 18 s and 36 s: divisible by 4 (subsampling) and 5*5*4*9 (SpeechFormer)
    excess = count_macs(model, DIM, long) - 2 * count_macs(model, DIM, short)
    if name == "speechformer":  # only stage 4 is global, over 1 s tokens: 18 and 36 of them
        layers, width, tokens = config["layers"][3], config["d_model"] * config["expand"][2], short // 100
    else:
        layers, width, tokens = config["num_layers"], config["d_model"], short // 4
    quadratic = layers * 2 * width * ((2 * tokens) ** 2 - 2 * tokens ** 2)
    assert excess == quadratic - _head_macs(name, config)
    share = quadratic / count_macs(model, DIM, long)
    # Windowed stages keep SpeechFormer nearly linear; global attention is a visible share elsewhere.
    assert share < 0.005 if name == "speechformer" else share > 0.1


def _padded_batch(items: list[torch.Tensor], extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(T_i, F)`` items into ``(B, max T + extra, F)`` padded with large noise, not zeros."""
    total = max(len(x) for x in items) + extra
    batch = 10 * torch.randn(len(items), total, items[0].shape[1])
    for row, x in zip(batch, items):
        row[: len(x)] = x
    return batch, torch.tensor([len(x) for x in items])


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_output_does_not_depend_on_batch_padding(name):
    torch.manual_seed(0)
    # Lengths that no subsampling (4), window (5, 9) or merge (5, 5, 4) factor divides, and a 1-frame one.
    lengths = [1, 7, 37, 123, 251]
    items = [torch.randn(n, DIM) for n in lengths]
    for preset in ("tiny", "lightweight"):
        model = build_backbone(name, preset, DIM, CLASSES).eval()
        with torch.no_grad():
            alone = torch.cat([model(x[None], torch.tensor([len(x)])) for x in items])
            for extra in (0, 29):
                batched = model(*_padded_batch(items, extra))
                assert (batched - alone).abs().max().item() < 1e-5, (preset, extra)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_padded_frames_get_no_gradient(name):
    """In eval mode padded input frames cannot influence any output, so their gradient is exactly 0."""
    torch.manual_seed(0)
    model = build_backbone(name, "tiny", DIM, CLASSES).eval()
    features, lengths = _padded_batch([torch.randn(n, DIM) for n in (11, 64, 3)], extra=6)
    features.requires_grad_(True)
    model(features, lengths).sum().backward()
    padded = torch.arange(features.shape[1])[None, :] >= lengths[:, None]
    assert features.grad[padded].abs().max() == 0
    assert features.grad[~padded].abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_trains_on_variable_length_batches(name):
    torch.manual_seed(0)
    model = build_backbone(name, "tiny", DIM, CLASSES).train()
    features, lengths = _padded_batch([torch.randn(n, DIM) for n in (1, 13, 57, 90)], extra=0)
    labels = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(features, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_methods_find_ffns_and_attentions(name):
    config = preset_config(name, "lightweight")
    model = build_backbone(name, "lightweight", DIM, CLASSES)
    ffns = [m for m in model.modules() if isinstance(m, FeedForward)]
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    layers = sum(config["layers"]) if name == "speechformer" else config["num_layers"]
    assert len(attentions) == layers
    assert len(ffns) == (2 * layers if name == "conformer" else layers)  # Conformer: two half-step FFNs
    # Every FFN weight is reachable through w1/w2: nothing of the encoders' FFNs is hidden elsewhere.
    assert not any(type(m).__name__ == "_FeedForwardModule" for m in model.modules())


def test_speechformer_learns_at_the_benchmark_learning_rate(tmp_path):
    """The paper-size SpeechFormer (12 post-LN layers) trains at the default lr 2e-3: with plain
    post-LN layers it stalled near chance on this corpus; DeepNorm keeps it learning."""
    corpus = load_toy(None, tmp_path, ToyParams())
    fold = corpus.fold(1)

    def split(indices):
        utterances = [corpus.utterances[i] for i in indices]
        return Split([torch.from_numpy(np.load(u.features)) for u in utterances],
                     torch.tensor([corpus.label_index(u) for u in utterances]))

    torch.manual_seed(0)
    model = build_backbone("speechformer", "lightweight", 16, 4)
    fit(model, split(fold.train), split(fold.val), 4, TrainConfig(epochs=3, batch_size=16), seed=0, progress=False)
    assert evaluate(model, split(fold.test), 4)["ua"] > 0.9


CONV_FRONT_ENDS = [name for name in BACKBONE_NAMES if name != "speechformer"]


@pytest.mark.parametrize("name", CONV_FRONT_ENDS)
def test_delta_channels_cost_the_first_convolution_only_and_keep_padding_invariance(name):
    torch.manual_seed(0)
    plain, dynamic = (build_backbone(name, "lightweight", DIM, CLASSES, deltas=d) for d in (0, 2))
    conv1 = dynamic.subsampling.conv1
    assert conv1.in_channels == 3
    assert count_params(dynamic) - count_params(plain) == 2 * conv1.out_channels * 9
    config = preset_config(name, "lightweight") | {"deltas": 2}
    counted = count_macs(dynamic, DIM, 501)
    expected = BACKBONES.get(name).extra["analytic_macs"](config, DIM, CLASSES, 501)
    assert abs(counted - expected) <= 0.01 * expected and counted > count_macs(plain, DIM, 501)
    items = [torch.randn(n, DIM) for n in (1, 7, 37, 123)]
    dynamic.eval()
    with torch.no_grad():
        alone = torch.cat([dynamic(x[None], torch.tensor([len(x)])) for x in items])
        batched = dynamic(*_padded_batch(items, 29))
    assert (batched - alone).abs().max().item() < 1e-5


def test_the_delta_channel_is_the_five_frame_regression_slope():
    from backbones.convtransformer import time_delta

    x = torch.randn(2, 40, 8)
    padded = torch.cat([torch.zeros(2, 2, 8), x, torch.zeros(2, 2, 8)], dim=1)  # zeros beyond the frames
    slope = sum(n * (padded[:, 2 + n:42 + n] - padded[:, 2 - n:42 - n]) for n in (1, 2)) / 10
    torch.testing.assert_close(time_delta(x), slope)
    replicated = torchaudio.functional.compute_deltas(x.transpose(1, 2), win_length=5).transpose(1, 2)
    torch.testing.assert_close(time_delta(x)[:, 2:-2], replicated[:, 2:-2], rtol=1e-5, atol=1e-5)  # same inside
