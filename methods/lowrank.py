"""``lowrank``: truncated SVD of the trained large model's linear layers, ranks chosen to meet the
deploy budget, then fine-tuning.

Every ``nn.Linear`` except the classifier output (FFN ``w1``/``w2``, front-end projections, head
hidden layers) becomes ``nn.Sequential(Linear(in, r, bias=False), Linear(r, out))`` with
W ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T). Pointwise (kernel-1) ``nn.Conv1d`` layers are linear maps of
each frame too (the Conformer's convolution modules hold about an eighth of its parameters there) and
become the same pair as kernel-1 convolutions. Every ``nn.MultiheadAttention`` becomes a
:class:`LowRankAttention`: still an ``nn.MultiheadAttention`` (same call signature, heads, dropout,
batch_first) whose packed q/k/v input projection and output projection are such factor pairs and
whose forward runs them as two small matmuls each, so parameters, MACs and latency really drop
(``F.multi_head_attention_forward`` would need the dense E x 3E weight back).

Ranks follow one energy threshold e for all layers: each layer keeps the fewest singular values
holding a fraction e of its squared spectrum; e is found by bisection so that the model's cost lands
on the budget. A layer whose factor pair would cost as much as the dense layer stays dense.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.measure.budget import (BUDGET_FIELDS, TOLERANCE, BudgetParams, bisect_budget, cost, output_layers,
                                  resolve_budget)
from bench.measure.costs import LATENCY_SECONDS
from bench.method import FINETUNE_FIELDS, Method, RunFailed
from bench.registry import METHODS

__all__ = ["LowRankAttention", "LowRank", "factorize_linear", "factorize_model", "factorizable_layers",
           "is_pointwise_conv"]


def factorize_linear(weight: torch.Tensor, bias: torch.Tensor | None, rank: int,
                     svd: tuple[torch.Tensor, ...] | None = None, pointwise: bool = False) -> nn.Sequential:
    """``weight (out, in)``, ``bias (out,)`` -> Linear(in, rank, bias=False) then Linear(rank, out), or with
    ``pointwise`` the same pair as kernel-1 ``Conv1d`` layers (for a pointwise convolution, ``(B, C, T)``);
    ``svd`` = ``torch.linalg.svd(weight.double(), full_matrices=False)`` when already computed."""
    out_features, in_features = weight.shape
    if svd is None:  # float64: exact at full rank
        svd = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    u, s, vh = svd
    root = s[:rank].sqrt()
    if pointwise:
        first, second = nn.Conv1d(in_features, rank, 1, bias=False), nn.Conv1d(rank, out_features, 1, bias=bias is not None)
    else:
        first, second = nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).view_as(first.weight))
        second.weight.copy_((u[:, :rank] * root).view_as(second.weight))
        if bias is not None:
            second.bias.copy_(bias.detach())
    return nn.Sequential(first, second).to(weight.dtype)


def is_pointwise_conv(module: nn.Module) -> bool:
    """A ``Conv1d`` that is a linear map of each frame's channels (kernel 1, no groups, stride or padding),
    like the Conformer convolution module's first and last layers."""
    return (type(module) is nn.Conv1d and module.kernel_size == (1,) and module.groups == 1
            and module.stride == (1,) and module.padding in ((0,), "valid") and module.dilation == (1,))


def _projection(weight: torch.Tensor, bias: torch.Tensor | None, rank: int | None, svd=None) -> nn.Module:
    """A factor pair at ``rank``, or at None a plain ``nn.Linear`` copy of the dense layer."""
    if rank is not None:
        return factorize_linear(weight, bias, rank, svd)
    dense = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        dense.weight.copy_(weight)
        if bias is not None:
            dense.bias.copy_(bias)
    return dense


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = not allowed) or a float mask -> an additive float mask."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


class LowRankAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with factorized (or dense) ``in_proj`` and ``out_proj`` modules.

    Only attention whose query, key and value share the embedding width and that has no
    ``bias_k``/``bias_v``/``add_zero_attn`` is converted (what the backbones use).
    """

    @classmethod
    def from_attention(cls, attn: nn.MultiheadAttention, in_rank: int | None, out_rank: int | None,
                       svds: tuple = (None, None)) -> LowRankAttention:
        """Factorize ``attn``'s projections at ``in_rank`` / ``out_rank`` (with their SVDs, if known); None
        keeps that projection dense, as a plain ``nn.Linear`` (which dynamic quantization reaches, unlike
        MHA's own projections)."""
        new = cls(attn.embed_dim, attn.num_heads, dropout=attn.dropout, bias=attn.in_proj_bias is not None,
                  batch_first=attn.batch_first, device=attn.out_proj.weight.device, dtype=attn.out_proj.weight.dtype)
        new.register_parameter("in_proj_weight", None)
        new.register_parameter("in_proj_bias", None)
        new.in_proj = _projection(attn.in_proj_weight, attn.in_proj_bias, in_rank, svds[0])
        new.out_proj = _projection(attn.out_proj.weight, attn.out_proj.bias, out_rank, svds[1])
        return new.train(attn.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: query ``(B, L, E)`` (batch_first) or ``(L, B, E)``,
        key/value ``(B, S, E)``, key_padding_mask ``(B, S)`` True at padding, attn_mask ``(L, S)`` or
        ``(B * heads, L, S)`` -> output shaped like query, and head-averaged weights ``(B, L, S)`` or None."""
        self_attention = query is key and key is value  # before any reshaping makes them distinct tensors
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:  # work batch-first: (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        b, length, e = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        if self_attention:  # one pass through the factor pair
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:  # the packed projection is split by rows; each part uses its own slice of the last factor
            q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        q, k, v = (x.reshape(b, -1, heads, head_dim).transpose(1, 2) for x in (q, k, v))  # (B, H, *, hd)
        mask = _additive_mask(attn_mask, q.dtype)
        if mask is not None:
            mask = mask.view(1, 1, *mask.shape[-2:]) if mask.dim() == 2 else mask.view(b, heads, *mask.shape[-2:])
        padding = _additive_mask(key_padding_mask, q.dtype)
        if padding is not None:
            padding = padding.view(b, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / head_dim ** 0.5
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            context = F.dropout(weights, dropout, self.training) @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                     is_causal=is_causal and mask is None)
        output = self.out_proj(context.transpose(1, 2).reshape(b, length, e))
        if not self.batch_first or not batched:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        return output, weights

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """Part ``part`` (0: q, 1: k, 2: v) of the packed input projection of x ``(B, S, E)``. Computes
        all three (cross-attention only; the backbones' self-attention projects once), so that it works
        whatever the projection modules are (factor pairs, quantized layers)."""
        return self.in_proj(x).chunk(3, dim=-1)[part]


def factorizable_layers(model: nn.Module, keep: set[nn.Module]) -> dict[str, torch.Tensor]:
    """Name -> weight ``(out, in)`` of every layer to factorize: plain Linear layers outside attention
    and pointwise convolutions (except ``keep``) and, as ``<attention>.in_proj`` / ``<attention>.out_proj``,
    attention projections."""
    inside_attention = {id(m) for a in model.modules() if isinstance(a, nn.MultiheadAttention) for m in a.modules()}
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and not isinstance(module, LowRankAttention):
            if module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn:
                layers[f"{name}.in_proj"] = module.in_proj_weight
                layers[f"{name}.out_proj"] = module.out_proj.weight
        elif type(module) is nn.Linear and id(module) not in inside_attention and module not in keep:
            layers[name] = module.weight
        elif is_pointwise_conv(module) and module not in keep:
            layers[name] = module.weight[:, :, 0]
    return layers


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def factorize_model(model: nn.Module, ranks: dict[str, int | None], svds: dict | None = None) -> nn.Module:
    """Replace the layers named in ``ranks`` (see :func:`factorizable_layers`) by factor pairs, in place;
    a rank of None keeps that layer dense. ``svds``: the layers' SVDs by name, when already computed."""
    svds = svds or {}
    attention_ranks: dict[str, dict] = {}
    for name, rank in ranks.items():
        owner, _, projection = name.rpartition(".")
        if projection in ("in_proj", "out_proj") and isinstance(model.get_submodule(owner), nn.MultiheadAttention):
            attention_ranks.setdefault(owner, {})[projection] = rank
        elif rank is not None:
            layer = model.get_submodule(name)
            pointwise = is_pointwise_conv(layer)
            weight = layer.weight[:, :, 0] if pointwise else layer.weight
            pair = factorize_linear(weight, layer.bias, rank, svds.get(name), pointwise)
            _replace(model, name, pair.train(layer.training))
    for owner, projection_ranks in attention_ranks.items():
        attn = model.get_submodule(owner)
        _replace(model, owner, LowRankAttention.from_attention(
            attn, projection_ranks.get("in_proj"), projection_ranks.get("out_proj"),
            (svds.get(f"{owner}.in_proj"), svds.get(f"{owner}.out_proj"))))
    return model


def _rank_or_dense(rank: int, shape: tuple[int, int]) -> int | None:
    """``rank``, or None where the factor pair would cost at least as much as the dense layer."""
    out_features, in_features = shape
    return rank if rank * (in_features + out_features) < in_features * out_features else None


def energy_ranks(spectra: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], energy: float) -> dict:
    """Per layer, the fewest singular values holding ``energy`` of its squared spectrum, or None where
    the factor pair would cost at least as much as the dense layer."""
    ranks = {}
    for name, s in spectra.items():
        cumulative = (s.double() ** 2).cumsum(0) / (s.double() ** 2).sum().clamp(min=1e-30)
        rank = min(int((cumulative < energy - 1e-12).sum().item()) + 1, len(s))
        ranks[name] = _rank_or_dense(rank, shapes[name])
    return ranks


def smallest_model(model: nn.Module, keep: set[nn.Module]) -> nn.Module:
    """A copy of ``model`` at rank 1 wherever that is smaller than the dense layer: the least that
    lowrank can cost. Depends on the structure only, not on the weights."""
    layers = factorizable_layers(model, keep)
    return factorize_model(copy.deepcopy(model), {n: _rank_or_dense(1, tuple(w.shape)) for n, w in layers.items()})


def _frames(ctx) -> int:
    """Frames of the input over which the run record counts MACs."""
    return ctx.spec.features.frames(LATENCY_SECONDS)


@dataclass
class LowRankParams(BudgetParams):
    """Only the budget: ranks follow from it."""


@METHODS.register("lowrank", "truncated SVD of the large model's linear layers (FFN, attention, projections) "
                  "to the deploy budget, then fine-tuning", params=LowRankParams)
class LowRank(Method):
    uses_large_model = True
    record_fields = {
        **BUDGET_FIELDS,
        "lowrank_energy": "the share of each layer's singular-value energy kept",
        "lowrank_layers_factorized": "layers replaced by two low-rank linears",
        "lowrank_layers_dense": "layers left dense (factorizing them would not save)",
        "lowrank_ranks": "each factorized layer's rank",
        **FINETUNE_FIELDS,
    }
    params: LowRankParams

    def check(self, ctx, start: nn.Module | None) -> None:
        """RunFailed, before the large model trains, when rank 1 everywhere still exceeds the budget."""
        source = start if start is not None else ctx.new_model(ctx.spec.teacher_preset)
        p = self.params
        budget = resolve_budget(ctx, source, p.budget, p.ratio)
        keep = set(output_layers(source, ctx.data.input_dim))
        if not factorizable_layers(source, keep):
            raise RunFailed(f"lowrank found no linear layer to factorize in {type(source).__name__}")
        smallest = cost(smallest_model(source, keep), p.budget, ctx.data.input_dim, _frames(ctx))
        if smallest > budget.target * (1 + TOLERANCE):
            raise RunFailed(f"lowrank cannot reach {p.budget}={budget.target:,} ({budget.source}): rank 1 "
                            f"everywhere still costs {smallest:,} (layers it does not factorize included); use a "
                            f"larger ratio or preset")

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        source = start if start is not None else ctx.large_model()
        p = self.params
        self.budget = resolve_budget(ctx, source, p.budget, p.ratio)
        self.source_params = cost(source, "params", ctx.data.input_dim, 1)
        layers = factorizable_layers(source, set(output_layers(source, ctx.data.input_dim)))
        svds = {n: torch.linalg.svd(w.detach().double(), full_matrices=False) for n, w in layers.items()}
        spectra = {n: svd[1] for n, svd in svds.items()}
        shapes = {n: tuple(w.shape) for n, w in layers.items()}
        frames = _frames(ctx)

        def build_at(energy: float) -> tuple[nn.Module, int]:
            model = factorize_model(copy.deepcopy(source), energy_ranks(spectra, shapes, energy), svds)
            return model, cost(model, p.budget, ctx.data.input_dim, frames)

        self.energy, model, reached = bisect_budget(build_at, self.budget)
        self.budget.check(reached, "lowrank")
        self.ranks = energy_ranks(spectra, shapes, self.energy)
        return model

    def train(self, model: nn.Module, ctx) -> nn.Module:
        self.epochs = ctx.spec.train.epochs
        return ctx.fit(model, desc="lowrank")

    def deploy(self, model: nn.Module, ctx) -> nn.Module:
        self.reached = cost(model, self.params.budget, ctx.data.input_dim, _frames(ctx))
        return model

    def record(self) -> dict:
        factorized = {n: r for n, r in self.ranks.items() if r is not None}
        return {**self.budget.record(self.reached), "lowrank_energy": self.energy,
                "lowrank_layers_factorized": len(factorized), "lowrank_layers_dense": len(self.ranks) - len(factorized),
                "lowrank_ranks": factorized, "source_params": self.source_params,
                "finetune_epochs": self.epochs,
                "finetune_note": "fine-tuned for the run's epochs on the run's training split, like every method "
                                 "that (fine-)tunes"}
