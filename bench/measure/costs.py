"""Cost of a deploy model: parameters, MACs and FLOPs (counted, attention included), serialized size and
peak memory of one inference."""

from __future__ import annotations

import io
import os
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

LATENCY_SECONDS = 5.0  # input duration for MACs and latency in run records (and the deploy budget)

PEAK_MEMORY_METHOD = "torch.profiler CPU allocator events"  # recorded beside every peak memory figure
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


def is_quantized(model: nn.Module) -> bool:
    return any(hasattr(m, "_packed_params") for m in model.modules())


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: float32 weights, or packed int8 where quantized."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


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
    """Multiply-accumulates of one eval forward pass on ``frames`` frames (batch 1). Dynamically
    quantized linear layers, whose int8 kernels the FLOP counter does not see, are counted by hooks:
    an int8 multiply-accumulate is still one."""
    features, lengths = example_input(input_dim, frames)
    model.eval()
    quantized_macs = []
    hooks = [m.register_forward_hook(lambda m, args, out: quantized_macs.append(args[0].numel() * m.out_features))
             for m in model.modules() if hasattr(m, "_packed_params") and hasattr(m, "out_features")]
    try:
        with countable_attention(), torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(features, lengths)
    finally:
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + sum(quantized_macs)


@contextmanager
def _silent_stderr():
    """Kineto writes status lines straight to file descriptor 2; keep them off the user's terminal."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(model: nn.Module, input_dim: int, frames: int) -> int:
    """Peak bytes held by the torch CPU allocator during one eval forward pass on ``frames`` frames,
    above what was held before it (activations and temporaries; weights and the input excluded),
    from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    features, lengths = example_input(input_dim, frames)
    model.eval()
    with torch.inference_mode():
        model(features, lengths)  # first-call allocations (lazy initialisation) are not the model's
        with _silent_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(features, lengths)
    # kineto_results is private, but no public API gives the CPU allocation timeline: prof.events() drops
    # the allocations attributed to an operator, and export_memory_timeline is deprecated and CUDA-minded.
    # A torch that drops it fails here, and cost_figures records the figure as missing with the reason.
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    return peak


def cost_figures(model: nn.Module, input_dim: int, frames: int) -> dict:
    """Params (total, nonzero), MACs, FLOPs (= 2 x MACs), serialized size and peak memory at ``frames``.
    A counter that fails on an unknown operator leaves its figure None with the reason beside it."""
    figures = {"params": count_params(model), "nonzero_params": count_nonzero_params(model),
               "size_bytes": serialized_size(model), "size_format": "int8" if is_quantized(model) else "float32"}
    try:
        figures["macs"] = count_macs(model, input_dim, frames)
        figures["flops"] = 2 * figures["macs"]
    except Exception as error:  # e.g. an operator the counter does not know; never fatal for a run
        figures["macs"], figures["flops"], figures["macs_error"] = None, None, str(error).splitlines()[0][:200]
    try:
        figures["peak_memory_bytes"] = peak_memory(model, input_dim, frames)
        figures["peak_memory_method"] = PEAK_MEMORY_METHOD
    except Exception as error:  # the profiler is optional machinery; a missing figure is recorded as such
        figures["peak_memory_bytes"], figures["peak_memory_error"] = None, str(error).splitlines()[0][:200]
    return figures
