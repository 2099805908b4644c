"""How close each backbone's deploy model runs to this core's GEMM limit: the plain model of a preset
(default ``lightweight``) in ONNX Runtime at 1 thread, float and int8 (static QDQ, calibrated on random
utterances: latency does not depend on the ranges), against the peak GEMM rates that ``bench measure``
records. Prints per backbone and precision: MACs (int8 / float), the median and minimum latency, the
achieved GFLOP/s, and ``roofline_ratio`` (measured time / the time its FLOPs take at peak).

Run by hand (not collected by pytest), on a quiet machine for figures to publish:

    python tests/benchmarks/roofline.py [--preset lightweight] [--seconds 10] [--max-seconds 5]
                                        [--backbones convtransformer,...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from bench.api import default_cache_dir
from bench.data.features import FeatureConfig
from bench.measure import probe, timing
from bench.measure.onnx_io import export_onnx, graph_macs
from bench.registry import BACKBONES, load_builtin_plugins
from bench.training.models import build_backbone
from methods.quant import quantize_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--seconds", type=float, default=10.0, help="input duration")
    parser.add_argument("--max-seconds", type=float, default=probe.TimingRule.max_seconds)
    parser.add_argument("--backbones", help="comma-separated (default: all registered)")
    args = parser.parse_args()
    load_builtin_plugins()
    features = FeatureConfig()
    frames = features.frames(args.seconds)
    graph_cache = default_cache_dir() / "onnx-graphs"
    rule = probe.TimingRule(max_seconds=args.max_seconds)
    peaks = timing.peak_rates()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {probe.usable_cores()} cores; cpu {probe.cpu_model()}")
    print(f"peak GEMM at 1 thread: fp32 {peaks['fp32']:.0f} GFLOP/s, int8 {peaks['int8']:.0f} GFLOP/s; "
          f"{args.preset} preset, {args.seconds:g} s input ({frames} frames), onnxruntime, 1 thread")
    print(f"{'backbone':16s} {'precision':9s} {'int8 MMAC':>9s} {'float MMAC':>10s} {'median ms':>9s} "
          f"{'min ms':>7s} {'GFLOP/s':>8s} {'roofline':>8s} {'at min':>7s}")
    for name in args.backbones.split(",") if args.backbones else BACKBONES.names():
        torch.manual_seed(0)
        model = build_backbone(name, args.preset, features.dim, 4).eval()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "float.onnx"
            export_onnx(model, features.dim, path, (frames, 2 * frames), name, graph_cache)
            generator = torch.Generator().manual_seed(1)
            calibration = [torch.randn(n, features.dim, generator=generator) for n in (frames // 2, frames)]
            graphs = {"fp32": path.read_bytes(), "int8": quantize_graph(path, "static", calibration)}
        for precision, graph in graphs.items():
            macs = graph_macs(graph, features.dim, frames)
            run = timing.ort_runner(graph, features.dim, frames, 1)
            with timing.exclusive():
                stats = probe.summarize(probe.time_adaptively(run, rule), args.seconds, rule)
            bound = probe.roofline(stats["latency_ms"], macs["float_macs"], macs["int8_macs"], peaks)
            print(f"{name:16s} {precision:9s} {macs['int8_macs'] / 1e6:9.1f} {macs['float_macs'] / 1e6:10.1f} "
                  f"{stats['latency_ms']:9.2f} {stats['latency_min_ms']:7.2f} "
                  f"{2 * macs['macs'] / stats['latency_ms'] / 1e6:8.1f} {bound['roofline_ratio']:8.2f} "
                  f"{bound['roofline_ratio'] * stats['latency_min_ms'] / stats['latency_ms']:7.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
