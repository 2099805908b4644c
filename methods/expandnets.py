"""``expandnets``: ExpandNets' linear expansion (Guo, Alvarez and Salzmann, "ExpandNets: Linear
Over-parameterization to Train Compact Convolutional Networks", NeurIPS 2020; code GUOShuxuan/expandnets).

While training, every linear layer ``n -> m`` is a chain of three, ``n -> r*n -> r*m -> m`` (FC
expansion), and every convolution with a kernel wider than 1 (``C_in -> C_out``, k x k, stride s) is a
``1x1 (C_in -> r*C_in) -> k x k (r*C_in -> r*C_out, stride s) -> 1x1 (r*C_out -> C_out)`` chain (CL
expansion), with no nonlinearity between them. For deployment each chain is folded into one layer of
the original shape (linear: ``W3 W2 W1``; convolution: the kernel ``sum W3[o,b] W2[b,a] W1[a,i]``), so
the shipped model is exactly the plain model of the preset.

Where it differs from the paper: the first 1x1 convolution of a CL chain has no bias, so that the fold
is exact under zero padding (a bias there would be padded with zeros at the borders); the classifier
and every other linear layer outside attention are expanded (the paper leaves its last classifier
alone); the attention's own projections (``nn.MultiheadAttention``'s packed q, k, v) are not
``nn.Linear`` layers and stay as they are (``hrf targets=ffn+attn`` expands those); depthwise and 1x1
convolutions are not expanded; and the layers start from PyTorch's default initialization (the paper's
initialization from a trained nonlinear counterpart is not used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.method import Reparameterization
from bench.registry import METHODS, BenchError, param

__all__ = ["ConvChain", "ExpandNets", "ExpandNetsParams", "LinearChain", "expand_model", "merge_model"]

TARGETS = ("fc+conv", "fc", "conv")


@dataclass
class ExpandNetsParams:
    expansion_ratio: float = param(4.0, "r: the inner layers of each chain are r times wider (the paper: 4)",
                                   low=1.0, high=16.0)
    targets: str = param("fc+conv", "fc+conv (the paper's CL+FC), fc (linear layers only) or conv "
                         "(convolutions only)", choices=TARGETS)


class LinearChain(nn.Module):
    """``nn.Linear(n, m)`` trained as ``n -> r*n -> r*m -> m``; :meth:`merged` folds it into one layer."""

    def __init__(self, linear: nn.Linear, ratio: float):
        super().__init__()
        n, m, bias = linear.in_features, linear.out_features, linear.bias is not None
        options = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        wide_in, wide_out = max(1, round(ratio * n)), max(1, round(ratio * m))
        self.layers = nn.Sequential(nn.Linear(n, wide_in, bias=bias, **options),
                                    nn.Linear(wide_in, wide_out, bias=bias, **options),
                                    nn.Linear(wide_out, m, bias=bias, **options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(..., n)`` -> ``(..., m)``."""
        return self.layers(x)

    def merged(self) -> nn.Linear:
        first, middle, last = self.layers
        with torch.no_grad():
            weight = last.weight @ middle.weight @ first.weight
            plain = nn.Linear(first.in_features, last.out_features, bias=last.bias is not None,
                              device=weight.device, dtype=weight.dtype)
            plain.weight.copy_(weight)
            if last.bias is not None:
                plain.bias.copy_(last.weight @ (middle.weight @ first.bias + middle.bias) + last.bias)
        return plain


class ConvChain(nn.Module):
    """A k x k ``nn.Conv1d`` / ``nn.Conv2d`` trained as 1x1 -> k x k -> 1x1 (see the module docstring);
    :meth:`merged` folds it into one convolution of the original's shape, stride, padding and memory
    layout."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, ratio: float):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise BenchError("expandnets expands ordinary convolutions (groups 1, zero padding given in numbers); "
                             f"found {conv}: use targets=fc for this backbone")
        kind, options = type(conv), dict(device=conv.weight.device, dtype=conv.weight.dtype)
        wide_in, wide_out = max(1, round(ratio * conv.in_channels)), max(1, round(ratio * conv.out_channels))
        self.channels_last = conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.dim() == 4
        self.layers = nn.Sequential(
            kind(conv.in_channels, wide_in, 1, bias=False, **options),  # no bias: exact under zero padding
            kind(wide_in, wide_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                 dilation=conv.dilation, **options),
            kind(wide_out, conv.out_channels, 1, bias=conv.bias is not None, **options))
        if self.channels_last:
            self.layers.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, C_in, *spatial)`` -> ``(B, C_out, *spatial')``, as the original convolution."""
        return self.layers(x)

    def merged(self) -> nn.Module:
        first, middle, last = self.layers
        with torch.no_grad():
            # (out, b) x (b, a, *k) x (a, in) -> (out, in, *k)
            kernel = torch.einsum("ob,ba...,ai->oi...", last.weight.flatten(1), middle.weight, first.weight.flatten(1))
            plain = type(middle)(first.in_channels, last.out_channels, middle.kernel_size, stride=middle.stride,
                                 padding=middle.padding, dilation=middle.dilation, bias=last.bias is not None,
                                 device=kernel.device, dtype=kernel.dtype)
            plain.weight.copy_(kernel)
            if last.bias is not None:
                plain.bias.copy_(last.weight.flatten(1) @ middle.bias + last.bias)
        return plain.to(memory_format=torch.channels_last) if self.channels_last else plain


def expand_model(model: nn.Module, ratio: float, targets: str) -> dict[str, int]:
    """Put chains into ``model`` in place; returns how many linear and convolution layers were expanded."""
    inside_attention = {id(m) for attn in model.modules() if isinstance(attn, nn.MultiheadAttention)
                        for m in attn.modules()}
    chosen = []
    for name, module in model.named_modules():
        if id(module) in inside_attention:
            continue
        if "fc" in targets and type(module) is nn.Linear:
            chosen.append((name, LinearChain, module))
        elif "conv" in targets and type(module) in (nn.Conv1d, nn.Conv2d) and module.groups == 1 \
                and any(k > 1 for k in module.kernel_size):
            chosen.append((name, ConvChain, module))
    if not chosen:
        raise BenchError(f"expandnets found nothing to expand in {type(model).__name__} for targets={targets}")
    for name, chain, module in chosen:
        model.set_submodule(name, chain(module, ratio))
    return {"linear": sum(c is LinearChain for _, c, _ in chosen), "conv": sum(c is ConvChain for _, c, _ in chosen)}


def merge_model(model: nn.Module) -> nn.Module:
    """Fold every chain into one layer, in place: the model is then the plain one."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, (LinearChain, ConvChain))]:
        model.set_submodule(name, module.merged())
    return model


@METHODS.register("expandnets", "ExpandNets: every linear layer and k x k convolution trained as a wider linear "
                  "chain, folded into the plain preset for deployment", params=ExpandNetsParams)
class ExpandNets(Reparameterization):  # every chain folds into a layer of the plain model's shape
    # Its chains train several times slower per step than the plain model (the widened k x k convolutions
    # most), so it runs where a grid names it (--methods expandnets), not in the quick default grid.
    included_by_default = False
    record_fields = {
        "expandnets_expansion_ratio": "r: how much wider the inner layers of each chain are",
        "expandnets_targets": "which layers were expanded (fc, conv or both)",
        "expandnets_linear_layers": "linear layers expanded",
        "expandnets_conv_layers": "convolutions expanded",
        "expandnets_train_params": "parameters of the expanded model that trained",
        "expandnets_deploy_params": "parameters after folding (the plain preset's)",
    }
    params: ExpandNetsParams

    def expand(self, model: nn.Module) -> dict[str, int]:
        return expand_model(model, self.params.expansion_ratio, self.params.targets)

    def fold(self, model: nn.Module) -> nn.Module:
        return merge_model(model)

    def record(self) -> dict:
        return {"expandnets_expansion_ratio": self.params.expansion_ratio,
                "expandnets_targets": self.params.targets, "expandnets_linear_layers": self.expanded["linear"],
                "expandnets_conv_layers": self.expanded["conv"], "expandnets_train_params": self.train_params,
                "expandnets_deploy_params": self.deploy_params}
