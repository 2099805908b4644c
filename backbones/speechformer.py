"""SpeechFormer (Chen et al., Interspeech 2022) with padding masks and variable lengths.

A hierarchical Transformer whose four stages follow speech structure at a 10 ms hop: stage 1
attends within windows of 5 frames ("frame", 50 ms), stage 2 within 9 tokens of 50 ms ("phoneme"),
stage 3 within 9 tokens of 250 ms ("word"), stage 4 globally over 1 s tokens ("utterance"). Between
stages a merge block average-pools non-overlapping groups of 5, 5 and 4 tokens, then applies
Linear(d, d * expand) and LayerNorm. Stages hold [2, 2, 4, 4] post-LN encoder layers with 8 heads and
a ReLU FFN of width d/2; sinusoidal positions enter stage 1; the utterance embedding pools stage 4's
tokens (:class:`backbones.layers.StatsPooling`: their mean as in the paper, or mean + std, or attentive
mean + std: width p = d or 2 d), classified by an MLP p -> d/2 -> d/4 -> classes.

Differences from the original code, which pads or crops every input to a fixed length:

- padding masks everywhere: windows get per-window key padding masks, merges average valid tokens
  only and lengths become ``ceil(length / group)``, pooling is masked; an utterance's output does not
  depend on its batch's padding;
- windowed attention is ``nn.MultiheadAttention`` (inside :class:`backbones.layers.EncoderLayer`, so
  HRF, pruning and low-rank find it) run on non-overlapping windows reshaped to
  ``(B * windows, w, d)``, so every projection is computed once and the cost grows linearly with
  length (only stage 4 is quadratic, in seconds of audio). The original model slides a window
  centred on each token; here a token at a window's edge sees across it only after the next merge;
- a Linear(input_dim, d) input projection, because the 80-d log-mel default is narrower than d;
- DeepNorm residual scaling and initialization (:class:`DeepNormLayer`): with plain post-LN layers
  the 12-layer stack collapsed to a constant output at the benchmark's learning rate (2e-3; the
  original trains 120 epochs at 1e-3 or less).

Presets (80-d log-mel input, 4 classes): ``lightweight`` is the paper's small model (d = 128, expand
[1, 1, 1, -1]), about 1.07 M parameters; ``large`` is its base model (expand [1, 1, 2, -1]: stage 4 at
d = 256), about 2.1 M (the paper's 1.06 M / 2.10 M with 128-d input). Both cost about 0.1 G MACs for 5 s
on the CPU: nearly all of it in stage 1 at the frame rate, so the base model's doubled stage 4 adds
parameters but almost no MACs. In ``expand``, the last entry (-1) stands for the final utterance-level
merge, which is the pooling.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from backbones.convtransformer import attention_macs, ffn_macs
from backbones.layers import (ClassifierHead, EncoderLayer, StatsPooling, padding_mask, pooled_width,
                              pooling_macs, sinusoidal_positions)
from bench.registry import BACKBONES

__all__ = ["SpeechFormer"]

WINDOWS = (5, 9, 9, 0)  # attention window (tokens) per stage; 0 = global
MERGE_SIZES = (5, 5, 4)  # tokens averaged by the merge block after stages 1-3

PRESETS = {
    "tiny": dict(d_model=32, num_heads=4, layers=(1, 1, 1, 1), expand=(1, 1, 2, -1), pooling="mean"),
    "lightweight": dict(d_model=128, num_heads=8, layers=(2, 2, 4, 4), expand=(1, 1, 1, -1), pooling="mean"),
    "medium": dict(d_model=128, num_heads=8, layers=(2, 2, 4, 2), expand=(1, 1, 2, -1),  # half of large's stage 4
                   pooling="mean"),
    "large": dict(d_model=128, num_heads=8, layers=(2, 2, 4, 4), expand=(1, 1, 2, -1), pooling="mean"),
}


def stage_widths(d_model: int, expand: tuple[int, ...]) -> list[int]:
    """Token width of each of the four stages: ``d_model`` times the expansions of earlier merges."""
    widths = [d_model]
    for factor in expand[:3]:
        widths.append(widths[-1] * factor)
    return widths


def _windows(x: torch.Tensor, mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``(B, T, D)``, mask ``(B, T)`` -> ``(B * n, window, D)`` and ``(B * n, window)``, n = ceil(T / window).

    Windows start at frame 0 whatever the batch's padding. A window holding padding only would give
    NaN attention (every key masked); its first key is unmasked, and its outputs are padding anyway.
    """
    b, t, d = x.shape
    padded = math.ceil(t / window) * window
    x = nn.functional.pad(x, (0, 0, 0, padded - t)).reshape(-1, window, d)
    mask = nn.functional.pad(mask, (0, padded - t), value=True).reshape(-1, window)
    first = torch.arange(window, device=mask.device) == 0
    return x, mask & ~(mask.all(1, keepdim=True) & first)


class DeepNormLayer(EncoderLayer):
    """Post-LN encoder layer with DeepNorm (Wang et al., 2022): ``LN(alpha * x + sublayer(x))`` and the
    FFN, value and output projections initialized with Xavier gain ``beta``.

    Plain post-LN stacks of SpeechFormer's depth collapse at the benchmark's learning rate (every
    utterance ends up with the same embedding); DeepNorm keeps them training without changing any
    layer's shape or cost (``alpha`` is a constant factor).
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, alpha: float, beta: float):
        super().__init__(d_model, num_heads, ffn_dim, dropout, pre_norm=False)
        self.alpha = alpha
        query_key, value = self.attn.in_proj_weight[: 2 * d_model], self.attn.in_proj_weight[2 * d_model:]
        for weight, gain in ((query_key, 1.0), (value, beta), (self.attn.out_proj.weight, beta),
                             (self.ffn.w1.weight, beta), (self.ffn.w2.weight, beta)):
            nn.init.xavier_normal_(weight, gain=gain)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, T, D)``, mask ``(B, T)`` True at padding -> ``(B, T, D)``."""
        x = self.norm1(self.alpha * x + self._attend(x, mask, attn_mask))
        return self.norm2(self.alpha * x + self.ffn(x))


class Stage(nn.Module):
    """LayerNorm, then post-LN encoder layers attending within non-overlapping windows of ``window``
    tokens (0: globally).

    Args:
        d_model, num_heads, num_layers, window: stage sizes; the FFN is d_model / 2 wide (ReLU).
        dropout: dropout everywhere.
        total_layers: encoder layers of the whole model, which set DeepNorm's constants.
    """

    def __init__(self, d_model: int, num_heads: int, num_layers: int, window: int, dropout: float,
                 total_layers: int):
        super().__init__()
        self.window = window
        self.input_norm = nn.LayerNorm(d_model)  # as the original's stages
        alpha, beta = (2 * total_layers) ** 0.25, (8 * total_layers) ** -0.25  # DeepNorm, encoder-only
        self.layers = nn.ModuleList(DeepNormLayer(d_model, num_heads, d_model // 2, dropout, alpha, beta)
                                    for _ in range(num_layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, D)``, lengths ``(B,)`` -> ``(B, T, D)``."""
        b, t, d = x.shape
        x, mask = self.input_norm(x), padding_mask(lengths, t)
        if self.window:
            x, mask = _windows(x, mask, self.window)
        for layer in self.layers:
            x = layer(x, mask)
        return x.reshape(b, -1, d)[:, :t] if self.window else x


class MergeBlock(nn.Module):
    """Average of each non-overlapping group of ``size`` valid tokens, then Linear(d, d * expand) + LayerNorm."""

    def __init__(self, d_model: int, size: int, expand: int):
        super().__init__()
        self.size = size
        self.projection = nn.Linear(d_model, d_model * expand)
        self.norm = nn.LayerNorm(d_model * expand)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, T, D)``, lengths ``(B,)`` -> ``(B, ceil(T / size), D * expand)`` and ``ceil(lengths / size)``."""
        b, t, d = x.shape
        groups = math.ceil(t / self.size)
        valid = (~padding_mask(lengths, groups * self.size)).to(x.dtype).reshape(b, groups, self.size, 1)
        x = nn.functional.pad(x, (0, 0, 0, groups * self.size - t)).reshape(b, groups, self.size, d)
        pooled = (x * valid).sum(2) / valid.sum(2).clamp(min=1)
        lengths = torch.div(lengths + self.size - 1, self.size, rounding_mode="floor")
        return self.norm(self.projection(pooled)), lengths


class SpeechFormer(nn.Module):
    """Hierarchical windowed Transformer classifier.

    Args:
        input_dim: feature bins per frame.
        num_classes: output classes.
        d_model: width of stages 1 (and of later stages, times the merges' expansions).
        num_heads: attention heads in every stage (must divide every stage width).
        layers: encoder layers per stage (4 entries).
        expand: width factor of the merges after stages 1-3, then -1 for the final pooling.
        windows: attention window per stage in tokens, 0 = global. (Default: ``(5, 9, 9, 0)``)
        merge_sizes: tokens pooled by each merge block. (Default: ``(5, 5, 4)``)
        dropout: dropout everywhere. (Default: 0.1)
        pooling: utterance pooling of stage 4, ``"mean"``, ``"meanstd"`` or ``"attentive"`` (see
            :class:`backbones.layers.StatsPooling`); the head's input is ``pooling.output_dim`` wide, its
            hidden layers keep stage 4's width / 2 and / 4. (Default: ``"mean"``)
    """

    def __init__(self, input_dim: int, num_classes: int, d_model: int, num_heads: int, layers: tuple[int, ...],
                 expand: tuple[int, ...], windows: tuple[int, ...] = WINDOWS,
                 merge_sizes: tuple[int, ...] = MERGE_SIZES, dropout: float = 0.1, pooling: str = "mean"):
        super().__init__()
        if len(layers) != 4 or len(windows) != 4 or len(expand) != 4 or len(merge_sizes) != 3:
            raise ValueError(f"SpeechFormer has 4 stages and 3 merges, got {layers=}, {windows=}, {expand=}, {merge_sizes=}")
        widths = stage_widths(d_model, expand)
        self.projection = nn.Linear(input_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.stages = nn.ModuleList(Stage(w, num_heads, n, window, dropout, sum(layers))
                                    for w, n, window in zip(widths, layers, windows))
        self.merges = nn.ModuleList(MergeBlock(w, size, factor)
                                    for w, size, factor in zip(widths, merge_sizes, expand))
        self.pooling = StatsPooling(widths[-1], pooling)
        self.head = ClassifierHead(self.pooling.output_dim, num_classes, hidden=(widths[-1] // 2, widths[-1] // 4),
                                   dropout=dropout)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> pooled embedding ``(B, pooling.output_dim)``: stage 4's
        width ``d_model * prod(expand[:3])``, doubled by ``"meanstd"`` and ``"attentive"`` pooling."""
        x = self.projection(features)
        x = self.dropout(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device))
        for stage, merge in zip(self.stages, self.merges):
            x, lengths = merge(stage(x, lengths), lengths)
        return self.pooling(self.stages[-1](x, lengths), lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features ``(B, T, F)``, lengths ``(B,)`` -> logits ``(B, num_classes)``."""
        return self.head(self.embed(features, lengths))


def speechformer_macs(config: dict, input_dim: int, num_classes: int, frames: int) -> int:
    """Hand-derived MACs of one forward pass (batch 1): input projection; per windowed stage, layers
    over the tokens padded to whole windows, each query attending to its window (linear in length);
    global attention in stage 4 (quadratic in its 1 s tokens); merge projections; the pooling's (attentive:
    its frame scorer over stage 4's tokens); the MLP head, whose input is the pooled width."""
    d = config["d_model"]
    windows, sizes = config.get("windows", WINDOWS), config.get("merge_sizes", MERGE_SIZES)
    widths = stage_widths(d, config["expand"])
    tokens, macs = frames, frames * input_dim * d
    for stage, (width, num_layers, window) in enumerate(zip(widths, config["layers"], windows)):
        computed = math.ceil(tokens / window) * window if window else tokens
        layer = attention_macs(computed, window or tokens, width) + ffn_macs(computed, width, width // 2)
        macs += num_layers * layer
        if stage < 3:
            tokens = math.ceil(tokens / sizes[stage])
            macs += tokens * width * widths[stage + 1]
    final, pooling = widths[-1], config.get("pooling", "mean")
    macs += pooling_macs(pooling, tokens, final)
    return macs + pooled_width(final, pooling) * (final // 2) + (final // 2) * (final // 4) + (final // 4) * num_classes


@BACKBONES.register("speechformer", "hierarchical windowed Transformer: frame/phoneme/word/utterance stages "
                    "(SpeechFormer, with padding masks)", presets=PRESETS, analytic_macs=speechformer_macs)
def speechformer(input_dim: int, num_classes: int, **config) -> SpeechFormer:
    return SpeechFormer(input_dim, num_classes, **config)
