"""What a trial scores: the validation splits of the tuning folds, through the same run path as ``bench
run`` (the int8 graph for ``+quant``, the interleaved latency ratio, the cached plain models)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, replace

import optuna

from bench.data.features import FeatureConfig
from bench.execution.checkpoint import discard_run_checkpoints
from bench.execution.context import RunContext
from bench.execution.runner import deploy_model, latency_reference
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.measure import costs, onnx_io, timing
from bench.measure.costs import LATENCY_SECONDS
from bench.registry import BenchError
from bench.training.config import TrainConfig
from bench.training.evaluate import evaluate, scores_of
from bench.tuning.space import SearchParam

# --objectives name -> trial attribute; latency is the records' figure: the interleaved ratio to the plain
# lightweight model (absolute milliseconds drift with the machine's load between trials)
COSTS = {"macs": "macs", "latency": "latency_ratio"}


@dataclass
class TuneSetting:
    """What every trial of a study shares; stored with the study so that extensions match it."""

    method: str
    backbone: str
    preset: str
    dataset: str
    folds: list[int]
    seed: int
    objectives: list[str]
    train: TrainConfig = TrainConfig()
    features: FeatureConfig = FeatureConfig()
    fixed: dict = field(default_factory=dict)  # {component: {param: value}} not searched
    dataset_params: dict = field(default_factory=dict)
    teacher_preset: str = "large"

    def spec(self, fold: int, searched: dict) -> RunSpec:
        params = {c: dict(self.fixed.get(c, {})) | searched.get(c, {}) for c in self.method.split("+")}
        return RunSpec(self.method, self.backbone, self.preset, self.dataset, fold, self.seed, self.train,
                       self.features, {c: p for c, p in params.items() if p}, self.dataset_params, self.teacher_preset)

    def identity(self) -> dict:
        identity = json.loads(json.dumps(asdict(self), default=str))
        if "latency" in self.objectives:  # its unit changed (ms -> ratio): older studies must not be extended
            identity["latency_objective"] = COSTS["latency"]
        return identity


def validation_scores(spec: RunSpec, workspace: Workspace, cost: str | None = None) -> dict:
    """Train and deploy ``spec``'s method, then score the deploy model on the validation split only
    (the test split is never touched) and measure its cost when asked."""
    if spec.train_config().final_fit:
        raise BenchError("tuning scores on the validation speakers: it cannot train on them (final_fit)")
    data = workspace.fold_data(spec)
    # as `bench run` does: the fingerprint names the cached plain models a trial reuses (the large one too)
    spec = replace(spec, corpus_fingerprint=data.fingerprint)
    shipped, _, _ = deploy_model(RunContext(spec, data, workspace))
    model, graph = shipped.model.to("cpu"), shipped.graph
    if graph is None:
        scores = {"val_ua": evaluate(model, data.val, data.num_classes)["ua"]}
    else:  # what ships is the method's graph (quant's int8 one): scored in ONNX Runtime, as recorded runs are
        scores = {"val_ua": scores_of(onnx_io.predict_graph(graph, data.val), data.val, data.num_classes)["ua"]}
    frames = spec.features.frames(LATENCY_SECONDS)
    if cost == "macs":
        scores["macs"] = (onnx_io.graph_macs(graph, data.input_dim, frames)["macs"] if graph is not None
                          else costs.count_macs(model, data.input_dim, frames))
    elif cost == "latency_ratio":
        scores["latency_ratio"] = timing.deploy_latency(model, latency_reference(spec, data), data.input_dim, frames,
                                                         {}, workspace.cache_dir / "onnx-graphs",
                                                         graph=graph)["latency_ratio"]
    discard_run_checkpoints(workspace.cache_dir, spec.run_id)  # trials are not recorded runs
    return scores


def make_objective(setting: TuneSetting, space: list[SearchParam], workspace: Workspace):
    cost = COSTS.get(setting.objectives[1]) if len(setting.objectives) > 1 else None

    def objective(trial: optuna.Trial):
        searched: dict = {}
        for p in space:
            searched.setdefault(p.component, {})[p.name] = p.suggest(trial)
        uas, trial_costs = [], []
        for step, fold in enumerate(setting.folds):
            scores = validation_scores(setting.spec(fold, searched), workspace, cost)
            uas.append(scores["val_ua"])
            trial.set_user_attr(f"fold_{fold}_val_ua", scores["val_ua"])
            if cost:
                trial_costs.append(scores[cost])
                trial.set_user_attr(f"fold_{fold}_{cost}", scores[cost])
            else:  # the pruner compares running means over the same folds
                trial.report(statistics.mean(uas), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return (statistics.mean(uas), statistics.mean(trial_costs)) if cost else statistics.mean(uas)

    return objective
