"""The interface of a compression method plug-in: four hooks with sensible defaults.

A method is registered in ``bench.registry.METHODS`` as a subclass of :class:`Method`, with a
parameters dataclass. The runner calls ``check`` -> ``build`` -> ``train`` -> ``deploy`` and then
evaluates and measures the deploy model; ``check`` (and any hook) raising :class:`RunFailed` ends
that run alone, recorded as failed. Composition (``a+b``) runs ``a`` fully, then ``b`` with ``start`` set to
``a``'s deploy model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from bench.measure import costs
from bench.registry import METHODS, BenchError

if TYPE_CHECKING:
    from bench.execution.context import RunContext

__all__ = ["FINETUNE_FIELDS", "Deployed", "Method", "Reparameterization", "RunFailed", "TRAINS_AT", "plain_reference"]


class RunFailed(BenchError):
    """This run cannot be carried out as specified (e.g. a budget the method cannot reach). The runner
    records it as a failed run (``status: "failed"``, this message as ``status_reason``) and the grid
    goes on with the next run."""


TRAINS_AT = ("plain", "preset", "large", "none")


@dataclass
class Deployed:
    """What a run ships. ``model`` is the float PyTorch module: what parameters are counted on and what
    the next method of a composition starts from. ``graph`` is an ONNX model (bytes) that the method ships
    in the module's place (quant's int8 graph), or None when the module's own ONNX export ships. Where
    there is a graph, the harness scores it in ONNX Runtime (its scores are the record's headline), costs
    and times it, saves it beside the module (``<run_id>.onnx``) and exports it as is. A method's
    ``deploy`` returns a module or one of these; the harness reads nothing else off the module."""

    model: nn.Module
    graph: bytes | None = None

    @classmethod
    def of(cls, shipped: nn.Module | Deployed) -> Deployed:
        if isinstance(shipped, Deployed):
            return shipped
        if isinstance(shipped, nn.Module):
            return cls(shipped)
        raise BenchError(f"a method's deploy returned {type(shipped).__name__}: return an nn.Module or a Deployed")

# Record fields of methods that (fine-)tune a model they start from (their ``record_fields`` include these)
FINETUNE_FIELDS = {
    "finetune_epochs": "epochs the method trained its model for",
    "finetune_note": "what that training was, in words",
}


class Method:
    """Default behaviour: train the lightweight preset (or the model handed over) and deploy it as is."""

    # A reference the plain models must beat rather than a compression (the classical ``svm``): the
    # summary pairs every plain model with it and warns beside those below it and the methods built on them.
    classical_reference: bool = False
    # Fits on the validation speakers as well as the training ones (whatever the training settings):
    # the record then has no validation score, and ``n_fit`` counts both splits.
    trains_on_validation: bool = False
    # Starts from or learns from the trained large (teacher-preset) model (kd, prune, lowrank): the runner
    # trains or reuses that model, and the summary warns when it is not better than the lightweight one.
    uses_large_model: bool = False
    # Nothing may train or transform its deploy model further (a method that ships its own ONNX graph, as
    # quant does its int8 one): it comes last in a composition, checked when a grid is validated.
    must_be_last: bool = False
    # What the first step of a run of this method costs, for the dry-run estimate: "plain" (the cached
    # plain model at the run's preset, trained once and reused: baseline, quant), "preset" (it trains a
    # model of the run's preset), "large" (it trains at the large model's cost: dense sparse tensors),
    # "none" (no gradient training: the classical svm fits in seconds).
    trains_at: str = "preset"
    # It runs the large model forward on every training batch (distillation), for the estimate.
    teacher_forward_per_step: bool = False
    # Its deploy model is exactly the plain model of the run's preset (baseline, hrf after deHRF, kd's
    # student): the backbone's analytic MAC formula applies, and the method-matrix test holds it to that.
    deploys_preset_model: bool = False
    # Its runs are the plain model of each preset (baseline): the reference every other method is paired
    # with, whose presets draw the plain-model frontier. Exactly one registered method declares it.
    plain_reference: bool = False
    # The presets it deploys at when a grid names none (the plain reference: the lightweight and the large).
    default_presets: tuple[str, ...] = ("lightweight",)
    # Runs in grids that do not name their methods (the default grid, studies without ``methods``): a method
    # whose training costs many times any other's (expandnets) opts out and runs where it is named.
    included_by_default: bool = True
    # The fields ``record`` returns, name -> meaning: the record's declared schema (bench.schema) takes
    # them from here, refuses a record with fields nobody declared, and ``bench schema`` documents them.
    record_fields: dict[str, str] = {}

    def __init__(self, params: Any = None):
        self.params = params

    def check(self, ctx: RunContext, start: nn.Module | None) -> None:
        """Raise :class:`RunFailed` when this run cannot succeed, before this method trains anything
        (for the first method of a run: before anything trains). ``start`` is the model handed over
        when composing, else None; a check must not need trained weights."""

    def build(self, ctx: RunContext, start: nn.Module | None) -> nn.Module:
        """The model to train: ``start`` when composing, else a fresh model at the run's preset, made into
        what trains by :meth:`training_model`."""
        return self.training_model(start if start is not None else ctx.new_model())

    def training_model(self, model: nn.Module) -> nn.Module:
        """What trains, made from a plain model (in place or new): the plain model itself by default; an
        over-parameterizing method returns it expanded. The dry-run estimate times a training step of
        this model, so a method that trains something wider than it deploys is costed as such."""
        return model

    def train(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        """Train ``model`` with the shared trainer (best epoch chosen on validation)."""
        return ctx.fit(model)

    def deploy(self, model: nn.Module, ctx: RunContext) -> nn.Module | Deployed:
        """Turn the trained model into what is shipped (merge, prune, quantize...): the module, or a
        :class:`Deployed` with the ONNX graph the method ships in its place (then declare ``must_be_last``:
        nothing can train a graph further)."""
        return model

    def record(self) -> dict:
        """Extra method-specific figures for the run record, each declared in ``record_fields``."""
        return {}


def plain_reference() -> str:
    """The name of the registered method that declares ``plain_reference`` (the built-in ``baseline``)."""
    names = [e.name for e in METHODS.entries()
             if isinstance(e.obj, type) and issubclass(e.obj, Method) and e.obj.plain_reference]
    if len(names) != 1:
        raise BenchError(f"exactly one registered method must declare plain_reference (the plain model every method "
                         f"is compared with); found {len(names)}: {', '.join(names) or 'none'}")
    return names[0]


class Reparameterization(Method):
    """A method that trains a wider model than it deploys and folds it back exactly into the plain preset
    (hrf, repadapter, expandnets): subclasses give :meth:`expand` and :meth:`fold`; the parameter counts
    before and after folding are kept as ``train_params`` and ``deploy_params`` for their records."""

    deploys_preset_model = True  # every expansion folds into a layer of the plain model's shape

    def expand(self, model: nn.Module) -> Any:
        """Expand ``model`` in place; returns what the record says was expanded."""
        raise NotImplementedError

    def fold(self, model: nn.Module) -> nn.Module:
        """Fold every expansion back in place: the model is then the plain one."""
        raise NotImplementedError

    def training_model(self, model: nn.Module) -> nn.Module:
        self.expanded = self.expand(model)
        self.train_params = costs.count_params(model)
        return model

    def deploy(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        model = self.fold(model)
        self.deploy_params = costs.count_params(model)
        return model
