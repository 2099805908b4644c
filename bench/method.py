"""The interface of a compression method plug-in: three hooks with sensible defaults.

A method is registered in ``bench.registry.METHODS`` as a subclass of :class:`Method`, with a
parameters dataclass. The runner calls ``build`` -> ``train`` -> ``deploy`` and then evaluates and
measures the deploy model. Composition (``a+b``) runs ``a`` fully, then ``b`` with ``start`` set to
``a``'s deploy model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from bench.runner import RunContext


class Method:
    """Default behaviour: train the lightweight preset (or the model handed over) and deploy it as is."""

    def __init__(self, params: Any = None):
        self.params = params

    def build(self, ctx: RunContext, start: nn.Module | None) -> nn.Module:
        """The model to train: ``start`` when composing, else a fresh model at the run's preset."""
        return start if start is not None else ctx.new_model()

    def train(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        """Train ``model`` with the shared trainer (best epoch chosen on validation)."""
        return ctx.fit(model)

    def deploy(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        """Turn the trained model into what is shipped (merge, prune, quantize...)."""
        return model

    def record(self) -> dict:
        """Extra method-specific figures for the run record."""
        return {}
