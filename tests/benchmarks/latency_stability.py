"""Latency stability: each backbone's deploy model measured 5 times, each time in a fresh process,
with PyTorch eager and with ONNX Runtime at 1 thread. Prints the coefficient of variation of the
reported medians per backbone and runtime (``latency_ms``, target <= 5 %), of the 5th percentiles
(``latency_p5_ms``) and of the fastest runs (``latency_min_ms``), and the ratio ONNX Runtime / eager.

Run by hand (not collected by pytest):

    python tests/benchmarks/latency_stability.py [--preset lightweight] [--seconds 5] [--processes 5]

The load average is printed before and after: figures taken while other jobs share the machine say so.
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

from bench import measure, probe
from bench.features import FeatureConfig
from bench.models import build_backbone
from bench.onnx_io import export_onnx
from bench.registry import BACKBONES, load_builtin_plugins

RUNTIMES = (measure.RUNTIME_EAGER, probe.RUNTIME_ORT)


def child(runtime: str, model_path: Path, input_dim: int, frames: int, max_seconds: float) -> dict:
    """One fresh-process measurement at 1 thread: the stats ``bench measure`` would record."""
    torch.set_num_threads(1)
    rule = probe.TimingRule(max_seconds=max_seconds)
    with measure.exclusive():
        if runtime == measure.RUNTIME_EAGER:
            model = torch.load(model_path, weights_only=False).eval()
            samples = measure.time_eager(model, input_dim, frames, 1, rule)
        else:
            session = probe.ort_session(model_path, 1)
            features, lengths = measure.example_input(input_dim, frames)
            feed = {"features": features.numpy(), "lengths": lengths.numpy()}
            samples = probe.time_adaptively(lambda: probe.clocked(lambda: session.run(None, feed)), rule)
    return probe.summarize(samples, None, rule)


def variation(values: list[float]) -> float:
    """Coefficient of variation (sample standard deviation / mean)."""
    return statistics.stdev(values) / statistics.mean(values)


def spawn(runtime: str, model_path: Path, input_dim: int, frames: int, max_seconds: float) -> dict:
    command = [sys.executable, __file__, "--child", runtime, str(model_path), str(input_dim), str(frames),
               str(max_seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--seconds", type=float, default=5.0, help="input duration")
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=probe.TimingRule.max_seconds,
                        help="time cap of each measurement")
    parser.add_argument("--backbones", help="comma-separated (default: all registered)")
    args = parser.parse_args()
    load_builtin_plugins()
    features = FeatureConfig()
    frames = features.frames(args.seconds)
    backbones = args.backbones.split(",") if args.backbones else BACKBONES.names()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {probe.usable_cores()} cores; cpu {probe.cpu_model()}")
    print(f"{args.preset} preset, {args.seconds:g} s input ({frames} frames), 1 thread, "
          f"{args.processes} processes per backbone and runtime")
    print(f"{'backbone':16s} {'runtime':12s} {'medians (ms)':44s} {'CV %':>6s} {'p5 CV %':>8s} "
          f"{'min CV %':>9s} {'samples':>8s}")
    with tempfile.TemporaryDirectory() as folder:
        ratios = {}
        for name in backbones:
            torch.manual_seed(0)
            model = build_backbone(name, args.preset, features.dim, 4).eval()
            paths = {measure.RUNTIME_EAGER: Path(folder) / f"{name}.pt",
                     probe.RUNTIME_ORT: Path(folder) / f"{name}.onnx"}
            torch.save(model, paths[measure.RUNTIME_EAGER])
            export_onnx(model, features.dim, paths[probe.RUNTIME_ORT], (frames, 2 * frames), name)
            medians = {}
            for runtime in RUNTIMES:
                runs = [spawn(runtime, paths[runtime], features.dim, frames, args.max_seconds)
                        for _ in range(args.processes)]
                medians[runtime] = [r["latency_ms"] for r in runs]
                print(f"{name:16s} {runtime:12s} {' '.join(f'{m:7.2f}' for m in medians[runtime]):44s} "
                      f"{100 * variation(medians[runtime]):6.1f} "
                      f"{100 * variation([r['latency_p5_ms'] for r in runs]):8.1f} "
                      f"{100 * variation([r['latency_min_ms'] for r in runs]):9.1f} "
                      f"{statistics.median(r['latency_samples'] for r in runs):8.0f}", flush=True)
            ratios[name] = (statistics.median(medians[probe.RUNTIME_ORT])
                            / statistics.median(medians[measure.RUNTIME_EAGER]))
    print("ONNX Runtime / eager latency at 1 thread: "
          + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items()))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        runtime, path, dim, frames, cap = sys.argv[2:7]
        print(json.dumps(child(runtime, Path(path), int(dim), int(frames), float(cap))))
    else:
        main()
