"""``hrf``: HRF re-parameterization. While training, an expansion H (d -> r*d, with bias, no
activation) sits before the first linear layer of every FFN (optionally also before the attention
input and output projections); for deployment (deHRF) it is folded into that layer,
W' = W H and b' = W b_H + b, so the shipped model is exactly the plain model of the preset.

FFNs are found by type (``backbones.ffn.FeedForward``) and attentions by type
(``nn.MultiheadAttention``), so every backbone gets the same treatment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backbones.ffn import FeedForward
from bench.method import Reparameterization
from bench.registry import METHODS, BenchError, param

__all__ = ["ExpandedAttention", "ExpandedLinear", "HRF", "HRFParams", "expand_model", "merge_model"]

INITS = ("default", "equivalent")
TARGETS = ("ffn", "ffn+attn")


@dataclass
class HRFParams:
    expansion_ratio: float = param(4.0, "r: width of the expansion H is r * d_model (searchable 1..8)",
                                   low=0.0, low_exclusive=True, high=64.0)
    init: str = param("default", "default: nn.Linear init of H and the widened layer; equivalent: H "
                      "semi-orthogonal, zero bias, widened W = W_plain H^T, so training starts from the plain "
                      "model's function (exactly for r >= 1; for r < 1 from W_plain projected onto H's rows)",
                      choices=INITS)
    targets: str = param("ffn", "ffn: the FFN's first linear layer (as in the paper); ffn+attn: also the "
                         "attention input (q, k, v) and output projections", choices=TARGETS)


class ExpandedLinear(nn.Module):
    """A linear map ``in_features -> out_features`` trained as two: ``expand`` (H, to ``hidden``) then
    ``linear`` (the widened W). Both are affine with no activation between them, so :meth:`merged`
    folds them into one ``nn.Linear`` with exactly the same function.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.expand = nn.Linear(in_features, hidden, bias=bias, device=device, dtype=dtype)
        self.linear = nn.Linear(hidden, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def around(cls, weight: torch.Tensor, bias: torch.Tensor | None, ratio: float, init: str) -> ExpandedLinear:
        """Expand the plain layer ``(weight (out, in), bias (out,))``; ``equivalent`` keeps its function."""
        out_features, in_features = weight.shape
        hidden = round(ratio * in_features)
        if hidden < 1:  # a width of 0 has no layer; clamping it would train another ratio than recorded
            raise BenchError(f"hrf expansion_ratio {ratio:g} gives the expansion of a {in_features}-wide layer "
                             f"{ratio * in_features:.3g} units: use at least {0.5 / in_features:.3g}")
        layer = cls(in_features, out_features, hidden, bias is not None, device=weight.device, dtype=weight.dtype)
        if init == "equivalent":
            with torch.no_grad():
                # Orthonormal columns (hidden >= in) give H^T H = I, hence W_wide H = W_plain H^T H = W_plain.
                nn.init.orthogonal_(layer.expand.weight)
                layer.linear.weight.copy_(weight @ layer.expand.weight.T)
                if bias is not None:
                    layer.expand.bias.zero_()
                    layer.linear.bias.copy_(bias)
        return layer

    def merged_weight(self) -> torch.Tensor:
        """W H: ``(out_features, in_features)``."""
        return self.linear.weight @ self.expand.weight

    def merged_bias(self) -> torch.Tensor | None:
        """W b_H + b: ``(out_features,)`` (None without biases)."""
        return None if self.linear.bias is None else self.linear(self.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(..., in_features)`` -> ``(..., out_features)``, through the ``hidden``-wide expansion."""
        return self.linear(self.expand(x))

    def merged(self) -> nn.Linear:
        """The deHRF layer: a plain ``nn.Linear(in_features, out_features)`` computing the same map."""
        weight = self.merged_weight().detach()
        plain = nn.Linear(weight.shape[1], weight.shape[0], bias=self.linear.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if plain.bias is not None:
                plain.bias.copy_(self.merged_bias())
        return plain


class ExpandedAttention(nn.Module):
    """Stands in for an ``nn.MultiheadAttention`` (same call signature) while training: its input
    projection (packed q, k, v) and output projection are :class:`ExpandedLinear`. The wrapped
    module keeps its other settings (heads, dropout, bias_k/v, batch_first) and gets the merged
    projections back in :meth:`merged`, so the deployed attention is the original module type.
    """

    def __init__(self, attn: nn.MultiheadAttention, ratio: float, init: str):
        super().__init__()
        if not attn._qkv_same_embed_dim:
            raise BenchError("hrf targets=ffn+attn needs attention with equal query/key/value widths; "
                             "use targets=ffn for this backbone")
        self.in_proj = ExpandedLinear.around(attn.in_proj_weight, attn.in_proj_bias, ratio, init)
        self.out_proj = ExpandedLinear.around(attn.out_proj.weight, attn.out_proj.bias, ratio, init)
        # The plain projections are dropped while training (not counted, not optimized) and restored by merged().
        attn.in_proj_weight = attn.in_proj_bias = None
        attn.out_proj.weight = attn.out_proj.bias = None
        self.attn = attn

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: query ``(B, L, E)`` (batch_first) or ``(L, B, E)``,
        key/value ``(B, S, E)``, key_padding_mask ``(B, S)`` -> output like query, weights or None."""
        attn = self.attn
        batched = query.dim() == 3
        if attn.batch_first and batched:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        # H is composed into the projections: multi_head_attention_forward needs one E-wide weight.
        output, weights = F.multi_head_attention_forward(
            query, key, value, attn.embed_dim, attn.num_heads,
            self.in_proj.merged_weight(), self.in_proj.merged_bias(), attn.bias_k, attn.bias_v,
            attn.add_zero_attn, attn.dropout, self.out_proj.merged_weight(), self.out_proj.merged_bias(),
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if attn.batch_first and batched:
            output = output.transpose(0, 1)
        return output, weights

    def merged(self) -> nn.MultiheadAttention:
        """The wrapped attention with W_in H_in and W_out H_out (and merged biases) as its projections."""
        attn = self.attn
        with torch.no_grad():
            attn.in_proj_weight = nn.Parameter(self.in_proj.merged_weight().detach().clone())
            out = self.out_proj.merged()
            attn.out_proj.weight = out.weight
            if self.in_proj.linear.bias is not None:
                attn.in_proj_bias = nn.Parameter(self.in_proj.merged_bias().detach().clone())
                attn.out_proj.bias = out.bias
        return attn


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def expand_model(model: nn.Module, ratio: float, init: str, targets: str) -> int:
    """Put expansions into ``model`` in place; returns how many layers were expanded."""
    ffns = [m for m in model.modules() if isinstance(m, FeedForward)]
    if not ffns:
        raise BenchError(f"hrf found no backbones.ffn.FeedForward in {type(model).__name__}: "
                         f"backbones must build their FFNs from it")
    for ffn in ffns:
        if not isinstance(ffn.w1, nn.Linear):
            raise BenchError(f"hrf needs FeedForward.w1 to be nn.Linear, found {type(ffn.w1).__name__}: "
                             f"put hrf before methods that replace it")
        ffn.w1 = ExpandedLinear.around(ffn.w1.weight, ffn.w1.bias, ratio, init)
    expanded = len(ffns)
    if targets == "ffn+attn":
        attentions = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
        for name, attn in attentions:
            _replace(model, name, ExpandedAttention(attn, ratio, init))
        expanded += 2 * len(attentions)
    return expanded


def merge_model(model: nn.Module) -> nn.Module:
    """deHRF in place: every expansion folded into its layer; the model is then the plain one."""
    for kind in (ExpandedAttention, ExpandedLinear):  # attentions first: they hold ExpandedLinears
        for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]:
            _replace(model, name, module.merged())
    return model


@METHODS.register("hrf", "HRF re-parameterization: an expansion before each FFN while training, merged "
                  "(deHRF) into the plain preset for deployment", params=HRFParams)
class HRF(Reparameterization):  # deHRF merges every expansion back into the plain layers
    record_fields = {
        "hrf_expansion_ratio": "the expansion ratio r (the HRF layer's width over the model width)",
        "hrf_init": "how the expansion was initialized",
        "hrf_targets": "which linear layers were expanded",
        "hrf_expanded_layers": "how many layers were expanded",
        "hrf_train_params": "parameters of the expanded model that trained",
        "hrf_deploy_params": "parameters after deHRF (the plain preset's)",
    }
    params: HRFParams

    def expand(self, model: nn.Module) -> int:
        p = self.params
        return expand_model(model, p.expansion_ratio, p.init, p.targets)

    def fold(self, model: nn.Module) -> nn.Module:
        return merge_model(model)

    def record(self) -> dict:
        p = self.params
        return {"hrf_expansion_ratio": p.expansion_ratio, "hrf_init": p.init, "hrf_targets": p.targets,
                "hrf_expanded_layers": self.expanded, "hrf_train_params": self.train_params,
                "hrf_deploy_params": self.deploy_params}
