"""The deploy budget of methods that shrink the trained large model (pruning, low-rank).

By default the budget is the cost of the plain model at the run's preset (normally ``lightweight``),
so every compressed model is compared with the plain model it competes with; ``ratio`` instead asks
for a fraction of the large model's cost (accuracy-vs-cost curves). The cost is the parameter count
or the MACs of one forward pass over ``LATENCY_SECONDS`` of input, as the run record counts them.
A method must land within ``TOLERANCE`` of the target; its record states target and reached cost.
A budget the method cannot reach is :class:`bench.method.RunFailed`: that run is recorded as failed
and the grid goes on. Methods check reachability in ``Method.check``, on the structure of the model to
shrink (an untrained model of the teacher preset), before anything trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bench.measure import costs
from bench.measure.costs import LATENCY_SECONDS
from bench.method import RunFailed
from bench.registry import BenchError, param

__all__ = ["BUDGET_FIELDS", "TOLERANCE", "Budget", "BudgetParams", "RatioParams", "bisect_budget", "cost",
           "output_layers", "parse_ratio", "resolve_budget"]

TOLERANCE = 0.05  # relative distance from the target a deploy model may have

# The record fields of ``Budget.record``, for the record_fields of the methods that shrink to a budget
BUDGET_FIELDS = {
    "budget_kind": "what the budget counts (`params`, `macs` or `nonzero_params`)",
    "budget_source": "where the target came from (a preset's plain model, or a ratio of the source model)",
    "budget_target": "the target count",
    "budget_reached": "the count the deploy model reached",
    "budget_error": "(reached - target) / target",
    "budget_tolerance": "the largest relative error accepted",
    "budget_source_cost": "the source model's count",
    "source_params": "parameters of the model the method shrank (the large model)",
}
KINDS = ("params", "macs")


def parse_ratio(value) -> float | None:
    """``"preset"`` -> None; a number (or its text) in (0, 1] -> float; anything else -> BenchError."""
    if isinstance(value, str) and value.strip().lower() == "preset":
        return None
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = math.nan
    if not 0.0 < ratio <= 1.0:  # also rejects NaN
        raise BenchError(f"parameter ratio={value!r} must be 'preset' or a fraction of the large model's cost "
                         f"in (0, 1], e.g. ratio=0.25")
    return ratio


@dataclass
class RatioParams:
    """Parameters of a method that shrinks the large model to a budget."""

    ratio: str = param("preset", "'preset': the cost of the plain model at the run's preset; or a fraction "
                       "in (0, 1] of the large model's cost, e.g. 0.25")

    def __post_init__(self):
        ratio = parse_ratio(self.ratio)
        self.ratio = "preset" if ratio is None else repr(ratio)  # one spelling per value: stable run ids


@dataclass
class BudgetParams(RatioParams):
    """:class:`RatioParams` plus the cost that the budget counts."""

    budget: str = param("params", "the cost to match: params (parameter count) or macs (MACs of one "
                        "forward pass over 5 s of input)", choices=KINDS)


def cost(model: nn.Module, kind: str, input_dim: int, frames: int) -> int:
    """The cost of ``model``: ``params``, ``nonzero_params`` or ``macs`` (over ``frames`` frames)."""
    if kind == "params":
        return costs.count_params(model)
    if kind == "nonzero_params":
        return costs.count_nonzero_params(model)
    if kind == "macs":
        return costs.count_macs(model, input_dim, frames)
    raise BenchError(f"unknown budget {kind!r}: use one of {', '.join(KINDS)}")


@dataclass
class Budget:
    """A cost target: ``kind`` (params, macs, nonzero_params) and ``target``, and where it came from."""

    kind: str
    target: int
    source: str  # e.g. "preset lightweight" or "ratio 0.25 of large"
    source_cost: int  # the cost of the model being shrunk

    def relative_error(self, reached: int) -> float:
        return (reached - self.target) / self.target

    def within(self, reached: int) -> bool:
        return abs(self.relative_error(reached)) <= TOLERANCE

    def check(self, reached: int, method: str) -> None:
        """RunFailed unless ``reached`` lies within the tolerance of the target."""
        if not self.within(reached):
            raise RunFailed(f"{method} reached {self.kind}={reached:,} for the budget {self.target:,} ({self.source}), "
                             f"{100 * self.relative_error(reached):+.1f}% (allowed +-{100 * TOLERANCE:.0f}%): "
                             f"choose a reachable budget (another ratio or preset)")

    def record(self, reached: int) -> dict:
        """Record fields (``BUDGET_FIELDS``): which budget was targeted and what was reached."""
        return {"budget_kind": self.kind, "budget_source": self.source, "budget_target": self.target,
                "budget_reached": reached, "budget_error": self.relative_error(reached),
                "budget_tolerance": TOLERANCE, "budget_source_cost": self.source_cost}


def resolve_budget(ctx, source: nn.Module, kind: str, ratio_text: str, source_name: str | None = None) -> Budget:
    """The budget of a run: the cost of a plain ``ctx.spec.preset`` model, or ``ratio`` times the cost
    of ``source`` (the model being shrunk; its structure matters, not its weights). ``kind`` may be
    ``nonzero_params`` (counted like params). RunFailed when the budget exceeds the source."""

    frames = ctx.spec.features.frames(LATENCY_SECONDS)
    count = "params" if kind == "nonzero_params" else kind
    source_cost = cost(source, count, ctx.data.input_dim, frames)
    ratio = parse_ratio(ratio_text)
    if ratio is None:
        target = cost(ctx.new_model(), count, ctx.data.input_dim, frames)
        origin = f"preset {ctx.spec.preset}"
    else:
        target = max(1, round(ratio * source_cost))
        origin = f"ratio {ratio!r} of {source_name or ctx.spec.teacher_preset}"
    if target > source_cost * (1 + TOLERANCE):
        raise RunFailed(f"the budget {kind}={target:,} ({origin}) exceeds the model being compressed "
                         f"({source_cost:,}): use a smaller preset or ratio, or a larger --teacher-preset")
    return Budget(kind, target, origin, source_cost)


def bisect_budget(build: Callable[[float], tuple[nn.Module, int]], budget: Budget, steps: int = 30,
                  low: float = 0.0, high: float = 1.0) -> tuple[float, nn.Module, int]:
    """Bisect a knob ``x`` in [low, high] (cost non-decreasing in x) for the model whose cost lies
    closest to the budget; ``build(x) -> (model, cost)``. Returns ``(x, model, cost)``; stops early
    within 0.5 % of the target."""
    best = (high, *build(high))
    for _ in range(steps):
        middle = (low + high) / 2
        model, reached = build(middle)
        if abs(reached - budget.target) < abs(best[2] - budget.target):
            best = (middle, model, reached)
        if abs(best[2] - budget.target) <= 0.005 * budget.target or high - low < 1e-4:
            break
        low, high = (middle, high) if reached < budget.target else (low, middle)
    return best


def output_layers(model: nn.Module, input_dim: int) -> list[nn.Module]:
    """The leaf layers whose output is the model's output (the classifier layer), found by running
    the model once: budgets never shrink them, the number of classes is fixed."""
    produced = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: produced.append((module, output)))
             for m in model.modules() if not any(True for _ in m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(*costs.example_input(input_dim, 64, batch=2))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    found = [module for module, output in produced if output is logits]
    linears = [module for module, _ in produced if isinstance(module, nn.Linear)]
    return found or linears[-1:]  # logits made by an operation after the last layer: keep that layer
