"""Where the int8 graph's time goes, against the float graph it was made from: for each backbone's plain
model of a preset (default ``lightweight``, random weights: latency does not depend on their values) on
one utterance (default 10 s), in ONNX Runtime at 1 thread,

- the per-node-type time of the float and the int8 graph from ONNX Runtime's own profiler
  (``SessionOptions.enable_profiling``; the nodes ORT actually runs, after its graph optimizations),
  as ms per run and share of the summed node time, the top ``--top`` types;
- the int8/fp32 latency ratio measured interleaved in one process (the two sessions alternate in
  blocks, ABBA; :func:`bench.measure.probe.time_interleaved`): median of the per-pair ratios and its
  95 % bootstrap interval, and both medians in ms. Lead with the ratio: on a shared VM absolute times
  drift between minutes, the ratio of two sessions timed side by side much less.

The int8 graph is the one ``quant`` ships (:func:`methods.quant.quantize_graph`, static scheme),
calibrated on random utterances (its ranges do not change which kernels run).

Run by hand (not collected by pytest), on a machine as quiet as you can get:

    python tests/benchmarks/int8_profile.py [--backbones convtransformer,conformer,speechformer]
        [--preset lightweight] [--seconds 10] [--profile-runs 20] [--ratio-seconds 6] [--top 8]
        [--save-graphs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from bench.api import default_cache_dir
from bench.data.features import FeatureConfig
from bench.measure import probe, timing
from bench.measure.costs import example_input
from bench.measure.onnx_io import export_onnx
from bench.registry import load_builtin_plugins
from bench.training.models import build_backbone
from methods.quant import quantize_graph

BACKBONES = ("convtransformer", "conformer", "speechformer")


def node_profile(graph: bytes, input_dim: int, frames: int, runs: int) -> dict[str, float]:
    """Milliseconds per run spent in each node type (ORT's profiler, 1 thread, after warm-up runs)."""
    import onnxruntime as ort

    features, lengths = example_input(input_dim, frames)
    feed = {"features": features.numpy(), "lengths": lengths.numpy()}
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        for _ in range(3):  # warm-up: first runs allocate and pack weights
            session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    # Node events of the timed runs only (after the warm-up runs' model_run events); each node's time is
    # the median over the runs, so that a run preempted by another process on a shared core does not
    # charge its stall to whichever node it hit.
    begins = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_timed = begins[3] if len(begins) > 3 else 0
    times: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_timed:
            times[event["name"]].append(event["dur"] / 1000)
            kinds[event["name"]] = event["args"].get("op_name", "?")
    per_type: dict[str, float] = defaultdict(float)
    for node, durations in times.items():
        per_type[kinds[node]] += float(np.median(durations)) * len(durations) / runs
    return dict(per_type)


def interleaved(int8: bytes, fp32: bytes, input_dim: int, frames: int, seconds: float) -> dict:
    """int8/fp32 ratio timed in alternating blocks (median per-pair ratio, 95 % interval) and medians."""
    rule = probe.TimingRule(warmup_runs=3, warmup_seconds=0.2, min_samples=16, min_seconds=seconds,
                            max_seconds=seconds, target_rel_ci=0.0)  # run the whole span: both drift alike
    run_int8 = timing.ort_runner(int8, input_dim, frames, 1)
    run_fp32 = timing.ort_runner(fp32, input_dim, frames, 1)
    with timing.exclusive():
        figures = probe.ratio_figures(probe.time_interleaved(run_int8, run_fp32, rule), None, rule)
    return {"ratio": figures["latency_ratio"], "low": figures["latency_ratio_ci_low"],
            "high": figures["latency_ratio_ci_high"], "pairs": figures["latency_ratio_pairs"],
            "int8_ms": figures["latency_ms"], "fp32_ms": figures["reference_latency_ms"]}


def graphs_of(name: str, preset: str, input_dim: int, frames: int, graph_cache: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    model = build_backbone(name, preset, input_dim, 4).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "float.onnx"
        export_onnx(model, input_dim, path, (frames, 2 * frames), name, graph_cache)
        generator = torch.Generator().manual_seed(1)
        calibration = [torch.randn(n, input_dim, generator=generator) for n in (frames // 2, frames)]
        return {"fp32": path.read_bytes(), "int8": quantize_graph(path, "static", calibration)}


def report(name: str, graphs: dict[str, bytes], input_dim: int, frames: int, args) -> dict:
    profiles = {precision: node_profile(graph, input_dim, frames, args.profile_runs)
                for precision, graph in graphs.items()}
    ratio = interleaved(graphs["int8"], graphs["fp32"], input_dim, frames, args.ratio_seconds)
    print(f"\n== {name}: int8/fp32 = {ratio['ratio']:.3f} [{ratio['low']:.3f}, {ratio['high']:.3f}] "
          f"({ratio['pairs']} pairs); median int8 {ratio['int8_ms']:.2f} ms, fp32 {ratio['fp32_ms']:.2f} ms; "
          f"fp32/int8 speed-up {1 / ratio['ratio']:.2f}x", flush=True)
    for precision, per_type in profiles.items():
        total = sum(per_type.values())
        top = sorted(per_type.items(), key=lambda kv: -kv[1])[:args.top]
        nodes = len(_optimized_nodes(graphs[precision]))
        print(f"  {precision}: {total:.2f} ms of node time per run (sum of node medians), {nodes} nodes after ORT's optimizations")
        for op, ms in top:
            print(f"    {op:28s} {ms:7.3f} ms {100 * ms / total:5.1f} %")
    return {"ratio": ratio, "profiles": profiles}


def _optimized_nodes(graph: bytes) -> list[str]:
    """Node types of the graph as ORT runs it (the optimized model it would save)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--seconds", type=float, default=10.0, help="input duration")
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--ratio-seconds", type=float, default=6.0, help="time of the interleaved ratio")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--save-graphs", type=Path, help="write <backbone>-{fp32,int8}.onnx here")
    args = parser.parse_args()
    load_builtin_plugins()
    features = FeatureConfig()
    frames = features.frames(args.seconds)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {probe.usable_cores()} cores; cpu {probe.cpu_model()}; "
          f"{args.preset} preset, {args.seconds:g} s input ({frames} frames), onnxruntime, 1 thread")
    for name in args.backbones.split(","):
        graphs = graphs_of(name, args.preset, features.dim, frames, default_cache_dir() / "onnx-graphs")
        if args.save_graphs:
            args.save_graphs.mkdir(parents=True, exist_ok=True)
            for precision, graph in graphs.items():
                (args.save_graphs / f"{name}-{precision}.onnx").write_bytes(graph)
        report(name, graphs, features.dim, frames, args)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
