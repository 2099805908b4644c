"""``repadapter``: a re-parameterizable residual adapter in HRF's place, after RepAdapter (Luo et al.,
"Towards Efficient Visual Adaption via Structural Re-parameterization", 2023; code luogen1996/RepAdapter).

While training, a linear bottleneck ``x + B(A x)`` (A: d -> r*d, B: r*d -> d, both with biases, no
activation, B zero-initialized so that training starts from the plain model's function) sits before the
attention input projection (packed q, k, v) and before the FFN's first linear layer of every encoder
layer. For deployment it is folded into the layer it feeds: ``W' = W (I + B A)`` and
``b' = W (B b_A + b_B) + b``, so the shipped model is exactly the plain model of the preset.

Where it differs from RepAdapter: the whole model trains (RepAdapter tunes only the adapters of a frozen
pre-trained ViT: here there is no pre-trained model, and the comparison with HRF is at equal training),
and neither the adapter's dropout nor its group-wise (block-diagonal) A is used, so ``r`` alone sets its
width. Attentions are found by type (``nn.MultiheadAttention``, called as self-attention) and FFNs by
type (``backbones.ffn.FeedForward``), so every backbone gets the same treatment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones.ffn import FeedForward
from bench.method import Reparameterization
from bench.registry import METHODS, BenchError, param

__all__ = ["AdaptedAttention", "AdaptedLinear", "RepAdapter", "RepAdapterParams", "Bottleneck"]

TARGETS = ("attn+ffn", "ffn")


@dataclass
class RepAdapterParams:
    bottleneck_ratio: float = param(0.25, "r: the adapter's bottleneck width is r * d_model (searchable)",
                                    low=0.0, low_exclusive=True, high=8.0)
    targets: str = param("attn+ffn", "attn+ffn: before the attention input projection and the FFN's first "
                         "linear layer (as RepAdapter); ffn: before the FFN's only", choices=TARGETS)


class Bottleneck(nn.Module):
    """The residual linear adapter ``x + B(A x)``: ``(..., d) -> (..., d)``, the identity at init."""

    def __init__(self, features: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(features, hidden, device=device, dtype=dtype)
        self.up = nn.Linear(hidden, features, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def matrix(self) -> torch.Tensor:
        """``I + B A``: ``(d, d)``."""
        return torch.eye(self.down.in_features, device=self.up.weight.device, dtype=self.up.weight.dtype) \
            + self.up.weight @ self.down.weight

    def offset(self) -> torch.Tensor:
        """``B b_A + b_B``: ``(d,)`` (not through ``self.up``: module hooks such as FLOP counters expect
        activations, not a parameter, as a module's input)."""
        return self.up.weight @ self.down.bias + self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


def folded(weight: torch.Tensor, bias: torch.Tensor | None, adapter: Bottleneck) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer ``(weight (out, d), bias (out,))`` after ``adapter``, as one affine map ``(W', b')``."""
    merged_bias = weight @ adapter.offset() + (bias if bias is not None else 0)
    return weight @ adapter.matrix(), merged_bias


class AdaptedLinear(nn.Module):
    """An ``nn.Linear`` with a :class:`Bottleneck` before it while training; :meth:`merged` folds the two."""

    def __init__(self, linear: nn.Linear, hidden: int):
        super().__init__()
        self.adapter = Bottleneck(linear.in_features, hidden, linear.weight.device, linear.weight.dtype)
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(..., in_features)`` -> ``(..., out_features)``."""
        return self.linear(self.adapter(x))

    def merged(self) -> nn.Linear:
        weight, bias = folded(self.linear.weight, self.linear.bias, self.adapter)
        plain = nn.Linear(self.linear.in_features, self.linear.out_features, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            plain.bias.copy_(bias)
        return plain


class AdaptedAttention(nn.Module):
    """Stands in for a self-attention ``nn.MultiheadAttention`` (same call signature) while training, with a
    :class:`Bottleneck` on its input before the packed q, k, v projection; :meth:`merged` folds it into
    ``in_proj_weight`` / ``in_proj_bias`` and returns the original module."""

    def __init__(self, attn: nn.MultiheadAttention, hidden: int):
        super().__init__()
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            raise BenchError("repadapter targets=attn+ffn needs attention with equal query/key/value widths and "
                             "biases; use targets=ffn for this backbone")
        self.adapter = Bottleneck(attn.embed_dim, hidden, attn.in_proj_weight.device, attn.in_proj_weight.dtype)
        self.attn = attn

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward`` for self-attention (``query is key is value``): query
        ``(B, L, E)`` (batch_first) or ``(L, B, E)``, key_padding_mask ``(B, L)`` -> output like query."""
        if not (query is key is value):
            raise BenchError("repadapter folds its adapter into the packed q, k, v projection: it needs "
                             "self-attention (query, key and value the same tensor); use targets=ffn")
        attn = self.attn
        weight, bias = folded(attn.in_proj_weight, attn.in_proj_bias, self.adapter)
        batched = query.dim() == 3
        if attn.batch_first and batched:
            query = query.transpose(0, 1)
        output, weights = F.multi_head_attention_forward(
            query, query, query, attn.embed_dim, attn.num_heads, weight, bias, attn.bias_k, attn.bias_v,
            attn.add_zero_attn, attn.dropout, attn.out_proj.weight, attn.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        if attn.batch_first and batched:
            output = output.transpose(0, 1)
        return output, weights

    def merged(self) -> nn.MultiheadAttention:
        weight, bias = folded(self.attn.in_proj_weight, self.attn.in_proj_bias, self.adapter)
        with torch.no_grad():
            self.attn.in_proj_weight.copy_(weight)
            self.attn.in_proj_bias.copy_(bias)
        return self.attn


def adapt_model(model: nn.Module, ratio: float, targets: str) -> int:
    """Put adapters into ``model`` in place; returns how many layers got one."""
    ffns = [m for m in model.modules() if isinstance(m, FeedForward)]
    if not ffns:
        raise BenchError(f"repadapter found no backbones.ffn.FeedForward in {type(model).__name__}: "
                         f"backbones must build their FFNs from it")
    for ffn in ffns:
        if not isinstance(ffn.w1, nn.Linear):
            raise BenchError(f"repadapter needs FeedForward.w1 to be nn.Linear, found {type(ffn.w1).__name__}: "
                             f"put repadapter before methods that replace it")
        ffn.w1 = AdaptedLinear(ffn.w1, max(1, round(ratio * ffn.w1.in_features)))
    adapted = len(ffns)
    if targets == "attn+ffn":
        for name, attn in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]:
            model.set_submodule(name, AdaptedAttention(attn, max(1, round(ratio * attn.embed_dim))))
            adapted += 1
    return adapted


def merge_model(model: nn.Module) -> nn.Module:
    """Fold every adapter into the layer it feeds, in place: the model is then the plain one."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, (AdaptedAttention, AdaptedLinear))]:
        model.set_submodule(name, module.merged())
    return model


@METHODS.register("repadapter", "RepAdapter: a zero-initialized residual linear bottleneck before the attention "
                  "input and the FFN while training, folded into them for deployment", params=RepAdapterParams)
class RepAdapter(Reparameterization):  # every adapter is folded into the plain layer it feeds
    record_fields = {
        "repadapter_bottleneck_ratio": "r: the adapter's bottleneck width over the model width",
        "repadapter_targets": "which layers got an adapter",
        "repadapter_adapted_layers": "how many layers got an adapter",
        "repadapter_train_params": "parameters of the adapted model that trained",
        "repadapter_deploy_params": "parameters after folding (the plain preset's)",
    }
    params: RepAdapterParams

    def expand(self, model: nn.Module) -> int:
        return adapt_model(model, self.params.bottleneck_ratio, self.params.targets)

    def fold(self, model: nn.Module) -> nn.Module:
        return merge_model(model)

    def record(self) -> dict:
        return {"repadapter_bottleneck_ratio": self.params.bottleneck_ratio,
                "repadapter_targets": self.params.targets, "repadapter_adapted_layers": self.expanded,
                "repadapter_train_params": self.train_params, "repadapter_deploy_params": self.deploy_params}
