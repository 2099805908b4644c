"""Runs one grid point (``execute``): data for the fold from the workspace, the method's build -> train ->
deploy hooks through its ``RunContext``, evaluation, measurement of the deploy model, and the record."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from bench import schema
from bench.execution.context import PhaseTimes, RunContext
from bench.execution.env import environment
from bench.execution.spec import RunSpec, run_identity
from bench.execution.workspace import FoldData, Workspace
from bench.measure import costs, onnx_io, timing
from bench.measure.costs import LATENCY_SECONDS
from bench.measure.model_store import save_deploy_model
from bench.method import Deployed, RunFailed
from bench.registry import METHODS, BenchError
from bench.training.devices import training_precision
from bench.training.evaluate import evaluate, scores_of
from bench.training.metrics import declared_scores
from bench.training.models import build_backbone
from bench.training.trainer import FitResult

log = logging.getLogger("bench")


def measure_deploy(model: nn.Module, input_dim: int, frames: int, latency: bool = True,
                   reference: nn.Module | None = None, graph_cache: Path | None = None,
                   times: PhaseTimes | None = None, graph: bytes | None = None) -> dict:
    """Deploy-model figures for the record, kept cheap: costs (params, MACs, FLOPs, size, peak memory)
    and 1-thread latency at LATENCY_SECONDS, timed against ``reference`` (the plain lightweight model
    of the backbone); ``bench measure`` covers runtimes, threads and durations. Without ``latency`` the
    record is marked ``latency_deferred`` for ``bench measure``. ``times``: where the seconds go."""
    times = times or PhaseTimes()
    with times.phase("costs"):
        figures = {"input_seconds": LATENCY_SECONDS, "input_frames": frames, "input_dim": input_dim,
                   **costs.cost_figures(model, input_dim, frames)}
    if latency:
        with times.phase("costs"):
            macs = onnx_io.graph_macs(graph, input_dim, frames) if graph else {"float_macs": figures["macs"]}
        with times.phase("latency"), timing.exclusive():  # one timing at a time on this machine (``bench measure``)
            figures.update(timing.deploy_latency(model, reference, input_dim, frames, macs, graph_cache,
                                                  audio_seconds=LATENCY_SECONDS, graph=graph))
    else:
        figures["latency_deferred"] = True
    return figures


def deploy_model(ctx: RunContext) -> tuple[Deployed, int, dict]:
    """Each component's check -> build -> train -> deploy hooks in turn (``bench run`` and ``bench tune``
    trials): what ships (the module in eval mode, and the graph the last method ships, if any), the most
    parameters trained at once, and the methods' figures. A method that declares the run impossible
    (e.g. an unreachable budget) raises :class:`RunFailed` in its check, before it (for the first method:
    anything) trains."""
    shipped, train_params, method_figures = None, 0, {}
    for position, name in enumerate(ctx.spec.components):
        entry = METHODS.get(name)
        method = entry.obj(entry.make_params(ctx.spec.method_params.get(name)))
        start = shipped.model if shipped is not None else None
        method.check(ctx, start)
        model = method.build(ctx, start)
        model = method.train(model, ctx)
        train_params = max(train_params, costs.count_params(model))
        shipped = Deployed.of(method.deploy(model, ctx))
        if shipped.graph is not None and position < len(ctx.spec.components) - 1:
            raise BenchError(f"method {name} ships its own ONNX graph, which nothing can train further: it must come "
                             f"last in a composition (declare must_be_last = True)")
        figures = method.record()
        undeclared = sorted(set(figures) - set(method.record_fields))
        if undeclared:
            raise BenchError(f"method {name} records fields its record_fields do not declare: {', '.join(undeclared)}")
        method_figures = schema.merge(method_figures, figures)
    shipped.model.eval()
    return shipped, train_params, method_figures


def execute(spec: RunSpec, workspace: Workspace) -> dict:
    """Run ``spec`` and return its record (not yet written), with what ships (a :class:`Deployed`) under ``_deploy_model``;
    a run that a method declares impossible (:class:`RunFailed`) returns a failed record without one."""
    started, times = time.perf_counter(), PhaseTimes()
    with times.phase("data"):
        data = workspace.fold_data(spec)
    if spec.corpus_fingerprint != data.fingerprint:
        if spec.corpus_fingerprint:  # expanded by another process, and the corpus changed since
            raise BenchError(f"the {spec.dataset} corpus changed after the grid was expanded (fingerprint "
                             f"{spec.corpus_fingerprint}, now {data.fingerprint}): run the grid again")
        spec = replace(spec, corpus_fingerprint=data.fingerprint)
    precision = training_precision(workspace.amp)
    if spec.precision != precision:
        if spec.precision != "fp32":  # expanded for another precision than this process trains at
            raise BenchError(f"run {spec.run_id} was planned at {spec.precision} training, but this process "
                             f"trains at {precision}: give the same --amp to every worker")
        spec = replace(spec, precision=precision)
    ctx = RunContext(spec, data, workspace, times)
    methods_started = time.perf_counter()
    try:
        shipped_model, train_params, method_figures = deploy_model(ctx)
    except RunFailed as failure:
        log.warning("run %s (%s %s/%s %s fold %d seed %d) failed: %s", spec.run_id, spec.method, spec.backbone,
                    spec.preset, spec.dataset, spec.fold, spec.seed, failure)
        return schema.merge(run_identity(spec), {"status": "failed", "status_reason": str(failure),
                            "wall_seconds": time.perf_counter() - started,
                            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, environment())
    # the methods' own work: what their hooks took besides the trainings counted as they ran
    times.seconds["methods"] += max(0.0, time.perf_counter() - methods_started - times.seconds["training"]
                                    - times.seconds["validation"])
    # scored in float32 whatever the training precision: the deploy model is a float (or int8) model
    model, graph = shipped_model.model, shipped_model.graph
    final_fit = spec.train_config().final_fit or any(METHODS.get(c).obj.trains_on_validation for c in spec.components)
    with times.phase("scoring"):
        test = evaluate(model.to(workspace.device), data.test, data.num_classes, workspace.device)
        # the validation speakers were trained on: no validation score
        val = ({"ua": None, "wa": None} if final_fit else evaluate(model, data.val, data.num_classes, workspace.device))
    model.to("cpu")  # latency and ONNX stay on the CPU
    frames = spec.features.frames(LATENCY_SECONDS)
    reference = latency_reference(spec, data)
    figures = measure_deploy(model, data.input_dim, frames, not workspace.defer_latency, reference,
                             workspace.cache_dir / "onnx-graphs", times, graph=graph)
    # The ONNX model that ships, evaluated in ONNX Runtime; a method's own graph's scores are the headline.
    shipped, shipped_test = {"onnx_status": "not exported"}, None
    if workspace.onnx_check or graph is not None:
        with times.phase("onnx"):
            shipped, shipped_test = onnx_io.shipped_figures(model, data, frames, workspace.cache_dir / "onnx-graphs",
                                                            graph=graph)
    torch_ua = test["ua"]
    if shipped_test is not None:
        test = shipped_test
        if val["ua"] is not None:  # the validation score of what ships too, as bench tune's trials score it
            with times.phase("onnx"):
                val = scores_of(onnx_io.predict_graph(graph, data.val), data.val, data.num_classes)
    own_fits = [f for f in ctx.fits if not any(f is reused for reused in ctx.reused_fits)]
    cost_fields = dict(figures, int8_macs=0, float_macs=figures["macs"])
    # an int8 graph's costs (MACs by precision, flops, size) replace the float model's: the graph is what ships
    cost_fields.update({k: shipped.pop(k) for k in list(shipped) if k in cost_fields})
    scores = {k: test[k] for k in ("wa", "ua", "macro_f1", "weighted_f1")}
    scores.update(declared_scores(test, data.corpus.metrics, data.corpus.classes))
    record = schema.merge(run_identity(spec), scores, cost_fields, method_figures, shipped, ctx.notes, {
        "status": "ok",
        "train_device": str(workspace.device), "train_amp": workspace.amp,
        "train_precision": training_precision(workspace.amp),
        "confusion": test["confusion"], "classes": data.corpus.classes,
        "headline_metric": data.corpus.headline_metric,
        "dataset_metrics": list(data.corpus.metrics),
        "val_ua": val["ua"], "val_wa": val["wa"],
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "n_fit": len(data.train) + len(data.val) if final_fit else len(data.train),  # utterances trained on
        "skipped_files": len(data.corpus.skipped), "skipped": data.corpus.skipped,
        "ua_torch": torch_ua, "accuracy_runtime": _accuracy_runtime(shipped_test, cost_fields),
        "train_params": train_params,
        "best_epoch": ctx.fits[-1].best_epoch if ctx.fits else None,  # of validation UA
        "deployed_epoch": ctx.fits[-1].deployed_epoch if ctx.fits else None,  # whose weights are deployed
        "history": ctx.fits[-1].history if ctx.fits else [],  # the training that produced the deploy model
        "fit_seconds": sum(f.train_seconds for f in own_fits),  # the method's own training
        "fit_flops": _total_flops(own_fits), "reused_fit_flops": _total_flops(ctx.reused_fits),
        **_peak_memory(own_fits),
        "reused_fit_seconds": sum(f.train_seconds for f in ctx.reused_fits),  # cached models it built on
        "wall_seconds": (wall := time.perf_counter() - started), **times.record(wall),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, environment())
    record["_deploy_model"] = shipped_model  # taken out and saved by the caller
    return record


def _accuracy_runtime(shipped_test: dict | None, costs: dict) -> str:
    """Where the headline scores come from: PyTorch, or ONNX Runtime for a graph the method ships."""
    if shipped_test is None:
        return "pytorch"
    return "onnxruntime int8" if costs.get("size_format") == "int8 onnx" else "onnxruntime"


def _peak_memory(fits: list[FitResult]) -> dict:
    """The largest peak memory of the method's own trainings (None when one was not measured: cached
    before this was recorded, or not measurable here) and how it was measured."""
    values = [f.peak_memory_bytes for f in fits]
    known = bool(values) and all(v is not None for v in values)
    return {"train_peak_memory_bytes": max(values) if known else None,
            "train_peak_memory_how": fits[-1].peak_memory_how if known else None}


def latency_reference(spec: RunSpec, data: FoldData) -> nn.Module:
    """What every latency ratio is timed against: the plain lightweight model of the run's backbone
    (its weights do not matter, so building it leaves the random state alone)."""
    with torch.random.fork_rng():
        return build_backbone(spec.backbone, "lightweight", data.input_dim, data.num_classes,
                              **spec.build_overrides).eval()


def _total_flops(fits: list[FitResult]) -> int | None:
    """Summed training FLOPs of ``fits``; None if any is unknown (a model cached before they were counted)."""
    flops = [f.train_flops for f in fits]
    return None if any(f is None for f in flops) else int(sum(flops))


def save_model(shipped: Deployed, path: Path, record: dict) -> None:
    """Save ``record``'s deploy model as data (see :mod:`bench.measure.model_store`), so that ``bench measure``
    and ``bench.load_model`` use it without retraining; the graph a method ships goes beside it
    (``<run_id>.onnx``)."""
    save_deploy_model(shipped, path, record["backbone"], record["input_dim"], len(record["classes"]),
                      [record["preset"], record.get("teacher_preset") or record["preset"]])
