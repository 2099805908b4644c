"""``prune-unstructured``: global magnitude sparsity of the trained large model, the classic pruning
baseline. The weights of every Linear, convolution and attention projection (biases and norms stay
dense) with the smallest magnitudes over the whole model are zeroed until the model's nonzero
parameters meet the budget, then the model is fine-tuned with the zeros kept: the gradients of the
removed weights are masked, so AdamW (decoupled weight decay) never moves them.

The tensors keep their dense shapes: parameters and MACs as counted, and the latency of dense
kernels, do not drop. The record reports nonzero parameters separately and says so.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.measure.budget import BUDGET_FIELDS, TOLERANCE, RatioParams, cost, resolve_budget
from bench.method import FINETUNE_FIELDS, Method, RunFailed
from bench.registry import METHODS

__all__ = ["PruneUnstructured", "global_magnitude_masks", "prunable_weights"]

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
DENSE_NOTE = ("unstructured sparsity: tensors keep their dense shapes, so parameters, MACs and the latency of "
              "dense kernels do not drop; only nonzero parameters (and compressed storage) do")


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight matrix of every Linear/convolution and attention input projection."""
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_TYPES):
            weights[f"{name}.weight"] = module.weight
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            weights[f"{name}.in_proj_weight"] = module.in_proj_weight  # out_proj is an nn.Linear, found above
    return weights


def global_magnitude_masks(weights: dict[str, nn.Parameter], remove: int) -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing the ``remove`` smallest-magnitude nonzero entries over all ``weights``
    (entries already zero stay masked)."""
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    zeros = int((magnitudes == 0).sum())
    remove = max(0, remove)
    if zeros + remove >= magnitudes.numel():
        raise RunFailed(f"the budget needs {remove:,} more weights removed but only {magnitudes.numel() - zeros:,} "
                         f"nonzero weights are prunable: use a larger ratio")
    order = magnitudes.argsort(stable=True)  # zeros first; exactly ``remove`` nonzero entries go
    flat_keep = torch.ones_like(magnitudes, dtype=torch.bool)
    flat_keep[order[:zeros + remove]] = False
    masks, offset = {}, 0
    for name, weight in weights.items():
        masks[name] = flat_keep[offset:offset + weight.numel()].view_as(weight)
        offset += weight.numel()
    return masks


@METHODS.register("prune-unstructured", "global magnitude sparsity of the large model to the budget in nonzero "
                  "parameters, fine-tuned with masks (dense shapes: latency does not drop)", params=RatioParams)
class PruneUnstructured(Method):
    uses_large_model = True
    trains_at = "large"  # masked dense tensors: fine-tuning costs what the large model costs
    record_fields = {
        **BUDGET_FIELDS,
        "nonzero_params_reached": "nonzero parameters of the deploy model",
        "dense_params": "its parameters counted dense",
        "sparsity": "the share of weights that are zero",
        "dense_latency_note": "why its latency is a dense model's",
        **FINETUNE_FIELDS,
    }
    params: RatioParams

    def check(self, ctx, start: nn.Module | None) -> None:
        """RunFailed, before the large model trains, when zeroing every prunable weight but one would
        still exceed the budget (biases and norms stay dense)."""
        source = start if start is not None else ctx.new_model(ctx.spec.teacher_preset)
        budget = resolve_budget(ctx, source, "nonzero_params", self.params.ratio)
        dense = cost(source, "params", ctx.data.input_dim, 1) - sum(w.numel() for w in prunable_weights(source).values())
        if dense + 1 > budget.target * (1 + TOLERANCE):
            raise RunFailed(f"prune-unstructured cannot reach nonzero_params={budget.target:,} ({budget.source}): "
                            f"the parameters it never zeroes (biases, norms) alone are {dense:,}; use a larger ratio")

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        model = start if start is not None else ctx.large_model()
        self.budget = resolve_budget(ctx, model, "nonzero_params", self.params.ratio)
        weights = prunable_weights(model)
        nonzero = cost(model, "nonzero_params", ctx.data.input_dim, 1)
        self.masks = global_magnitude_masks(weights, nonzero - self.budget.target)
        with torch.no_grad():
            for name, weight in weights.items():
                weight.mul_(self.masks[name])
        self.source_params = cost(model, "params", ctx.data.input_dim, 1)
        return model

    def train(self, model: nn.Module, ctx) -> nn.Module:
        weights = prunable_weights(model)
        hooks = [weights[name].register_hook(lambda grad, mask=mask: grad * mask) for name, mask in self.masks.items()]
        try:
            ctx.fit(model, desc="prune-unstructured")
        finally:
            for hook in hooks:
                hook.remove()
        with torch.no_grad():  # a resumed or restored state must not bring removed weights back
            for name, weight in weights.items():
                weight.mul_(self.masks[name])
        self.epochs = ctx.spec.train.epochs
        return model

    def deploy(self, model: nn.Module, ctx) -> nn.Module:
        self.reached = cost(model, "nonzero_params", ctx.data.input_dim, 1)
        self.dense_params = cost(model, "params", ctx.data.input_dim, 1)
        return model

    def record(self) -> dict:
        return {**self.budget.record(self.reached), "nonzero_params_reached": self.reached,
                "dense_params": self.dense_params, "sparsity": 1.0 - self.reached / self.dense_params,
                "source_params": self.source_params, "dense_latency_note": DENSE_NOTE,
                "finetune_epochs": self.epochs,
                "finetune_note": "fine-tuned for the run's epochs on the run's training split (masks kept), like "
                                 "every method that (fine-)tunes"}
