"""Latency stability: for each backbone, a deploy model (default: the ``large`` preset) is timed against
the plain ``lightweight`` reference of its backbone in alternating blocks, as ``bench measure`` does,
in each of several fresh processes, with PyTorch eager and with ONNX Runtime at 1 thread. Prints per
backbone and runtime the coefficient of variation across processes of ``latency_ratio`` (target
<= 3 %), and for comparison of the absolute median (``latency_ms``) and minimum (``latency_min_ms``).

Run by hand (not collected by pytest), on a quiet machine for figures to publish:

    python tests/benchmarks/latency_stability.py [--preset large] [--seconds 5] [--processes 5]
                                                 [--max-seconds 5] [--backbones convtransformer,...]

Exports are cached under ``$HRF_BENCH_CACHE/onnx-graphs``. The load average is printed before and
after: figures taken while other jobs share the machine say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.api import default_cache_dir
from bench.data.features import FeatureConfig
from bench.measure import probe, timing
from bench.measure.onnx_io import export_onnx
from bench.registry import BACKBONES, load_builtin_plugins
from bench.training.models import build_backbone

RUNTIMES = (timing.RUNTIME_EAGER, probe.RUNTIME_ORT)


def child(runtime: str, folder: Path, input_dim: int, frames: int, max_seconds: float) -> dict:
    """One fresh-process measurement at 1 thread: the figures ``bench measure`` would record."""
    torch.set_num_threads(1)
    rule = probe.TimingRule(max_seconds=max_seconds)
    if runtime == timing.RUNTIME_EAGER:
        model, reference = (torch.load(folder / f"{name}.pt", weights_only=False).eval() for name in ("model", "reference"))
        runners = timing.eager_runner(model, input_dim, frames), timing.eager_runner(reference, input_dim, frames)
    else:
        runners = (timing.ort_runner(folder / "model.onnx", input_dim, frames, 1),
                   timing.ort_runner(folder / "reference.onnx", input_dim, frames, 1))
    with timing.exclusive():
        return timing.latency_against(*runners, 1, rule, None)


def variation(values: list[float]) -> float:
    """Coefficient of variation (sample standard deviation / mean)."""
    return statistics.stdev(values) / statistics.mean(values)


def spawn(runtime: str, folder: Path, input_dim: int, frames: int, max_seconds: float) -> dict:
    command = [sys.executable, __file__, "--child", runtime, str(folder), str(input_dim), str(frames), str(max_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="large", help="the deploy model timed against the lightweight reference")
    parser.add_argument("--seconds", type=float, default=5.0, help="input duration")
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=probe.TimingRule.max_seconds,
                        help="time cap of each measurement")
    parser.add_argument("--backbones", help="comma-separated (default: all registered)")
    args = parser.parse_args()
    load_builtin_plugins()
    features = FeatureConfig()
    frames = features.frames(args.seconds)
    graph_cache = default_cache_dir() / "onnx-graphs"
    backbones = args.backbones.split(",") if args.backbones else BACKBONES.names()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {probe.usable_cores()} cores; cpu {probe.cpu_model()}")
    print(f"{args.preset} against lightweight, {args.seconds:g} s input ({frames} frames), 1 thread, "
          f"{args.processes} processes per backbone and runtime, up to {args.max_seconds:g} s each")
    print(f"{'backbone':16s} {'runtime':12s} {'ratios':40s} {'ratio CV %':>10s} {'median CV %':>11s} "
          f"{'min CV %':>9s} {'CI width %':>10s}")
    for name in backbones:
        with tempfile.TemporaryDirectory() as folder:
            for role, preset in (("model", args.preset), ("reference", "lightweight")):
                torch.manual_seed(0)
                model = build_backbone(name, preset, features.dim, 4).eval()
                torch.save(model, Path(folder) / f"{role}.pt")
                export_onnx(model, features.dim, Path(folder) / f"{role}.onnx", (frames, 2 * frames), f"{name} {preset}",
                            graph_cache)
            for runtime in RUNTIMES:
                runs = [spawn(runtime, Path(folder), features.dim, frames, args.max_seconds)
                        for _ in range(args.processes)]
                ratios = [r["latency_ratio"] for r in runs]
                width = statistics.median((r["latency_ratio_ci_high"] - r["latency_ratio_ci_low"]) / r["latency_ratio"]
                                          for r in runs)
                print(f"{name:16s} {runtime:12s} {' '.join(f'{x:6.3f}' for x in ratios):40s} "
                      f"{100 * variation(ratios):10.1f} {100 * variation([r['latency_ms'] for r in runs]):11.1f} "
                      f"{100 * variation([r['latency_min_ms'] for r in runs]):9.1f} {100 * width:10.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        runtime, folder, dim, frames, cap = sys.argv[2:7]
        print(json.dumps(child(runtime, Path(folder), int(dim), int(frames), float(cap))))
    else:
        main()
