"""``matched-compute``: the plain model of the run's preset trained for as many training FLOPs as another
method's own training takes, the control that tells a method's gain from its extra training compute.

Over-parameterizing methods (``hrf``, ``repadapter``, ``expandnets``) train a wider model than they deploy,
so each of their steps costs more than a plain step. This control builds that method's training model at
its declared defaults, counts the FLOPs of one training epoch of it and of the plain model (as records
count ``fit_flops``), and trains the plain model for ``round(epochs x ratio)`` epochs (never fewer than the
run's) with the same recipe: the same warm-up and cosine schedule, stretched over the longer training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from bench.method import Method, RunFailed
from bench.registry import METHODS, BenchError, param

NAME = "matched-compute"


@dataclass
class MatchedComputeParams:
    method: str = param("hrf", "the method whose own training FLOPs the plain model's training matches (one that "
                        "trains a model of the run's preset from scratch: hrf, repadapter, expandnets)")

    def __post_init__(self):  # a bad value is a one-line error before anything runs, not a failed run
        if self.method not in METHODS or self.method == NAME:
            raise BenchError(f"matched-compute.method={self.method!r} is not a registered method to match: choose "
                             f"one of {', '.join(n for n in METHODS.names() if n != NAME)}")
        matched = METHODS.get(self.method).obj
        if matched.trains_at != "preset" or matched.uses_large_model:
            raise BenchError(f"matched-compute matches methods that train a model of the run's preset from scratch; "
                             f"{self.method} starts from a cached or large model: its cost is in its record (fit_flops)")


@METHODS.register(NAME, "the plain preset trained for as many FLOPs as another method's training "
                  "(more epochs, same schedule): the control for over-parameterizing methods",
                  params=MatchedComputeParams)
class MatchedCompute(Method):
    deploys_preset_model = True
    included_by_default = False  # a control for one named method: a grid names it with that method
    record_fields = {
        "matched_compute_method": "the method whose training FLOPs were matched",
        "matched_compute_method_params": "that method's parameters (its declared defaults)",
        "matched_compute_ratio": "training FLOPs per epoch of that method's model over the plain model's",
        "matched_compute_epochs": "epochs the plain model trained (the run's epochs x the ratio, rounded)",
    }
    params: MatchedComputeParams

    def check(self, ctx, start: nn.Module | None) -> None:
        if start is not None:
            raise RunFailed("matched-compute trains a fresh plain model: it cannot follow another method")

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        entry = METHODS.get(self.params.method)
        matched_params = entry.make_params(None)
        matched_model = entry.obj(matched_params).build(ctx, None)  # e.g. the expanded model HRF trains
        model = ctx.new_model()  # built last: seeded exactly as the plain baseline's model
        plain, theirs = ctx.epoch_flops(model), ctx.epoch_flops(matched_model)
        if not plain or not theirs:
            raise RunFailed(f"the training FLOPs of {self.params.method} or of the plain model cannot be counted")
        self.ratio = theirs / plain
        self.epochs = max(ctx.spec.train_config().epochs, round(ctx.spec.train_config().epochs * self.ratio))
        self.matched_params = asdict(matched_params) if matched_params is not None else {}
        return model

    def train(self, model: nn.Module, ctx) -> nn.Module:
        return ctx.fit(model, epochs=self.epochs, desc=f"matched-compute ({self.params.method})")

    def record(self) -> dict:
        return {"matched_compute_method": self.params.method, "matched_compute_method_params": self.matched_params,
                "matched_compute_ratio": self.ratio, "matched_compute_epochs": self.epochs}
