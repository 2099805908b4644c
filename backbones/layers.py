"""Small building blocks shared by backbones: masks, positions, statistics pooling, encoder layer, head."""

from __future__ import annotations

import math

import torch
from torch import nn

from backbones.ffn import FeedForward
from bench.registry import BenchError


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths ``(B,)`` -> bool ``(B, max_len)``, True at padded positions (PyTorch's convention)."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


POOLING_MODES = ("mean", "meanstd", "attentive")
POOLING_ATTENTION_DIM = 64  # hidden width of the attentive pooling's frame scorer (ECAPA-TDNN uses 128)


class PoolingError(BenchError, ValueError):
    """An unknown pooling mode (a one-line user-facing error, and a ValueError)."""


def check_pooling(mode: str) -> str:
    """``mode`` if it is one of :data:`POOLING_MODES`, else a :class:`PoolingError` naming it and the choices."""
    if mode not in POOLING_MODES:
        raise PoolingError(f"unknown pooling {mode!r}; choose one of: {', '.join(POOLING_MODES)}")
    return mode


def pooled_width(d_model: int, mode: str) -> int:
    """Width of :class:`StatsPooling`'s output: ``d_model`` for ``"mean"``, else ``2 * d_model``."""
    return d_model if check_pooling(mode) == "mean" else 2 * d_model


class StatsPooling(nn.Module):
    """Utterance-level pooling over the valid frames of a padded batch.

    Modes:

    - ``"mean"``: mean over valid frames (``output_dim = d_model``);
    - ``"meanstd"``: statistics pooling (x-vector, Snyder et al., 2018): mean and standard deviation over
      valid frames, concatenated (``output_dim = 2 * d_model``);
    - ``"attentive"``: attentive statistics pooling (Okabe et al., 2018; the frame-level form of
      ECAPA-TDNN's): an MLP ``Linear(d_model, attention_dim) -> tanh -> Linear(attention_dim, 1)`` scores
      each frame, a softmax over the valid frames only turns the scores into weights (exactly zero on
      padding), and the weighted mean and weighted standard deviation are concatenated
      (``output_dim = 2 * d_model``).

    Padded frames are replaced by zeros before any arithmetic and get zero weight, so an utterance's
    output does not depend on how much padding its batch adds (nor on the padding's values). The
    standard deviation is ``sqrt(clamp(var, min=eps))``: finite, with a finite gradient, for constant
    and single-frame utterances. The weighted sums are elementwise products and sums (no matmul), so the
    only multiply-accumulates FLOP counters see are the attention MLP's. ``d_model`` and ``output_dim``
    record the built widths (structured pruning may shrink the layers around it afterwards).

    Args:
        d_model: frame width ``D``.
        mode: one of :data:`POOLING_MODES`. (Default: ``"mean"``)
        attention_dim: hidden width of the frame scorer (``"attentive"`` only). (Default: 64)
        eps: variance floor under the square root. (Default: 1e-5)
    """

    def __init__(self, d_model: int, mode: str = "mean", attention_dim: int = POOLING_ATTENTION_DIM,
                 eps: float = 1e-5):
        super().__init__()
        self.mode = check_pooling(mode)
        self.d_model, self.attention_dim, self.eps = d_model, attention_dim, eps
        self.attention = (nn.Sequential(nn.Linear(d_model, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
                          if mode == "attentive" else None)
        self.output_dim = pooled_width(d_model, mode)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, mode={self.mode!r}, output_dim={self.output_dim}"

    def frame_weights(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, D)``, lengths ``(B,)`` -> weights ``(B, T, 1)``: each row sums to 1 over its valid
        frames and is exactly 0 on padding (uniform ``1 / length`` except in ``"attentive"`` mode).
        An utterance of length 0 counts as one frame (its first)."""
        padded = padding_mask(lengths.clamp(min=1), x.shape[1]).unsqueeze(-1)  # (B, T, 1)
        if self.attention is None:
            valid = (~padded).to(x.dtype)
            return valid / valid.sum(1, keepdim=True)
        scores = self.attention(x.masked_fill(padded, 0.0))  # (B, T, 1)
        return scores.masked_fill(padded, float("-inf")).softmax(dim=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, D)``, lengths ``(B,)`` -> pooled ``(B, output_dim)``."""
        padded = padding_mask(lengths.clamp(min=1), x.shape[1]).unsqueeze(-1)
        x = x.masked_fill(padded, 0.0)
        if self.attention is None:
            count = lengths.clamp(min=1).unsqueeze(-1).to(x.dtype)  # (B, 1)
            mean = x.sum(1) / count
            if self.mode == "mean":
                return mean
            centered = (x - mean.unsqueeze(1)).masked_fill(padded, 0.0)
            variance = (centered * centered).sum(1) / count
        else:
            weights = self.frame_weights(x, lengths)
            mean = (weights * x).sum(1)
            centered = x - mean.unsqueeze(1)
            variance = (weights * centered * centered).sum(1)
        # dim=1, not -1: Torch-Pruning maps the channels of a concatenation only along dim 1.
        return torch.cat([mean, variance.clamp(min=self.eps).sqrt()], dim=1)


def pooling_macs(mode: str, tokens: int, d_model: int, attention_dim: int = POOLING_ATTENTION_DIM) -> int:
    """MACs FLOP counters see in :class:`StatsPooling` over ``tokens`` frames: the attentive mode's
    scorer (``d_model -> attention_dim -> 1`` per frame); the weighted sums are elementwise."""
    check_pooling(mode)
    return tokens * (d_model * attention_dim + attention_dim) if mode == "attentive" else 0


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
