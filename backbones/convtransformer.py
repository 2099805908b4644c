"""ConvTransformer: 2x Conv2d(3x3, stride 2) subsampling, projection, sinusoidal positions,
pre-LN Transformer encoder with padding masks, mean pooling and a linear head."""

from __future__ import annotations

import torch
from torch import nn

from backbones.layers import ClassifierHead, EncoderLayer, masked_mean, padding_mask, sinusoidal_positions
from bench.registry import BACKBONES

__all__ = ["ConvTransformer"]

PRESETS = {
    "tiny": dict(d_model=32, num_layers=1, num_heads=2, ffn_dim=64, conv_channels=8),
    "lightweight": dict(d_model=96, num_layers=2, num_heads=4, ffn_dim=192, conv_channels=32),
    "large": dict(d_model=192, num_layers=4, num_heads=4, ffn_dim=768, conv_channels=32),
}


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after one Conv2d(kernel 3, stride 2, padding 1): ceil(n / 2)."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


class ConvSubsampling(nn.Module):
    """``(B, T, F)`` features -> ``(B, ceil(ceil(T/2)/2), channels * ceil(ceil(F/2)/2))``.

    Padded frames are zeroed between the convolutions so that an utterance's output does not
    depend on how much padding its batch adds.
    """

    def __init__(self, input_dim: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.output_dim = channels * ((((input_dim + 1) // 2) + 1) // 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.unsqueeze(1)  # (B, 1, T, F)
        for conv in (self.conv1, self.conv2):
            x = self.act(conv(x))
            lengths = subsampled_lengths(lengths)
            x = x.masked_fill(padding_mask(lengths, x.shape[2])[:, None, :, None], 0.0)
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
    """

    def __init__(self, input_dim: int, num_classes: int, d_model: int, num_layers: int, num_heads: int,
                 ffn_dim: int, conv_channels: int, dropout: float = 0.1):
        super().__init__()
        self.subsampling = ConvSubsampling(input_dim, conv_channels)
        self.projection = nn.Linear(self.subsampling.output_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, ffn_dim, dropout, pre_norm=True) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = ClassifierHead(d_model, num_classes, dropout=dropout)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> pooled embedding ``(B, d_model)``."""
        x, lengths = self.subsampling(features, lengths)
        x = self.projection(x)
        x = self.dropout(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        mask = padding_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, mask)
        return masked_mean(self.final_norm(x), lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> logits ``(B, num_classes)``."""
        return self.head(self.embed(features, lengths))


@BACKBONES.register("convtransformer", "Conv2d subsampling + pre-LN Transformer encoder (ESPnet-ST/fairseq style)",
                    presets=PRESETS)
def convtransformer(input_dim: int, num_classes: int, **config) -> ConvTransformer:
    return ConvTransformer(input_dim, num_classes, **config)
