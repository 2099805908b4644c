"""Cost of a deploy model: parameters, MACs (counted, attention included) and CPU latency."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (packed int8 weights of quantized layers included)."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():  # dynamically quantized Linear keeps its weight outside parameters()
        if hasattr(module, "_packed_params") and hasattr(module, "weight") and callable(module.weight):
            weight = module.weight()
            total += weight.numel() + (module.bias().numel() if module.bias() is not None else 0)
    return total


def count_nonzero_params(model: nn.Module) -> int:
    return int(sum((p != 0).sum().item() for p in model.parameters()))


@contextmanager
def countable_attention():
    """Route attention through plain matmuls so that FLOP counters see it.

    In eval mode ``nn.MultiheadAttention`` takes a fused fast path, and SDPA may use fused kernels,
    that FlopCounterMode does not count.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def example_input(input_dim: int, frames: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, frames, input_dim, generator=generator), torch.full((batch,), frames)


def count_macs(model: nn.Module, input_dim: int, frames: int) -> int:
    """Multiply-accumulates of one eval forward pass on ``frames`` frames (batch 1)."""
    features, lengths = example_input(input_dim, frames)
    model.eval()
    with countable_attention(), torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(features, lengths)
    return counter.get_total_flops() // 2


def latency(model: nn.Module, input_dim: int, frames: int, threads: int = 1, warmup: int = 3,
            min_repeats: int = 10, min_seconds: float = 0.5) -> dict:
    """Median and p90 wall time (ms) of eval forward passes on one ``frames``-long input."""
    features, lengths = example_input(input_dim, frames)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(features, lengths)
            times, started = [], time.perf_counter()
            while len(times) < min_repeats or time.perf_counter() - started < min_seconds:
                t0 = time.perf_counter()
                model(features, lengths)
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(previous)
    times.sort()
    return {"latency_ms": statistics.median(times), "latency_p90_ms": times[int(0.9 * (len(times) - 1))],
            "latency_samples": len(times), "latency_threads": threads}
