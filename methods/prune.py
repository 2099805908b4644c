"""``prune``: structured pruning of the trained large model down to the deploy budget with
Torch-Pruning's DepGraph, in iterative prune + fine-tune steps.

Torch-Pruning finds the groups of coupled channels (an FFN's hidden units, the conv channels of a
front-end and the projection after it, the residual width shared by every layer of a stage) and
removes them physically. What is removed follows a plan with one keep fraction ``rho`` for every
group, searched (false position) for the budget, then a second fraction for the FFN groups only (the
finest-grained ones) that lands the cost on the budget. Within a group the least important channels go
(``magnitude``: L2 norm of the coupled weights; ``taylor``: |weight x gradient| over a few training
batches), scored once per step on the real model.

Attention heads: ``nn.MultiheadAttention`` projects to as many q/k/v channels as its input width,
so its heads live in the residual width that DepGraph couples to it. Where a group holds attention
layers, whole least important heads are removed and each kept head loses its least important
dimensions, the shrink split evenly between the two (heads and head size each scale by the square
root of the width kept since the unpruned model, also over several steps).
Every attention layer of the stream loses the same heads; ``num_heads``/``head_dim``/``embed_dim``
stay consistent (checked). The classifier output and the input width are never touched. A group
whose pruning Torch-Pruning cannot carry out (the model no longer runs, e.g. channels behind a
GLU) is left whole and listed in the record.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping

from backbones.ffn import FeedForward
from bench.measure.budget import BUDGET_FIELDS, TOLERANCE, Budget, BudgetParams, cost, output_layers, resolve_budget
from bench.measure.costs import LATENCY_SECONDS
from bench.method import FINETUNE_FIELDS, Method, RunFailed
from bench.registry import METHODS, BenchError, param
from bench.training.splits import batches

__all__ = ["Prune", "PruneParams", "Unit", "dependency_graph", "pruning_units", "prune_to_budget"]

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
TRACE_LENGTHS = (120, 77)  # a padded batch for tracing, so masks and variable lengths are traced too


@dataclass
class PruneParams(BudgetParams):
    importance: str = param("magnitude", "channel importance: magnitude (L2 of the coupled weights) or taylor "
                            "(|weight x gradient| on training batches)", choices=("magnitude", "taylor"))
    steps: int = param(3, "prune + fine-tune rounds (the cost falls geometrically to the budget); the run's "
                       "epochs are split between them (at most one round per epoch)", low=1, high=20)


def trace_input(input_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch ``(2, T, F)`` with lengths ``(2,)`` for DepGraph's tracing."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, max(TRACE_LENGTHS), input_dim, generator=generator), torch.tensor(TRACE_LENGTHS)


def _upstream_channels(graph: tp.DependencyGraph, node, depth: int = 0) -> int | None:
    """Channels of the nearest layer upstream of ``node`` (skipping shape-only operations); None past a
    concatenation, whose channel offsets Torch-Pruning maps itself (e.g. statistics pooling's mean and std)."""
    if node.type == tp.ops.OPTYPE.CONCAT:
        return None
    channels = graph.get_out_channels(node)
    if channels is not None or depth > 50:
        return channels
    for source in node.inputs:
        channels = _upstream_channels(graph, source, depth + 1)
        if channels:
            return channels
    return None


def _map_flattened_channels(graph: tp.DependencyGraph) -> None:
    """Couple a conv front-end's channel c to the ``width`` inputs c*width..(c+1)*width-1 of the Linear
    after it. Torch-Pruning maps such flattens for (B, C, H, W) -> (B, C*H*W) only; the speech
    front-ends flatten (B, T, C, F) -> (B, T, C*F) (same channel-major layout), which it maps 1:1."""
    for module, node in graph.module2node.items():
        if not isinstance(module, nn.Linear):
            continue
        for source in node.inputs:
            channels = _upstream_channels(graph, source)
            if not channels or module.in_features <= channels or module.in_features % channels:
                continue
            stride = module.in_features // channels
            for dep in node.dependencies:
                if dep.target == source:
                    dep.index_mapping[0] = index_mapping._FlattenIndexMapping(stride=stride, reverse=True)
            for dep in source.dependencies:
                if dep.target == node:
                    dep.index_mapping[0] = index_mapping._FlattenIndexMapping(stride=stride, reverse=False)


def _drop_broadcast_couplings(graph: tp.DependencyGraph) -> None:
    """Uncouple a one-channel operand from an elementwise operation on a wider one: it broadcasts (as
    attentive pooling's frame weights ``(B, T, 1)`` times the frames ``(B, T, D)``), while Torch-Pruning
    couples every elementwise operand's channels 1:1, which would tie the residual width to the single
    output of the frame scorer and leave that whole group unprunable."""
    for node in list(graph.module2node.values()):
        if node.type != tp.ops.OPTYPE.ELEMENTWISE or len(node.inputs) < 2:
            continue
        widths = [_upstream_channels(graph, source) for source in node.inputs]
        if max(w or 0 for w in widths) <= 1:
            continue
        for source, width in zip(node.inputs, widths):
            if width == 1:
                node.dependencies = [d for d in node.dependencies if d.target is not source]
                source.dependencies = [d for d in source.dependencies if d.target is not node]


def dependency_graph(model: nn.Module, input_dim: int) -> tp.DependencyGraph:
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=trace_input(input_dim), verbose=False)
    _map_flattened_channels(graph)
    _drop_broadcast_couplings(graph)
    return graph


@dataclass
class Unit:
    """One DepGraph group: channels removed together, named after its root layer."""

    name: str
    root: nn.Module
    handler: object  # the root's Torch-Pruning function (out-channel pruning)
    group: object
    channels: int
    heads: int  # attention heads living in these channels (0: no attention)
    attentions: list
    ffn: bool  # the hidden units of a FeedForward


def pruning_units(model: nn.Module, graph: tp.DependencyGraph, keep: set[str]) -> list[Unit]:
    """Every group of ``model`` except those rooted at the layers named in ``keep`` (the classifier output)."""
    names = {m: n for n, m in model.named_modules()}
    ffn_inputs = {f.w1 for f in model.modules() if isinstance(f, FeedForward)}
    units = []
    ignored = [model.get_submodule(name) for name in keep]
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
        dep = group[0][0]
        attentions = list({id(d.target.module): d.target.module for d, _ in group
                           if isinstance(d.target.module, nn.MultiheadAttention)}.values())
        heads = {a.num_heads for a in attentions}
        if len(heads) > 1:
            continue  # attention layers with different head counts share these channels: leave them whole
        units.append(Unit(names[dep.target.module], dep.target.module, dep.handler, group,
                          graph.get_out_channels(dep.target.module), heads.pop() if heads else 0, attentions,
                          dep.target.module in ffn_inputs))
    return units


def _attention_scores(attn: nn.MultiheadAttention, taylor: bool) -> torch.Tensor:
    """Per embedding channel: the q/k/v rows, the in_proj column and the out_proj row and column it
    owns (squared weights, or |weight x grad|), averaged over those six tensors: ``(embed_dim,)``."""
    def score(weight: torch.Tensor) -> torch.Tensor:
        if taylor:
            return (weight * weight.grad).abs() if weight.grad is not None else torch.zeros_like(weight)
        return weight.detach() ** 2

    e = attn.embed_dim
    w_in, w_out = score(attn.in_proj_weight), score(attn.out_proj.weight)
    return (w_in[:e].sum(1) + w_in[e:2 * e].sum(1) + w_in[2 * e:].sum(1) + w_in.sum(0)
            + w_out.sum(1) + w_out.sum(0)).detach() / 6


def channel_scores(units: list[Unit], criterion: str) -> dict[str, torch.Tensor]:
    """Importance of every channel of every unit, ``{unit name: (channels,)}``."""
    taylor = criterion == "taylor"
    importance = (tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None) if taylor
                  else tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None))
    scores = {}
    for unit in units:
        score = importance(unit.group)
        score = torch.zeros(unit.channels) if score is None else score.detach().float().clone()
        for attn in unit.attentions:
            score += _attention_scores(attn, taylor) / len(unit.attentions)
        scores[unit.name] = score
    return scores


def plan_unit(unit: Unit, keep: float, source: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(heads, channels)`` a unit keeps at fraction ``keep`` of its current channels. For attention,
    heads and head size each scale by the square root of the width kept relative to ``source`` =
    ``(heads, channels)`` of the unpruned model (default: the unit now), so that pruning in several
    steps removes heads as one step would."""
    if not unit.heads:
        return 0, max(1, min(unit.channels, round(keep * unit.channels)))
    source_heads, source_channels = source or (unit.heads, unit.channels)
    width = keep * unit.channels
    heads = min(unit.heads, max(1, math.ceil(math.sqrt(width / source_channels) * source_heads - 1e-9)))
    kept_dim = min(unit.channels // unit.heads, max(1, round(width / heads)))
    return heads, heads * kept_dim


def removed_channels(unit: Unit, score: torch.Tensor, heads: int, channels: int) -> list[int]:
    """The least important channels to remove; for attention, whole heads then dims within each kept head."""
    if not unit.heads:
        keep = score.topk(channels).indices.tolist()
    else:
        head_dim, kept_dim = unit.channels // unit.heads, channels // heads
        per_head = score.view(unit.heads, head_dim)
        keep = [h * head_dim + j for h in per_head.sum(1).topk(heads).indices.tolist()
                for j in per_head[h].topk(kept_dim).indices.tolist()]
    return sorted(set(range(unit.channels)) - set(keep))


def apply_plan(model: nn.Module, input_dim: int, scores: dict, keeps: dict[str, float], keep: set[str],
               sources: dict[str, tuple[int, int]] | None = None) -> dict[str, str]:
    """Prune ``model`` in place to the fractions ``{unit name: fraction}`` (``keep``: layers never
    shrunk; ``sources``: see :func:`plan_unit`); returns the structure reached,
    ``{unit name: "heads x head_dim" or channels}``."""
    graph = dependency_graph(model, input_dim)
    structure = {}
    for unit in pruning_units(model, graph, keep):
        if unit.name not in keeps:
            continue
        heads, channels = plan_unit(unit, keeps[unit.name], (sources or {}).get(unit.name))
        remove = removed_channels(unit, scores[unit.name], heads, channels)
        if remove:
            for attn in unit.attentions:  # set first: Torch-Pruning derives head_dim from num_heads
                attn.num_heads = heads
            graph.get_pruning_group(unit.root, unit.handler, idxs=remove).prune()
        structure[unit.name] = f"{heads}x{channels // heads}" if heads else str(channels)
    for attn in (m for m in model.modules() if isinstance(m, nn.MultiheadAttention)):
        if attn.num_heads * attn.head_dim != attn.embed_dim or attn.in_proj_weight.shape != (3 * attn.embed_dim, attn.embed_dim):
            raise BenchError(f"pruning left an inconsistent attention ({attn.num_heads} heads x {attn.head_dim} "
                             f"!= {attn.embed_dim}): please report this backbone")
    return structure


def output_layer_names(model: nn.Module, input_dim: int) -> set[str]:
    names = {m: n for n, m in model.named_modules()}
    return {names[m] for m in output_layers(model, input_dim)}


def prunable_units(model: nn.Module, input_dim: int, keep: set[str]) -> tuple[list[Unit], list[str]]:
    """The units whose pruning Torch-Pruning carries out (the model still runs), and the names of the others."""
    def runs_pruned(units: list[Unit]) -> bool:
        trial = copy.deepcopy(model)
        try:
            apply_plan(trial, input_dim, {u.name: torch.arange(u.channels, dtype=torch.float) for u in units},
                       {u.name: 0.5 for u in units}, keep)
            with torch.no_grad():
                trial.eval()(*trace_input(input_dim))
            return True
        except Exception:  # noqa: BLE001 - an unsupported coupling (e.g. GLU): that group stays whole
            return False

    units = pruning_units(model, dependency_graph(model, input_dim), keep)
    gated = [u for u in units if _through_glu(u.group)]  # known unsupported: skip without trying
    units = [u for u in units if u not in gated]
    if runs_pruned(units):  # the usual case: one trial for all
        return units, [u.name for u in gated]
    supported = [u for u in units if runs_pruned([u])]
    return supported, [u.name for u in gated + units if u not in supported]


def _through_glu(group) -> bool:
    """Whether a group's channels pass a GLU, which halves them: Torch-Pruning maps them 1:1."""
    return any("Glu" in type(node.grad_fn).__name__ for dep, _ in group for node in (dep.source, dep.target)
               if node.grad_fn is not None)


def _search(evaluate, target: int, tolerance: float = 0.01, max_evaluations: int = 10) -> list[tuple[float, int]]:
    """Evaluate x in [0, 1] (cost non-decreasing in x) towards cost ``target`` by false position
    (Illinois variant: few evaluations, each a traced and pruned copy); returns every ``(x, cost)`` tried."""
    tried = [(0.0, evaluate(0.0)), (1.0, evaluate(1.0))]
    (low, f_low), (high, f_high) = ((x, c - target) for x, c in tried)
    if f_low >= 0 or f_high <= 0:
        return tried
    last_side = 0
    for _ in range(max_evaluations):
        x = min(max(low + f_low * (low - high) / (f_high - f_low), low + 1e-6), high - 1e-6)
        c = evaluate(x)
        tried.append((x, c))
        if abs(c - target) <= tolerance * target or high - low < 1e-3:
            break
        if c < target:
            low, f_low = x, c - target
            f_high = f_high / 2 if last_side == -1 else f_high  # Illinois: do not keep one end forever
            last_side = -1
        else:
            high, f_high = x, c - target
            f_low = f_low / 2 if last_side == 1 else f_low
            last_side = 1
    return tried


def prune_to_budget(model: nn.Module, input_dim: int, units: list[Unit], scores: dict, target: int,
                    measure_cost, keep: set[str], sources: dict | None = None) -> tuple[nn.Module, int, dict]:
    """Prune ``model`` in place to the plan whose cost (``measure_cost(model)``) is closest to ``target``:
    a common keep fraction for every unit, then (when that overshoots) the FFN units alone trimmed."""
    def keeps(rho: float, ffn: float) -> dict[str, float]:
        return {u.name: rho * (ffn if u.ffn else 1.0) for u in units}

    def evaluate(rho: float, ffn: float = 1.0) -> int:
        trial = copy.deepcopy(model)
        apply_plan(trial, input_dim, scores, keeps(rho, ffn), keep, sources)
        return measure_cost(trial)

    def closest(tried):
        return min(tried, key=lambda point: abs(point[1] - target))

    rho, reached = closest(tried := _search(evaluate, target))
    ffn = 1.0
    if abs(reached - target) > 0.01 * target:  # rounding of the widths overshoots: trim the FFNs onto it
        rho = min((x for x, c in tried if c >= target), default=1.0)
        ffn, reached = closest(_search(lambda x: evaluate(rho, x), target))
    structure = apply_plan(model, input_dim, scores, keeps(rho, ffn), keep, sources)
    return model, measure_cost(model), {"rho": rho, "ffn_fraction": ffn, "structure": structure}


def taylor_gradients(model: nn.Module, ctx, max_batches: int = 8) -> None:
    """Accumulate cross-entropy gradients of ``model`` over a few shuffled training batches (eval mode)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(ctx.spec.seed)
    for number, (feats, lengths, labels, _) in enumerate(batches(ctx.data.train, ctx.spec.train.batch_size, generator)):
        if number == max_batches:
            break
        F.cross_entropy(model(feats, lengths), labels).backward()


def step_epochs(epochs: int, steps: int) -> list[int]:
    """The run's epochs split over the steps (earlier steps take the remainder); every step fine-tunes
    at least one epoch, so there are at most ``epochs`` steps (the record lists the steps run)."""
    steps = min(steps, epochs)
    return [epochs // steps + (1 if k < epochs % steps else 0) for k in range(steps)]


@METHODS.register("prune", "structured pruning (Torch-Pruning DepGraph) of the large model to the deploy budget: "
                  "FFN units, attention heads, conv channels; iterative prune + fine-tune", params=PruneParams)
class Prune(Method):
    uses_large_model = True
    record_fields = {
        **BUDGET_FIELDS,
        "prune_importance": "the importance criterion channels were ranked by",
        "prune_steps": "each prune step: its target and what it reached",
        "prune_structure": "the pruned model's widths per layer",
        "prune_skipped_groups": "coupled groups left whole",
        **FINETUNE_FIELDS,
    }
    params: PruneParams

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        self.epochs = step_epochs(ctx.spec.train.epochs, self.params.steps)
        source = start if start is not None else ctx.large_model()
        self.budget: Budget = resolve_budget(ctx, source, self.params.budget, self.params.ratio)
        self.source_params = cost(source, "params", ctx.data.input_dim, 1)
        return source

    def train(self, model: nn.Module, ctx) -> nn.Module:
        p, dim = self.params, ctx.data.input_dim
        frames = ctx.spec.features.frames(LATENCY_SECONDS)
        keep = output_layer_names(model, dim)
        units, self.skipped = prunable_units(model, dim, keep)
        sources = {u.name: (u.heads, u.channels) for u in units}

        def measure_cost(candidate: nn.Module) -> int:
            return cost(candidate, p.budget, dim, frames)

        start_cost, self.steps_log = self.budget.source_cost, []
        for step, epochs in enumerate(self.epochs, 1):
            target = round(start_cost * (self.budget.target / start_cost) ** (step / len(self.epochs)))
            graph = dependency_graph(model, dim)
            current = [u for u in pruning_units(model, graph, keep) if u.name in sources]
            if p.importance == "taylor":
                taylor_gradients(model, ctx)
            scores = channel_scores(current, p.importance)
            model.zero_grad(set_to_none=True)
            model, reached, plan = prune_to_budget(model, dim, current, scores, target, measure_cost, keep, sources)
            self.steps_log.append({"step": step, "target": target, "reached": reached, "epochs": epochs, **plan})
            if step == len(self.epochs):
                self.budget.check(reached, "prune")
            ctx.fit(model, epochs=epochs, desc=f"prune {step}/{len(self.epochs)}")
        return model

    def check(self, ctx, start: nn.Module | None) -> None:
        """RunFailed, before the large model trains, when one channel (one head) per group still exceeds
        the budget: decided on an untrained model of the teacher preset (the same structure)."""
        source = start if start is not None else ctx.new_model(ctx.spec.teacher_preset)
        budget = resolve_budget(ctx, source, self.params.budget, self.params.ratio)
        dim, frames = ctx.data.input_dim, ctx.spec.features.frames(LATENCY_SECONDS)
        keep = output_layer_names(source, dim)
        units, _ = prunable_units(source, dim, keep)
        smallest = copy.deepcopy(source)
        apply_plan(smallest, dim, channel_scores(units, "magnitude"), {u.name: 0.0 for u in units}, keep)
        minimum = cost(smallest, budget.kind, dim, frames)
        if minimum > budget.target * (1 + TOLERANCE):
            raise RunFailed(f"prune cannot reach {budget.kind}={budget.target:,} ({budget.source}): one channel "
                            f"per group still costs {minimum:,}; use a larger ratio or preset")

    def deploy(self, model: nn.Module, ctx) -> nn.Module:
        self.reached = cost(model, self.params.budget, ctx.data.input_dim, ctx.spec.features.frames(LATENCY_SECONDS))
        return model

    def record(self) -> dict:
        last = self.steps_log[-1]
        return {**self.budget.record(self.reached), "prune_importance": self.params.importance,
                "prune_steps": self.steps_log, "prune_structure": last["structure"],
                "prune_skipped_groups": self.skipped, "source_params": self.source_params,
                "finetune_epochs": sum(self.epochs),
                "finetune_note": "fine-tuned for the run's epochs (split over the prune steps) on the run's "
                                 "training split, like every method that (fine-)tunes"}
