"""Conformer: the ConvTransformer's Conv2d subsampling front-end, a projection and sinusoidal
positions, then ``torchaudio.models.Conformer`` layers, statistics pooling
(:class:`backbones.layers.StatsPooling`: mean, mean + std, or attentive mean + std) and a linear head.

Two adaptations of torchaudio's layers, both leaving its ``ConformerLayer.forward`` in charge:

- each layer's two half-step FFNs become the shared :class:`backbones.ffn.FeedForward` (same
  LayerNorm -> Linear -> SiLU -> Dropout -> Linear -> Dropout), so HRF, pruning and low-rank reach
  them; ``ConformerLayer`` still applies the 0.5 residual scaling itself;
- each depthwise convolution is wrapped to zero padded frames first: torchaudio does not, and its
  kernel would otherwise carry padding into the last valid frames.

Batch normalization in the convolution module is kept (torchaudio's default): in eval mode it is a
per-channel affine map, so outputs do not depend on a batch's padding (while training, its batch
statistics include padded frames, as in torchaudio; GroupNorm would mix them in at eval too). Presets (80-d log-mel input,
4 classes): ``lightweight`` about 0.36 M parameters and 75 M MACs for 5 s, ``large`` about 3.6 M (10x)
and 496 M MACs.
"""

from __future__ import annotations

import torch
from torch import nn
from torchaudio.models import Conformer as TorchaudioConformer

from backbones.convtransformer import ConvSubsampling, attention_macs, ffn_macs, subsampling_macs
from backbones.ffn import FeedForward
from backbones.layers import (ClassifierHead, StatsPooling, padding_mask, pooled_width, pooling_macs,
                              sinusoidal_positions)
from bench.registry import BACKBONES

__all__ = ["ConformerClassifier"]

PRESETS = {
    "tiny": dict(d_model=32, num_layers=1, num_heads=2, ffn_dim=64, kernel_size=7, conv_channels=8,
                 pooling="mean"),
    "lightweight": dict(d_model=96, num_layers=2, num_heads=4, ffn_dim=192, kernel_size=15, conv_channels=32,
                        pooling="mean"),
    "medium": dict(d_model=128, num_layers=3, num_heads=4, ffn_dim=384, kernel_size=23, conv_channels=32,
                   pooling="mean"),
    "large": dict(d_model=192, num_layers=4, num_heads=4, ffn_dim=768, kernel_size=31, conv_channels=32,
                  pooling="mean"),
}


class MaskedDepthwiseConv(nn.Module):
    """torchaudio's depthwise ``Conv1d`` with padded frames zeroed first: ``(B, C, T)`` -> ``(B, C, T)``.

    ``keep`` ``(B, 1, T)`` (1 at valid frames) is set by :class:`ConformerClassifier` around each
    encoder pass, because ``ConformerLayer`` hands its convolution module the frames only.
    """

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv
        self.keep: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x if self.keep is None else x * self.keep)


class ConformerClassifier(nn.Module):
    """Conv subsampling + torchaudio Conformer encoder classifier.

    Args:
        input_dim: feature bins per frame.
        num_classes: output classes.
        d_model, num_layers, num_heads, ffn_dim: encoder sizes.
        kernel_size: depthwise convolution kernel (odd).
        conv_channels: channels of both subsampling convolutions.
        dropout: dropout everywhere. (Default: 0.1)
        deltas: 1 or 2: the front-end also reads the frames' delta (and delta-delta) as input channels
            (see :class:`backbones.convtransformer.ConvSubsampling`). (Default: 0)
        pooling: utterance pooling, ``"mean"``, ``"meanstd"`` or ``"attentive"`` (see
            :class:`backbones.layers.StatsPooling`); the head's input is ``pooling.output_dim`` wide.
            (Default: ``"mean"``)
    """

    def __init__(self, input_dim: int, num_classes: int, d_model: int, num_layers: int, num_heads: int,
                 ffn_dim: int, kernel_size: int, conv_channels: int, dropout: float = 0.1, pooling: str = "mean",
                 deltas: int = 0):
        super().__init__()
        self.subsampling = ConvSubsampling(input_dim, conv_channels, deltas)
        self.projection = nn.Linear(self.subsampling.output_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TorchaudioConformer(d_model, num_heads, ffn_dim, num_layers, kernel_size, dropout=dropout)
        for layer in self.encoder.conformer_layers:
            layer.ffn1 = FeedForward(d_model, ffn_dim, activation="silu", dropout=dropout, pre_norm=True)
            layer.ffn2 = FeedForward(d_model, ffn_dim, activation="silu", dropout=dropout, pre_norm=True)
            layer.conv_module.sequential[2] = MaskedDepthwiseConv(layer.conv_module.sequential[2])
        self.pooling = StatsPooling(d_model, pooling)
        self.head = ClassifierHead(self.pooling.output_dim, num_classes, dropout=dropout)

    def _depthwise_convs(self) -> list[MaskedDepthwiseConv]:
        return [m for m in self.encoder.modules() if isinstance(m, MaskedDepthwiseConv)]

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> pooled embedding ``(B, pooling.output_dim)``."""
        x, lengths = self.subsampling(features, lengths)
        x = self.projection(x)
        x = self.dropout(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        mask = padding_mask(lengths, x.shape[1])
        convs = self._depthwise_convs()
        for conv in convs:
            conv.keep = (~mask).unsqueeze(1).to(x.dtype)
        try:
            # torchaudio's Conformer.forward derives its mask from max(lengths), which must equal T;
            # running its layers with our mask also accepts batches padded beyond the longest item.
            x = x.transpose(0, 1)  # (T, B, D), as ConformerLayer expects
            for layer in self.encoder.conformer_layers:
                x = layer(x, mask)
        finally:
            for conv in convs:
                conv.keep = None
        return self.pooling(x.transpose(0, 1), lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> logits ``(B, num_classes)``."""
        return self.head(self.embed(features, lengths))


def conformer_macs(config: dict, input_dim: int, num_classes: int, frames: int) -> int:
    """Hand-derived MACs of one forward pass (batch 1): front-end, projection, per layer two FFNs,
    global self-attention (quadratic in the subsampled length) and the convolution module
    (pointwise d -> 2d, depthwise k taps, pointwise d -> d), the pooling's (attentive: its frame
    scorer) and the head on the pooled width (2 d for meanstd and attentive)."""
    d, ffn, k, pooling = config["d_model"], config["ffn_dim"], config["kernel_size"], config.get("pooling", "mean")
    front, tokens, width = subsampling_macs(input_dim, config["conv_channels"], frames, config.get("deltas", 0))
    convolution = tokens * (d * 2 * d + d * k + d * d)
    layer = 2 * ffn_macs(tokens, d, ffn) + attention_macs(tokens, tokens, d) + convolution
    return (front + tokens * width * d + config["num_layers"] * layer + pooling_macs(pooling, tokens, d)
            + pooled_width(d, pooling) * num_classes)


@BACKBONES.register("conformer", "Conv2d subsampling + torchaudio Conformer encoder (shared FFNs, masked convolutions)",
                    presets=PRESETS, analytic_macs=conformer_macs, computes_deltas=True)
def conformer(input_dim: int, num_classes: int, **config) -> ConformerClassifier:
    return ConformerClassifier(input_dim, num_classes, **config)
