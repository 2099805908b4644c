"""Cost of a deploy model: parameters, MACs and FLOPs (counted, attention included), serialized size,
peak memory of one inference, and latency in PyTorch (eager CPU, CUDA when present).

Latency uses the timing rule and row schema of :mod:`bench.measure.probe`, the standalone on-device probe,
so that every runtime is timed and reported alike.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.paths import file_lock
from bench.measure.probe import (RUNTIME_ORT, TimingRule, clocked, ort_session, peak_gflops, ratio_figures, roofline,
                         summarize, time_adaptively, time_interleaved)

LATENCY_SECONDS = 5.0  # input duration for MACs and latency in run records (and the deploy budget)

RUNTIME_EAGER = "torch-eager"
RUNTIME_CUDA = "torch-cuda"
PEAK_MEMORY_METHOD = "torch.profiler CPU allocator events"  # recorded beside every peak memory figure
# Timings on one machine are taken one at a time, whichever process or results folder asks.
MACHINE_LOCK = Path(tempfile.gettempdir()) / "hrf-bench-measure.lock"
QUICK_RULE = TimingRule(warmup_runs=3, warmup_seconds=0.1, min_samples=10, min_seconds=0.25, max_seconds=0.5,
                        target_rel_ci=0.02)
# In-run ratio against the reference: at least 1 s of alternating blocks (8 pairs), at most 2 s.
IN_RUN_RULE = TimingRule(warmup_runs=3, warmup_seconds=0.1, min_samples=8, min_seconds=1.0, max_seconds=2.0,
                         target_rel_ci=0.02)


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


def exclusive() -> FileLock:
    """Hold while timing, so that co-located measurements do not disturb each other."""
    return file_lock(MACHINE_LOCK)


@contextmanager
def torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_eager(model: nn.Module, input_dim: int, frames: int, threads: int,
               rule: TimingRule) -> list[tuple[float, float]]:
    """(wall, CPU) milliseconds per eval forward pass in ``torch.inference_mode`` with ``threads`` threads."""
    features, lengths = example_input(input_dim, frames)
    model.eval()
    with torch_threads(threads), torch.inference_mode():
        return time_adaptively(lambda: clocked(lambda: model(features, lengths)), rule)


def time_cuda(model: nn.Module, input_dim: int, frames: int, rule: TimingRule) -> list[tuple[float, None]]:
    """Milliseconds per forward pass on the GPU, timed with CUDA events (the model is copied there)."""
    device = torch.device("cuda")
    gpu_model = _copy_to(model, device)
    features, lengths = (t.to(device) for t in example_input(input_dim, frames))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def sample() -> tuple[float, None]:
        start.record()
        gpu_model(features, lengths)
        end.record()
        end.synchronize()
        return start.elapsed_time(end), None

    with torch.inference_mode():
        return time_adaptively(sample, rule)


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` on ``device`` (the original stays where it is)."""
    return copy.deepcopy(model).to(device).eval()


@functools.cache
def peak_rates() -> dict:
    """The core's peak GEMM rate per precision at 1 thread (GFLOP/s), measured once per process."""
    from bench.measure.onnx_io import peak_graphs
    return peak_gflops(peak_graphs(), 1)


def eager_runner(model: nn.Module, input_dim: int, frames: int):
    """A ``clocked`` eager forward pass of ``model`` on one utterance of ``frames`` frames."""
    features, lengths = example_input(input_dim, frames)
    model.eval()
    return lambda: clocked(lambda: model(features, lengths))


def ort_runner(graph: bytes | Path, input_dim: int, frames: int, threads: int):
    """A ``clocked`` ONNX Runtime run of ``graph`` on one utterance of ``frames`` frames (its idle threads
    do not spin: it is timed in alternation with another session)."""
    session = ort_session(graph, threads, spinning=False)
    features, lengths = example_input(input_dim, frames)
    feed = {"features": features.numpy(), "lengths": lengths.numpy()}
    return lambda: clocked(lambda: session.run(None, feed))


def latency_against(run_model, run_reference, threads: int, rule: TimingRule, audio_seconds: float | None,
                    macs: dict | None = None) -> dict:
    """Latency of ``run_model`` timed in alternating blocks with ``run_reference`` (the plain lightweight
    model of the same backbone, same runtime) at ``threads`` threads: the model's latency figures,
    ``latency_ratio`` with its interval, and, at 1 thread with ``macs`` (``float_macs``, ``int8_macs``),
    the roofline ratio against this core's peak GEMM rates."""
    with torch_threads(threads), torch.inference_mode():
        figures = ratio_figures(time_interleaved(run_model, run_reference, rule), audio_seconds, rule)
    if threads == 1 and macs:
        figures.update(roofline(figures["latency_ms"], macs.get("float_macs"), macs.get("int8_macs"), peak_rates()))
    return figures


def deploy_latency(model: nn.Module, reference: nn.Module, input_dim: int, frames: int, macs: dict,
                   graph_cache: Path | None = None, rule: TimingRule = IN_RUN_RULE,
                   audio_seconds: float | None = None, graph: bytes | None = None) -> dict:
    """The run record's latency at 1 thread against ``reference``: eager PyTorch, or, when the method
    ships its own ONNX ``graph`` (quant's int8 one, which has no eager path), that graph in ONNX Runtime
    against the reference's float export."""
    from bench.measure.onnx_io import export_onnx

    if graph is None:
        runners = eager_runner(model, input_dim, frames), eager_runner(reference, input_dim, frames)
        runtime = RUNTIME_EAGER
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "reference.onnx"
            export_onnx(reference, input_dim, path, what="the plain reference model", graph_cache=graph_cache)
            runners = ort_runner(graph, input_dim, frames, 1), ort_runner(path, input_dim, frames, 1)
        runtime = RUNTIME_ORT
    figures = latency_against(*runners, 1, rule, audio_seconds, macs)
    return {**figures, "latency_threads": 1, "latency_runtime": runtime}


def latency(model: nn.Module, input_dim: int, frames: int, threads: int = 1, rule: TimingRule = QUICK_RULE,
            audio_seconds: float | None = None) -> dict:
    """Eager CPU latency for a run record: median, p90, IQR (ms), samples, threads, real-time factor."""
    stats = summarize(time_eager(model, input_dim, frames, threads, rule), audio_seconds, rule)
    return {**stats, "latency_threads": threads, "latency_runtime": RUNTIME_EAGER}
