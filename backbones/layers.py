"""Small building blocks shared by backbones: masks, positions, pooling, encoder layer, head."""

from __future__ import annotations

import math

import torch
from torch import nn

from backbones.ffn import FeedForward


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths ``(B,)`` -> bool ``(B, max_len)``, True at padded positions (PyTorch's convention)."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames: x ``(B, T, D)``, lengths ``(B,)`` -> ``(B, D)``."""
    valid = (~padding_mask(lengths, x.shape[1])).unsqueeze(-1).to(x.dtype)
    return (x * valid).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype)


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """Fixed sinusoidal position table ``(length, dim)`` (Vaswani et al.)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : dim // 2]
    return table


class EncoderLayer(nn.Module):
    """Transformer encoder layer with self-attention and the shared :class:`FeedForward`.

    Args:
        d_model, num_heads, ffn_dim, dropout: usual sizes.
        pre_norm: LayerNorm before each sublayer (``True``) or after the residual (post-LN).
        activation: FFN activation. (Default: ``relu``)
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float = 0.1,
                 pre_norm: bool = True, activation: str = "relu"):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d_model, ffn_dim, activation=activation, dropout=dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor | None, attn_mask: torch.Tensor | None) -> torch.Tensor:
        out, _ = self.attn(x, x, x, key_padding_mask=mask, attn_mask=attn_mask, need_weights=False)
        return self.dropout(out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, T, D)``, mask ``(B, T)`` True at padding, attn_mask ``(T, T)`` optional -> ``(B, T, D)``."""
        if self.pre_norm:
            x = x + self._attend(self.norm1(x), mask, attn_mask)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self._attend(x, mask, attn_mask))
        return self.norm2(x + self.ffn(x))


class ClassifierHead(nn.Module):
    """Pooled embedding ``(B, D)`` -> logits ``(B, C)`` through an MLP with the given hidden widths."""

    def __init__(self, d_model: int, num_classes: int, hidden: tuple[int, ...] = (), dropout: float = 0.1):
        super().__init__()
        layers, width = [], d_model
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)
