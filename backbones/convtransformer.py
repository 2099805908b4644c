"""ConvTransformer: 2x Conv2d(3x3, stride 2) subsampling, projection, sinusoidal positions,
pre-LN Transformer encoder with padding masks, statistics pooling (:class:`backbones.layers.StatsPooling`:
mean, mean + std, or attentive mean + std) and a linear head.

Presets (80-d log-mel input, 4 classes): ``lightweight`` about 0.22 M parameters and 59 M MACs for
5 s, ``large`` about 1.9 M (8.6x) and 289 M MACs. The analytic MAC formulas of the shared pieces
(subsampling front-end, attention, FFN) live here and are reused by the other backbones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from backbones.layers import (ClassifierHead, EncoderLayer, StatsPooling, padding_mask, pooled_width,
                              pooling_macs, sinusoidal_positions)
from bench.registry import BACKBONES

__all__ = ["ConvTransformer", "ConvSubsampling", "attention_macs", "ffn_macs", "subsampling_macs"]

PRESETS = {
    "tiny": dict(d_model=32, num_layers=1, num_heads=2, ffn_dim=64, conv_channels=8, pooling="mean"),
    "lightweight": dict(d_model=96, num_layers=2, num_heads=4, ffn_dim=192, conv_channels=32, pooling="mean"),
    "medium": dict(d_model=128, num_layers=3, num_heads=4, ffn_dim=384, conv_channels=32, pooling="mean"),
    "large": dict(d_model=192, num_layers=4, num_heads=4, ffn_dim=768, conv_channels=32, pooling="mean"),
}


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after one Conv2d(kernel 3, stride 2, padding 1): ceil(n / 2)."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


def time_delta(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, F)`` -> ``(B, T, F)``: the regression slope over 5 frames, ``sum_n n (x[t+n] - x[t-n]) / 10``
    for n = 1, 2 (torchaudio's ``compute_deltas``), with zeros beyond the frames given."""
    padded = nn.functional.pad(x, (0, 0, 2, 2))
    return (padded[:, 3:-1] - padded[:, 1:-3] + 2 * (padded[:, 4:] - padded[:, :-4])) / 10


class ConvSubsampling(nn.Module):
    """``(B, T, F)`` features -> ``(B, ceil(ceil(T/2)/2), channels * ceil(ceil(F/2)/2))``.

    With ``deltas`` 1 or 2 the first convolution reads the frames' delta (and delta-delta) as further
    input channels beside the frames, computed here (no weights; a few element-wise operations):
    the rate at which the spectrum changes separates emotions such as boredom and neutral speech
    that its level barely does, and as channels it costs the first convolution's weights and MACs
    only, not a wider input. Padded frames are zeroed between the convolutions so that an
    utterance's output does not depend on how much padding its batch adds.
    """

    deltas = 0  # the class default: a module saved before the option existed (0.2) is rebuilt without it

    def __init__(self, input_dim: int, channels: int, deltas: int = 0):
        super().__init__()
        if deltas not in (0, 1, 2):
            raise ValueError(f"deltas must be 0, 1 or 2, got {deltas}")
        self.deltas = deltas
        self.conv1 = nn.Conv2d(1 + deltas, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        # Channels-last weights let oneDNN skip layout reorders: on 2 CPU cores evaluation ran 13-16 %
        # faster, training 4 % and 1-thread inference 3-8 %; saving, loading and ``.to()`` keep the layout.
        self.to(memory_format=torch.channels_last)
        self.output_dim = channels * ((((input_dim + 1) // 2) + 1) // 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, T, F)``, lengths ``(B,)`` -> ``(B, T', channels * F')`` and subsampled lengths ``(B,)``."""
        # Zero the input padding too: callers may pad with anything, the convolutions see zeros.
        padded = padding_mask(lengths, x.shape[1])[:, :, None]
        streams = [x.masked_fill(padded, 0.0)]
        for _ in range(self.deltas):  # each slope of the zero-padded frames, zeroed again past the end
            streams.append(time_delta(streams[-1]).masked_fill(padded, 0.0))
        x = torch.stack(streams, dim=1)  # (B, 1 + deltas, T, F)
        for conv in (self.conv1, self.conv2):
            x = conv(x)
            lengths = subsampled_lengths(lengths)
            # Zeroing before the ReLU equals zeroing after it (ReLU(0) = 0); in place on the conv's
            # fresh output (its backward does not read it), which saves two full copies per layer.
            x = self.act(x.masked_fill_(padding_mask(lengths, x.shape[2])[:, None, :, None], 0.0))
        b, c, t, f = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, c * f), lengths


class ConvTransformer(nn.Module):
    """Conv subsampling + Transformer encoder classifier.

    Args:
        input_dim: feature bins per frame.
        num_classes: output classes.
        d_model, num_layers, num_heads, ffn_dim: encoder sizes.
        conv_channels: channels of both subsampling convolutions.
        dropout: dropout everywhere. (Default: 0.1)
        deltas: 1 or 2: the front-end also reads the frames' delta (and delta-delta) as input channels
            (see :class:`ConvSubsampling`). (Default: 0)
        pooling: utterance pooling, ``"mean"``, ``"meanstd"`` or ``"attentive"`` (see
            :class:`backbones.layers.StatsPooling`); the head's input is ``pooling.output_dim`` wide.
            (Default: ``"mean"``)
    """

    def __init__(self, input_dim: int, num_classes: int, d_model: int, num_layers: int, num_heads: int,
                 ffn_dim: int, conv_channels: int, dropout: float = 0.1, pooling: str = "mean", deltas: int = 0):
        super().__init__()
        self.subsampling = ConvSubsampling(input_dim, conv_channels, deltas)
        self.projection = nn.Linear(self.subsampling.output_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, ffn_dim, dropout, pre_norm=True) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.pooling = StatsPooling(d_model, pooling)
        self.head = ClassifierHead(self.pooling.output_dim, num_classes, dropout=dropout)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> pooled embedding ``(B, pooling.output_dim)``."""
        x, lengths = self.subsampling(features, lengths)
        x = self.projection(x)
        x = self.dropout(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        mask = padding_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, mask)
        return self.pooling(self.final_norm(x), lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> logits ``(B, num_classes)``."""
        return self.head(self.embed(features, lengths))


def subsampling_macs(input_dim: int, channels: int, frames: int, deltas: int = 0) -> tuple[int, int, int]:
    """MACs of :class:`ConvSubsampling` on ``frames`` frames, its output tokens and output width."""
    t1, f1 = math.ceil(frames / 2), math.ceil(input_dim / 2)
    t2, f2 = math.ceil(t1 / 2), math.ceil(f1 / 2)
    macs = t1 * f1 * channels * 9 * (1 + deltas) + t2 * f2 * channels * channels * 9
    return macs, t2, channels * f2


def attention_macs(queries: int, keys_per_query: int, d_model: int) -> int:
    """Self-attention over ``queries`` tokens that each attend to ``keys_per_query`` keys: the q/k/v
    and output projections (4 d^2 per token) plus the score and context matmuls (2 d per key)."""
    return 4 * queries * d_model * d_model + 2 * queries * keys_per_query * d_model


def ffn_macs(tokens: int, d_model: int, ffn_dim: int) -> int:
    """Both linear layers of a :class:`backbones.ffn.FeedForward` on ``tokens`` tokens."""
    return 2 * tokens * d_model * ffn_dim


def convtransformer_macs(config: dict, input_dim: int, num_classes: int, frames: int) -> int:
    """Hand-derived MACs of one forward pass (batch 1): what FlopCounterMode counts (matmuls and
    convolutions), with global attention growing quadratically in the subsampled length, the pooling's
    (attentive: its frame scorer) and the head on the pooled width (2 d for meanstd and attentive)."""
    d, ffn, pooling = config["d_model"], config["ffn_dim"], config.get("pooling", "mean")
    front, tokens, width = subsampling_macs(input_dim, config["conv_channels"], frames, config.get("deltas", 0))
    layer = attention_macs(tokens, tokens, d) + ffn_macs(tokens, d, ffn)
    pooled = pooled_width(d, pooling)
    return (front + tokens * width * d + config["num_layers"] * layer + pooling_macs(pooling, tokens, d)
            + pooled * num_classes)


# Over the shared per-preset recipes (bench.training.models): the large model overfits EmoDB's 8 training speakers
# (validation UA falls after its best epoch), and mixup with speed perturbation held it up best of the
# regularizers searched on validation (docs/recipes.md, round 4).
RECIPES = {"large": dict(mixup_alpha=0.4, speed_perturb=0.1)}


@BACKBONES.register("convtransformer", "Conv2d subsampling + pre-LN Transformer encoder (ESPnet-ST/fairseq style)",
                    presets=PRESETS, analytic_macs=convtransformer_macs, recipes=RECIPES,
                    computes_deltas=True)
def convtransformer(input_dim: int, num_classes: int, **config) -> ConvTransformer:
    return ConvTransformer(input_dim, num_classes, **config)
