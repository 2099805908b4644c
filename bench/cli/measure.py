"""``bench measure``, ``bench export``, ``bench probe`` and ``bench import-latency``: cost and latency of
recorded runs' deploy models (``results/models/<run_id>.pt``), measured without retraining.

Measurement rows (schema in :mod:`bench.measure.probe`) are stored per device and run in
``results/latency/<device>-<run_id>.json`` and gathered in ``results/latency.csv``; a device tag names
one machine, so rows of different machines are never mixed under one tag.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import shutil
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

from bench.api import default_cache_dir
from bench.data.features import FeatureConfig
from bench.execution.env import environment
from bench.measure import costs, probe
from bench.measure.onnx_io import export_onnx, graph_costs, peak_graphs
from bench.method import Deployed
from bench.paths import UserPath
from bench.registry import BenchError
from bench.reporting.results import RecordStore, atomic_write_text

log = logging.getLogger("bench")
RUNTIMES = (costs.RUNTIME_EAGER, probe.RUNTIME_ORT, costs.RUNTIME_CUDA)
INT8_CHECK_RTOL = 0.05  # an int8 model's check tolerance, relative to its largest logit


def _checked(call, *args):
    """Run a probe helper, turning its ProbeError into the CLI's one-line BenchError."""
    try:
        return call(*args)
    except probe.ProbeError as error:
        raise BenchError(str(error)) from None


class LatencyStore:
    """Rows under ``<results>/latency/<device>-<run_id>.json``; the table ``<results>/latency.csv``."""

    def __init__(self, results_dir: Path):
        self.root = Path(results_dir)
        self.folder = self.root / "latency"

    def path(self, device: str, run_id: str) -> Path:
        return self.folder / f"{device}-{run_id}.json"

    def rows(self, device: str, run_id: str) -> list[dict]:
        path = self.path(device, run_id)
        return json.loads(path.read_text())["rows"] if path.exists() else []

    def check_machine(self, device: str, run_id: str, rows: list[dict]) -> None:
        """A device tag holds one machine only: refuse ``rows`` of another one."""
        machines = {(r.get("env_host"), r.get("env_cpu")) for r in self.rows(device, run_id) + rows}
        if len(machines) > 1:
            raise BenchError(f"device tag {device!r} already holds rows of another machine ({sorted(machines)[0]}): "
                             f"give these rows their own tag with --device")

    def merge(self, device: str, run_id: str, rows: list[dict]) -> Path:
        """Add ``rows`` (replacing same runtime/threads/duration) after :meth:`check_machine`."""
        self.check_machine(device, run_id, rows)
        old = self.rows(device, run_id)
        key = lambda r: (r["runtime"], int(r["threads"]), float(r["input_seconds"]))  # noqa: E731
        merged = {key(r): r for r in old} | {key(r): r for r in rows}
        document = {"schema": probe.SCHEMA, "schema_version": probe.SCHEMA_VERSION, "device": device,
                    "run_id": run_id, "rows": [merged[k] for k in sorted(merged)]}
        atomic_write_text(self.path(device, run_id), json.dumps(document, indent=1, default=str))
        return self.path(device, run_id)

    def write_table(self) -> Path:
        rows = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.exists() else []:
            document = json.loads(path.read_text())
            if document.get("schema_version") == probe.SCHEMA_VERSION:
                rows += document["rows"]
            else:
                log.warning("skipped %s: latency schema version %r", path, document.get("schema_version"))
        frame = pd.DataFrame(rows)
        if len(frame):
            frame = frame.sort_values(["device", "run_id", "runtime", "threads", "input_seconds"])
        atomic_write_text(self.root / "latency.csv", frame.to_csv(index=False))
        return self.root / "latency.csv"


def select_runs(store: RecordStore, runs: str | None) -> list[tuple[dict, Deployed]]:
    """Recorded runs (all, or those whose id starts with one of ``runs``) that have a saved deploy
    model, each with that model loaded: every file is read before anything is measured or written,
    so that a damaged one stops the command with one line instead of partway through."""
    records, _ = store.load()
    wanted = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
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
    from bench.measure.model_store import load_deploy_model, saved_graph

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
    from bench.training.models import build_backbone

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_backbone(entry["backbone"], "lightweight", entry["input_dim"], entry["num_classes"]).eval()


def measure_run(entry: dict, shipped: Deployed, device: str, runtimes: list[str], threads: list[int],
                rule: probe.TimingRule, onnx_dir: Path, graph_cache: Path) -> list[dict]:
    """Rows of one deploy model for every runtime x thread count x duration (under the machine lock),
    each timed in alternating blocks with the plain lightweight reference of its backbone."""
    model = shipped.model
    env = {**probe.probe_environment(), **environment()}
    reference, rows = reference_model(entry), []
    with costs.exclusive():
        for runtime in runtimes:
            if runtime == probe.RUNTIME_ORT:
                rows += _onnx_rows(entry, shipped, reference, device, threads, rule, onnx_dir, graph_cache, env)
                continue
            for count in [1] if runtime == costs.RUNTIME_CUDA else threads:
                for item in entry["inputs"]:
                    if runtime == costs.RUNTIME_CUDA:
                        stats = probe.summarize(costs.time_cuda(model, entry["input_dim"], item["frames"], rule),
                                                item["seconds"], rule)
                    else:
                        stats = costs.latency_against(
                            costs.eager_runner(model, entry["input_dim"], item["frames"]),
                            costs.eager_runner(reference, entry["input_dim"], item["frames"]),
                            count, rule, item["seconds"], item)
                    rows.append(probe.make_row(entry, device, runtime, torch.__version__, count, item, stats, rule, env))
    return rows


def _onnx_rows(entry, shipped, reference, device, threads, rule, onnx_dir, graph_cache, env) -> list[dict]:
    try:
        difference = _write_onnx(entry, shipped, onnx_dir / f"{entry['run_id']}.onnx", graph_cache)
        reference_path = onnx_dir / f"reference-{entry['backbone']}-{entry['input_dim']}.onnx"
        export_onnx(reference, entry["input_dim"], reference_path, check_frames(entry), "the plain reference model",
                    graph_cache)
    except BenchError as error:
        log.warning("no onnxruntime rows: %s", error)
        return []
    rows = []
    for count in threads:
        for item in entry["inputs"]:
            stats = costs.latency_against(
                costs.ort_runner(onnx_dir / f"{entry['run_id']}.onnx", entry["input_dim"], item["frames"], count),
                costs.ort_runner(reference_path, entry["input_dim"], item["frames"], count),
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


def timing_options(command):
    """Options shared by ``measure`` and ``probe``: threads, durations, device tag, stopping rule."""
    for option in reversed([
        click.option("--threads", default="1,all", show_default=True, help="thread counts; 'all' = usable cores"),
        click.option("--device", help="device tag for the rows [default: host name]"),
        click.option("--max-seconds", type=float, default=probe.TimingRule.max_seconds, show_default=True,
                     help="time cap per model x runtime x threads x duration"),
        click.option("--target-rel-ci", type=float, default=probe.TimingRule.target_rel_ci, show_default=True,
                     help="stop when the 95% interval of the latency ratio to the reference (of the median "
                          "without one) is within this fraction of it"),
    ]):
        command = option(command)
    return command


def _rule(max_seconds: float, target_rel_ci: float) -> probe.TimingRule:
    _checked(probe.check_rule, max_seconds, target_rel_ci)
    return probe.TimingRule(max_seconds=max_seconds, target_rel_ci=target_rel_ci)


RESULTS = click.option("--results-dir", type=UserPath(), default=Path("results"), show_default=True)
RUNS = click.option("--runs", help="comma-separated run ids (or unique prefixes) [default: every recorded run]")
SECONDS = click.option("--seconds", default="2,5,10", show_default=True, help="input durations in seconds")


@click.command("measure")
@RESULTS
@RUNS
@SECONDS
@click.option("--runtimes", default=f"{costs.RUNTIME_EAGER},{probe.RUNTIME_ORT}", show_default=True,
              help=f"any of {', '.join(RUNTIMES)} ({costs.RUNTIME_CUDA} needs a GPU)")
@timing_options
@click.option("--force", is_flag=True, help="re-measure rows already stored for this device")
def measure_command(results_dir, runs, seconds, runtimes, threads, device, max_seconds, target_rel_ci, force) -> None:
    """Measure costs and latency of recorded deploy models on this machine (no retraining)."""

    tag, counts = _checked(probe.device_tag, device), _checked(probe.parse_threads, threads)
    durations, rule = _checked(probe.parse_seconds, seconds), _rule(max_seconds, target_rel_ci)
    chosen_runtimes = [r.strip() for r in runtimes.split(",") if r.strip()]
    unknown = [r for r in chosen_runtimes if r not in RUNTIMES]
    if unknown or not chosen_runtimes:
        raise BenchError(f"unknown runtime {(unknown or [''])[0]!r}: use any of {', '.join(RUNTIMES)}")
    if costs.RUNTIME_CUDA in chosen_runtimes and not torch.cuda.is_available():
        raise BenchError(f"runtime {costs.RUNTIME_CUDA} needs a CUDA GPU and none is visible: "
                         f"drop it from --runtimes")
    store, latency = RecordStore(results_dir), LatencyStore(results_dir)
    chosen = select_runs(store, runs)
    for number, (record, shipped) in enumerate(chosen, 1):
        have = {(r["runtime"], int(r["threads"]), float(r["input_seconds"]))
                for r in latency.rows(tag, record["run_id"])}
        # a graph the method ships (quant's int8 one) runs in onnxruntime only: PyTorch has no path for it
        runnable = [r for r in chosen_runtimes if shipped.graph is None or r == probe.RUNTIME_ORT]
        todo = [r for r in runnable if force or any(
            (r, c, s) not in have for c in ([1] if r == costs.RUNTIME_CUDA else counts) for s in durations)]
        click.echo(f"[{number}/{len(chosen)}] {record['run_id']} {record.get('method')} "
                   f"{record.get('backbone')}/{record.get('preset')}: " + (", ".join(todo) or "already measured"))
        if not todo:
            continue
        entry = describe(record, shipped, durations)
        rows = measure_run(entry, shipped, tag, todo, counts, rule, results_dir / "onnx",
                           default_cache_dir() / "onnx-graphs")
        latency.merge(tag, record["run_id"], rows)
    click.echo(f"rows: {latency.folder}  table: {latency.write_table()}")


@click.command("export")
@click.option("--out", type=UserPath(), required=True,
              help="folder to write (created; an existing one only with --replace)")
@RESULTS
@RUNS
@SECONDS
@click.option("--skip-unexportable", is_flag=True, help="leave out deploy models ONNX cannot express")
@click.option("--replace", is_flag=True, help="replace an earlier export folder at --out as a whole")
def export_command(out, results_dir, runs, seconds, skip_unexportable, replace) -> None:
    """Write the recorded deploy models as ONNX (int8 ones as quantized) plus manifest.json and the
    standalone probe.py. The folder is written beside --out and moved into place when complete."""

    durations = _checked(probe.parse_seconds, seconds)
    _check_export_target(out, replace)
    chosen = select_runs(RecordStore(results_dir), runs)
    staging = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        entries, skipped = _export_models(chosen, staging, durations, skip_unexportable,
                                          default_cache_dir() / "onnx-graphs")
        manifest = {"schema": probe.MANIFEST_SCHEMA, "schema_version": probe.MANIFEST_VERSION,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "inputs": {"features": "float32 (1, frames, input_dim)", "lengths": "int64 (1,)"},
                    "outputs": {"logits": "float32 (1, classes)"}, "exported_on": environment(), "models": entries}
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=1, default=str))
        shutil.copyfile(Path(probe.__file__), staging / "probe.py")
        for precision, graph in peak_graphs().items():  # the probe measures the core's peak GEMM rates with these
            (staging / "peak").mkdir(exist_ok=True)
            (staging / "peak" / f"gemm-{precision}.onnx").write_bytes(graph)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if skipped:
        click.echo(f"left out (not exportable): {', '.join(skipped)}")
    click.echo(f"exported {len(entries)} model(s) to {out}; on the device: python {out.name}/probe.py {out.name}")


def _check_export_target(out: Path, replace: bool) -> None:
    """``--out`` must be a new (or empty) folder, or with ``--replace`` an earlier export folder."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file: give a folder to create, e.g. --out pi-models")
    if out.is_dir() and any(out.iterdir()):
        if not replace:
            raise BenchError(f"--out {out} already exists and is not empty: give a new folder, or --replace to "
                             f"replace an earlier export as a whole")
        if not (out / "manifest.json").exists():
            raise BenchError(f"--out {out} is not an earlier export (it has no manifest.json): "
                             f"give a new folder; --replace only replaces export folders")
        foreign = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir() and not _exported(p.relative_to(out)))
        if foreign:
            raise BenchError(f"--out {out} holds {len(foreign)} file(s) an export does not write ({foreign[0]}"
                             f"{', ...' if len(foreign) > 1 else ''}; device measurements are latency-*.json): "
                             f"move them out first, or give a new folder")


def _exported(path: Path) -> bool:
    """Whether ``path`` (relative to an export folder) is a file ``bench export`` writes there."""
    if len(path.parts) == 1:
        return path.name in ("manifest.json", "probe.py") or path.suffix == ".onnx"
    return len(path.parts) == 2 and (path.parts[0], path.suffix) in (("peak", ".onnx"), ("references", ".onnx"),
                                                                      ("checks", ".npy"))


def _export_models(chosen, folder: Path, durations: list[float], skip_unexportable: bool,
                   graph_cache: Path) -> tuple[list[dict], list[str]]:
    """Write each run's ONNX model and check input into ``folder``; the manifest entries, and the runs
    left out. Float models' check logits are PyTorch's; an int8 model's are ONNX Runtime's own at export
    (other CPUs' int8 kernels may round differently, so its tolerance is relative to the logits)."""
    entries, skipped = [], []
    for number, (record, shipped) in enumerate(chosen, 1):
        rid = record["run_id"]
        click.echo(f"[{number}/{len(chosen)}] {rid} {record.get('method')} "
                   f"{record.get('backbone')}/{record.get('preset')}")
        entry = describe(record, shipped, durations)
        try:
            difference = _write_onnx(entry, shipped, folder / f"{rid}.onnx", graph_cache)
        except BenchError:
            if not skip_unexportable:
                raise
            skipped.append(rid)
            continue
        frames = check_frames(entry)[0]
        features, lengths = costs.example_input(entry["input_dim"], frames)
        check = Path("checks") / f"input-{entry['input_dim']}x{frames}.npy"
        (folder / check).parent.mkdir(exist_ok=True)
        np.save(folder / check, features.numpy())
        if shipped.graph is None:
            with torch.inference_mode():
                logits, atol = shipped.model(features, lengths).tolist(), probe.CHECK_ATOL
        else:
            output = _checked(probe.ort_session, folder / f"{rid}.onnx", 1).run(
                None, {"features": features.numpy(), "lengths": lengths.numpy()})[0]
            logits, atol = output.tolist(), INT8_CHECK_RTOL * float(np.abs(output).max()) + probe.CHECK_ATOL
        reference = Path("references") / f"{entry['backbone']}-lightweight-{entry['input_dim']}x{entry['num_classes']}.onnx"
        if not (folder / reference).exists():  # the probe times every model against it, as bench measure does
            export_onnx(reference_model(entry), entry["input_dim"], folder / reference, check_frames(entry),
                        "the plain reference model", graph_cache)
        entries.append({**entry, "file": f"{rid}.onnx", "onnx_bytes": (folder / f"{rid}.onnx").stat().st_size,
                        "reference": str(reference),
                        "check": {"input": str(check), "logits": logits, "atol": atol,
                                  "export_max_abs_diff": difference}})
    return entries, skipped


@click.command("probe")
@click.argument("target", type=UserPath())
@click.option("--seconds", help="input durations to time [default: all exported]")
@timing_options
@click.option("--out", type=UserPath(), help="rows file [default: TARGET/latency-<device>.json]")
def probe_command(target, seconds, threads, device, max_seconds, target_rel_ci, out) -> None:
    """Time an export folder's ONNX models with ONNX Runtime here (what probe.py does on a device)."""
    _checked(lambda: probe.run_probe(target, device, threads, seconds, _rule(max_seconds, target_rel_ci), out,
                                     log=click.echo))


def read_rows(path: Path) -> tuple[list[dict], str | None]:
    """Rows and device of a probe's JSON (or CSV) output; a foreign schema is a one-line error."""
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            rows = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]
            document = {"schema": rows[0].get("schema") if rows else None,
                        "schema_version": rows[0].get("schema_version") if rows else None, "rows": rows}
        else:
            document = json.loads(path.read_text())
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise BenchError(f"cannot read {path} ({str(error).splitlines()[0][:120]}): give the latency-<device>.json "
                         f"that probe.py wrote") from None
    if not (isinstance(document, dict) and document.get("schema") == probe.SCHEMA
            and isinstance(document.get("rows"), list)):
        raise BenchError(f"{path} is not a latency file of hrf-bench: "
                         f"give the latency-<device>.json that probe.py wrote")
    versions = {document.get("schema_version")} | {r.get("schema_version") for r in document["rows"]}
    foreign = sorted(map(str, versions - {probe.SCHEMA_VERSION}))
    if foreign:
        raise BenchError(f"{path} has latency schema version {foreign[0]}, this bench reads "
                         f"{probe.SCHEMA_VERSION}: re-measure with the probe.py of a fresh `bench export`")
    for number, row in enumerate(document["rows"], 1):
        problem = row_problem(row)
        if problem:
            raise BenchError(f"{path} row {number} {problem}: nothing was imported; re-measure with probe.py")
    return document["rows"], document.get("device")


def row_problem(row) -> str | None:
    """What makes a latency row unusable (None when it is fine): the fields the table is keyed and
    compared on must be present and sensible, so that a bad row never replaces a good one."""
    if not isinstance(row, dict):
        return "is not an object"
    if not isinstance(row.get("run_id"), str) or not probe.DEVICE_TAG.match(row["run_id"]):
        return f"has run_id={row.get('run_id')!r} (letters, digits, '.', '_' or '-' are needed)"
    if not isinstance(row.get("runtime"), str) or not row["runtime"]:
        return "has no runtime"
    threads = row.get("threads")
    if isinstance(threads, bool) or not isinstance(threads, numbers.Real) or not threads >= 1 or threads != int(threads):
        return f"has threads={threads!r} (a positive integer is needed)"
    for name in ("input_seconds", "latency_ms"):
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
            return f"has {name}={value!r} (a positive number is needed)"
    return None


@click.command("import-latency")
@click.argument("file", type=UserPath(exists=True, dir_okay=False))
@RESULTS
@click.option("--device", help="tag the rows with this device instead of the file's own tag")
def import_latency_command(file, results_dir, device) -> None:
    """Merge a probe's latency rows (from another machine) into the results, under its device tag."""
    rows, file_device = read_rows(file)
    tags = {r.get("device") for r in rows} | ({file_device} if file_device else set())
    if device is None and len(tags) != 1:
        raise BenchError(f"{file} mixes device tags {sorted(map(str, tags))}: import it with --device TAG")
    tag = _checked(probe.device_tag, device or tags.pop())
    records, _ = RecordStore(results_dir).load()
    known = {r["run_id"] for r in records}
    latency = LatencyStore(results_dir)
    by_run: dict[str, list[dict]] = {}
    for row in rows:
        by_run.setdefault(str(row["run_id"]), []).append(row | {"device": tag})
    for run_id, run_rows in by_run.items():  # every check before the first write
        latency.check_machine(tag, run_id, run_rows)
    for run_id, run_rows in by_run.items():
        latency.merge(tag, run_id, run_rows)
    strangers = sorted(set(by_run) - known)
    if strangers:
        click.echo(f"note: {len(strangers)} run(s) not recorded in {results_dir} ({strangers[0]}...)")
    click.echo(f"imported {len(rows)} row(s) of device {tag}; table: {latency.write_table()}")
