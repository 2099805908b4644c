"""The one FFN module type that every backbone uses, so compression methods find it generically."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeedForward"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class FeedForward(nn.Module):
    """Position-wise feed-forward block: [LayerNorm] -> w1 -> activation -> dropout -> w2 -> dropout.

    ``w1`` (d_model -> ffn_dim) and ``w2`` (ffn_dim -> d_model) are attributes that methods may
    replace (HRF puts an expansion in front of ``w1``, pruning shrinks ``ffn_dim``, low-rank
    factorizes both). ``pre_norm`` adds the LayerNorm inside the block (Conformer style).

    Args:
        d_model: input and output width.
        ffn_dim: hidden width.
        activation: ``relu``, ``gelu`` or ``silu``. (Default: ``relu``)
        dropout: dropout probability. (Default: 0.1)
        pre_norm: apply LayerNorm to the input first. (Default: ``False``)
    """

    def __init__(self, d_model: int, ffn_dim: int, activation: str = "relu", dropout: float = 0.1,
                 pre_norm: bool = False):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation=}")
        self.norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.w1 = nn.Linear(d_model, ffn_dim)
        self.activation = _ACTIVATIONS[activation]()
        self.dropout1 = nn.Dropout(dropout)
        self.w2 = nn.Linear(ffn_dim, d_model)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, T, d_model)`` -> ``(B, T, d_model)``."""
        hidden = self.dropout1(self.activation(self.w1(self.norm(x))))
        return self.dropout2(self.w2(hidden))
