"""Training throughput against this CPU's GEMM limit: per backbone x preset x precision, milliseconds per
training step, the achieved GFLOP/s and the fraction of that precision's GEMM peak, all measured in this
process.

A step is the trainer's (``bench.training.trainer.fit``): SpecAugment on the batch, forward and label-smoothed
cross-entropy (under bf16 autocast for ``bf16``), backward, gradient clipping and a fused AdamW update,
on a batch of equal-length random utterances. FLOPs are counted by ``FlopCounterMode`` over one forward
and backward pass. The GEMM peak is a 2048 x 2048 matmul at the same thread count. fp32 and bf16 steps of
one model alternate, so their ratio is measured under the same load (shared VMs drift by 10-30 % over
seconds); the medians lead, the minima follow.

Run by hand (not collected by pytest), on a quiet machine for figures to publish:

    python tests/benchmarks/training_throughput.py [--backbones convtransformer,conformer]
        [--presets lightweight,large] [--batch-size 32] [--seconds 3] [--steps 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.data.features import FeatureConfig
from bench.training.models import build_backbone, recipe
from bench.registry import load_builtin_plugins
from bench.training.augment import spec_augment
from bench.training.config import TrainConfig
from bench.training.devices import autocast, native_bf16_cpu
from bench.training.trainer import cross_entropy_loss

PRECISIONS = ("fp32", "bf16")


def gemm_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 8) -> float:
    """GFLOP/s of the fastest of ``repeats`` ``size``-square matmuls in ``dtype``."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up: kernel selection, packing buffers
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def step_flops(model, feats, lengths, labels) -> int:
    """FLOPs of one forward and backward pass (matmuls and convolutions, as ``FlopCounterMode`` counts)."""
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(feats, lengths), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="convtransformer,conformer")
    parser.add_argument("--presets", default="lightweight,large")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="utterance duration")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per precision (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_builtin_plugins()
    features = FeatureConfig()
    frames = features.frames(args.seconds)
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.threads} thread(s); native bf16: {native_bf16_cpu()}")
    print(f"GEMM peak (2048^2): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; batch "
          f"{args.batch_size} of {args.seconds:g} s ({frames} frames)")
    print(f"{'backbone/preset':28s} {'prec':4s} {'GFLOP/step':>10s} {'median ms':>9s} {'min ms':>7s} "
          f"{'GFLOP/s':>7s} {'of peak':>7s} {'specaug ms':>10s}")
    for backbone in args.backbones.split(","):
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            model = build_backbone(backbone, preset, features.dim, 4)
            config = TrainConfig(batch_size=args.batch_size).resolved(recipe(backbone, preset))
            loss_fn = cross_entropy_loss(None, config.label_smoothing)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            feats = torch.randn(args.batch_size, frames, features.dim)
            lengths = torch.full((args.batch_size,), frames)
            labels = torch.randint(0, 4, (args.batch_size,))
            model.train()
            flops = step_flops(model, feats, lengths, labels)

            def step(precision: str) -> float:
                started = time.perf_counter()
                masked = spec_augment(feats, lengths, config)
                with autocast("cpu", precision == "bf16"):
                    loss = loss_fn(model, masked, lengths, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                return time.perf_counter() - started

            for _ in range(2):
                for precision in PRECISIONS:
                    step(precision)
            times = {p: [] for p in PRECISIONS}
            for _ in range(args.steps):  # interleaved: both precisions see the same load
                for precision in PRECISIONS:
                    times[precision].append(step(precision))
            augment_ms = 1000 * statistics.median(_seconds(lambda: spec_augment(feats, lengths, config))
                                                   for _ in range(args.steps))
            for precision in PRECISIONS:
                median = statistics.median(times[precision])
                rate = flops / median / 1e9
                print(f"{backbone + '/' + preset:28s} {precision:4s} {flops / 1e9:10.1f} {median * 1000:9.0f} "
                      f"{min(times[precision]) * 1000:7.0f} {rate:7.1f} {rate / peaks[precision]:7.1%} "
                      f"{augment_ms:10.1f}", flush=True)
            ratios = [b / f for f, b in zip(times["fp32"], times["bf16"])]
            print(f"{'':28s} bf16 / fp32 step time: median of paired ratios {statistics.median(ratios):.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
