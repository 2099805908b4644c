"""Measuring recorded deploy models again on this machine (``bench measure``) and describing them for a
device (``bench export``): costs per input duration, latency per runtime and thread count against the
plain reference model, ONNX graphs checked against the recorded outputs."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

import torch

from bench.data.features import FeatureConfig
from bench.execution.env import environment
from bench.measure import costs, probe, timing
from bench.measure.model_store import load_deploy_model, saved_graph
from bench.measure.onnx_io import export_onnx, graph_costs
from bench.method import Deployed
from bench.registry import BACKBONES, BenchError
from bench.reporting.results import RecordStore
from bench.training.models import build_backbone, model_inputs

log = logging.getLogger("bench")
RUNTIMES = (timing.RUNTIME_EAGER, probe.RUNTIME_ORT, timing.RUNTIME_CUDA)
def _checked(call, *args):
    """Run a probe helper, turning its ProbeError into the CLI's one-line BenchError."""
    try:
        return call(*args)
    except probe.ProbeError as error:
        raise BenchError(str(error)) from None


def select_runs(store: RecordStore, runs: str | None) -> list[tuple[dict, Deployed]]:
    """Recorded runs (all, or those whose id starts with one of ``runs``) that have a saved deploy
    model, each with that model loaded: every file is read before anything is measured or written,
    so that a damaged one stops the command with one line instead of partway through."""
    records, _ = store.load()
    wanted = None if runs is None else [r.strip() for r in runs.split(",") if r.strip()]
    if wanted == []:  # --runs "" or "," (an unset variable, say): not "every run", which leaving it out means
        raise BenchError(f"--runs {runs!r} names no run: give run ids (or unique prefixes), or leave --runs out "
                         f"for every recorded run")
    if wanted:
        unknown = [w for w in wanted if not any(r["run_id"].startswith(w) for r in records)]
        if unknown:
            raise BenchError(f"no recorded run {unknown[0]!r} in {store.records_dir}: see runs.csv for run ids")
        records = [r for r in records if any(r["run_id"].startswith(w) for w in wanted)]
    chosen = [(r, store.root / "models" / f"{r['run_id']}.pt") for r in records]
    missing = [r["run_id"] for r, path in chosen if not path.exists()]
    if missing:
        log.warning("no saved deploy model for %d run(s) (%s...): re-run them with `bench run --force`",
                    len(missing), missing[0])
    chosen = [(r, path) for r, path in chosen if path.exists()]
    if not chosen:
        raise BenchError(f"no recorded run with a deploy model under {store.root / 'models'}: run `bench run` first")
    return [(r, load_model(path)) for r, path in chosen]


def load_model(path: Path) -> Deployed:
    """What the run shipped (see :mod:`bench.measure.model_store`): its module, and its method's own ONNX graph
    if any; a damaged graph is named now, not halfway through the measurements."""
    shipped = load_deploy_model(path)
    if shipped.graph is not None:
        _checked(probe.ort_session, saved_graph(path), 1)
    return shipped


def describe(record: dict, shipped: Deployed, seconds: list[float]) -> dict:
    """A run's deploy model as a manifest entry: identity, sizes, and costs per input duration (for
    a graph the method ships, such as quant's int8 one, MACs by precision and size of that graph)."""
    model = shipped.model
    features = FeatureConfig(**{f.name: record[f"features_{f.name}"] for f in fields(FeatureConfig)
                                if f"features_{f.name}" in record})
    input_dim = int(record.get("input_dim") or features.dim)
    entry = {k: record.get(k) for k in ("run_id", "method", "backbone", "preset", "dataset", "fold", "seed")}
    entry["input_dim"] = input_dim
    if record.get("backbone") in BACKBONES.names():  # a backbone that reads the deltas itself is built with them
        entry["build_overrides"] = model_inputs(record["backbone"], features)[1]
    with torch.inference_mode():
        entry["num_classes"] = int(model(*costs.example_input(input_dim, 32)).shape[-1])
    inputs = []
    for duration in seconds:
        frames = features.frames(duration)
        figures = costs.cost_figures(model, input_dim, frames)
        figures |= {"int8_macs": 0, "float_macs": figures["macs"]}
        if shipped.graph is not None:
            figures |= graph_costs(shipped.graph, input_dim, frames)
        entry.update({k: figures[k] for k in ("params", "nonzero_params", "size_bytes", "size_format")})
        inputs.append({"seconds": duration, "frames": frames,
                       **{k: figures.get(k) for k in ("macs", "flops", "int8_macs", "float_macs", "peak_memory_bytes")}})
    entry["inputs"] = inputs
    return entry


def check_frames(entry: dict) -> tuple[int, int]:
    """The two lengths an export is checked at: the shortest and the longest duration (or twice it)."""
    frames = sorted(i["frames"] for i in entry["inputs"])
    return frames[0], max(frames[-1], 2 * frames[0])


def reference_model(entry: dict) -> torch.nn.Module:
    """The plain lightweight model of the run's backbone (freshly initialized: latency does not depend
    on the weights), against which every latency is timed."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_backbone(entry["backbone"], "lightweight", entry["input_dim"], entry["num_classes"],
                              **entry.get("build_overrides", {})).eval()


def reference_stem(entry: dict) -> str:
    """The name of the reference model a deploy model is timed against: one per backbone, input width,
    class count and build keywords (a front-end with delta channels is another reference)."""
    if entry["backbone"] not in BACKBONES.names():  # a record's text becomes a file name: only a registered backbone
        raise BenchError(f"run {entry['run_id']} names backbone {entry['backbone']!r}, which is not registered here")
    built = "".join(f"-{k}{v}" for k, v in sorted(entry.get("build_overrides", {}).items()))
    return f"{entry['backbone']}-lightweight-{entry['input_dim']}x{entry['num_classes']}{built}"


def measure_run(entry: dict, shipped: Deployed, device: str, runtimes: list[str], threads: list[int],
                rule: probe.TimingRule, onnx_dir: Path, graph_cache: Path) -> list[dict]:
    """Rows of one deploy model for every runtime x thread count x duration (under the machine lock),
    each timed in alternating blocks with the plain lightweight reference of its backbone."""
    model = shipped.model
    env = {**probe.probe_environment(), **environment()}
    reference, rows = reference_model(entry), []
    with timing.exclusive():
        for runtime in runtimes:
            if runtime == probe.RUNTIME_ORT:
                rows += _onnx_rows(entry, shipped, reference, device, threads, rule, onnx_dir, graph_cache, env)
                continue
            for count in [1] if runtime == timing.RUNTIME_CUDA else threads:
                for item in entry["inputs"]:
                    if runtime == timing.RUNTIME_CUDA:
                        stats = probe.summarize(timing.time_cuda(model, entry["input_dim"], item["frames"], rule),
                                                item["seconds"], rule)
                    else:
                        stats = timing.latency_against(
                            timing.eager_runner(model, entry["input_dim"], item["frames"]),
                            timing.eager_runner(reference, entry["input_dim"], item["frames"]),
                            count, rule, item["seconds"], item)
                    rows.append(probe.make_row(entry, device, runtime, torch.__version__, count, item, stats, rule, env))
    return rows


def _onnx_rows(entry, shipped, reference, device, threads, rule, onnx_dir, graph_cache, env) -> list[dict]:
    try:
        difference = _write_onnx(entry, shipped, onnx_dir / f"{entry['run_id']}.onnx", graph_cache)
        reference_path = onnx_dir / f"reference-{reference_stem(entry)}.onnx"
        export_onnx(reference, entry["input_dim"], reference_path, check_frames(entry), "the plain reference model",
                    graph_cache)
    except BenchError as error:
        log.warning("no onnxruntime rows: %s", error)
        return []
    rows = []
    for count in threads:
        for item in entry["inputs"]:
            stats = timing.latency_against(
                timing.ort_runner(onnx_dir / f"{entry['run_id']}.onnx", entry["input_dim"], item["frames"], count),
                timing.ort_runner(reference_path, entry["input_dim"], item["frames"], count),
                count, rule, item["seconds"], item)
            rows.append(probe.make_row(entry, device, probe.RUNTIME_ORT, probe.probe_environment()["env_onnxruntime"],
                                       count, item, stats, rule, env, check_max_abs_diff=difference,
                                       check_ok=difference is None or difference <= probe.CHECK_ATOL))
    return rows


def _write_onnx(entry: dict, shipped: Deployed, path: Path, graph_cache: Path | None) -> float | None:
    """Write the run's ONNX model (the graph its method ships, or the module exported and checked against
    PyTorch); returns the export's largest difference from PyTorch (None for a shipped graph)."""
    if shipped.graph is None:
        return export_onnx(shipped.model, entry["input_dim"], path, check_frames(entry), f"run {entry['run_id']} "
                           f"({entry.get('method')})", graph_cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(shipped.graph)
    return None
