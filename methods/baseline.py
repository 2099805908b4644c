"""``baseline``: the plain backbone at the run's preset, trained and deployed as is."""

from __future__ import annotations

from torch import nn

from bench.method import Method
from bench.registry import METHODS


@METHODS.register("baseline", "plain training of the chosen preset (the reference every method is compared to)")
class Baseline(Method):
    plain_reference = True
    default_presets = ("lightweight", "large")
    trains_at = "plain"
    deploys_preset_model = True
    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        # Plain models are cached per preset/fold/seed, so teachers and pruning sources reuse this training.
        self.pretrained = start is None
        return ctx.trained_model(ctx.spec.preset, reused=False) if start is None else start

    def train(self, model: nn.Module, ctx) -> nn.Module:
        return model if self.pretrained else ctx.fit(model)
