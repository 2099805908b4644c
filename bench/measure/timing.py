"""Latency of a deploy model in PyTorch (eager CPU, CUDA when present) and ONNX Runtime, timed
interleaved against the reference model, one timing at a time on a machine.

Timing uses the rule and row schema of :mod:`bench.measure.probe`, the standalone on-device probe, so
that every runtime is timed and reported alike."""

from __future__ import annotations

import copy
import functools
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from bench.measure.costs import example_input
from bench.measure.onnx_io import export_onnx, peak_graphs
from bench.measure.probe import (RUNTIME_ORT, TimingRule, clocked, ort_session, peak_gflops, ratio_figures, roofline,
                                 summarize, time_adaptively, time_interleaved)
from bench.paths import file_lock

RUNTIME_EAGER = "torch-eager"
RUNTIME_CUDA = "torch-cuda"
# Timings on one machine are taken one at a time, whichever process or results folder asks.
MACHINE_LOCK = Path(tempfile.gettempdir()) / "hrf-bench-measure.lock"
QUICK_RULE = TimingRule(warmup_runs=3, warmup_seconds=0.1, min_samples=10, min_seconds=0.25, max_seconds=0.5,
                        target_rel_ci=0.02)
# In-run ratio against the reference: at least 1 s of alternating blocks (8 pairs), at most 2 s.
IN_RUN_RULE = TimingRule(warmup_runs=3, warmup_seconds=0.1, min_samples=8, min_seconds=1.0, max_seconds=2.0,
                         target_rel_ci=0.02)


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
