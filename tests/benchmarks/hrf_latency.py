"""Merged-HRF latency against the plain model of the same preset, for every registered backbone.

After deHRF the deployed model has the plain preset's structure, so its CPU latency should match
the plain model's (ratio 0.95-1.05). Both are timed in one process on the same input (5 s of 80-d
log-mel frames, batch 1, eval, inference mode), one forward pass of each in turn, so that drift and
noisy neighbours hit both alike; the ratios of the medians and of the lower quartiles are printed.

Run by hand:  python tests/benchmarks/hrf_latency.py [--preset lightweight] [--passes 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bench.data.features import FeatureConfig
from bench.measure.costs import example_input
from bench.training.models import build_backbone
from bench.registry import BACKBONES, load_builtin_plugins
from methods.hrf import expand_model, merge_model


def merged_hrf(plain: torch.nn.Module, ratio: float, targets: str) -> torch.nn.Module:
    """The deploy model of HRF: expand, move the weights off their init (as training would), merge."""
    model = copy.deepcopy(plain)
    expand_model(model, ratio, "default", targets)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return merge_model(model).eval()


def alternating_times(models: dict[str, torch.nn.Module], inputs: tuple, passes: int) -> dict[str, list[float]]:
    """Milliseconds of ``passes`` forward passes of each model, the models taking turns pass by pass."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            for _ in range(3):
                model(*inputs)
        for i in range(passes):
            for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
                started = time.perf_counter()
                models[name](*inputs)
                times[name].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--ratio", type=float, default=4.0)
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0, help="input duration")
    args = parser.parse_args()
    load_builtin_plugins()
    torch.set_num_threads(args.threads)
    features = FeatureConfig()
    inputs = example_input(features.dim, features.frames(args.seconds))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.seconds:g} s input ({inputs[0].shape[1]} "
          f"frames), preset {args.preset}, r={args.ratio:g}, {args.passes} alternating passes each")
    print(f"{'backbone':16} {'targets':9} {'plain ms':>9} {'merged ms':>10} {'median ratio':>13} {'p25 ratio':>10}")
    for backbone in BACKBONES.names():
        torch.manual_seed(0)
        plain = build_backbone(backbone, args.preset, features.dim, 4).eval()
        for targets in ("ffn", "ffn+attn"):
            times = alternating_times({"plain": plain, "merged": merged_hrf(plain, args.ratio, targets)}, inputs,
                                      args.passes)
            plain_ms, merged_ms = statistics.median(times["plain"]), statistics.median(times["merged"])
            quartile = {name: statistics.quantiles(t, n=4)[0] for name, t in times.items()}
            print(f"{backbone:16} {targets:9} {plain_ms:9.2f} {merged_ms:10.2f} {merged_ms / plain_ms:13.3f} "
                  f"{quartile['merged'] / quartile['plain']:10.3f}")


if __name__ == "__main__":
    main()
