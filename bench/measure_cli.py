"""``bench measure``, ``bench export``, ``bench probe`` and ``bench import-latency``: cost and latency of
recorded runs' deploy models (``results/models/<run_id>.pt``), measured without retraining.

Measurement rows (schema in :mod:`bench.probe`) are stored per device and run in
``results/latency/<device>-<run_id>.json`` and gathered in ``results/latency.csv``; a device tag names
one machine, so rows of different machines are never mixed under one tag.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

from bench import measure, probe
from bench.env import environment
from bench.features import FeatureConfig
from bench.registry import BenchError
from bench.results import RecordStore, atomic_write_text

log = logging.getLogger("bench")
RUNTIMES = (measure.RUNTIME_EAGER, probe.RUNTIME_ORT, measure.RUNTIME_CUDA)


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

    def merge(self, device: str, run_id: str, rows: list[dict]) -> Path:
        """Add ``rows`` (replacing same runtime/threads/duration); a device tag holds one machine only."""
        old = self.rows(device, run_id)
        machines = {(r.get("env_host"), r.get("env_cpu")) for r in old + rows}
        if len(machines) > 1:
            raise BenchError(f"device tag {device!r} already holds rows of another machine ({sorted(machines)[0]}): "
                             f"give these rows their own tag with --device")
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


def select_runs(store: RecordStore, runs: str | None) -> list[tuple[dict, Path]]:
    """Recorded runs (all, or those whose id starts with one of ``runs``) that have a saved deploy model."""
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
    return chosen


def load_model(path: Path) -> torch.nn.Module:
    from bench.model_store import load_deploy_model

    return load_deploy_model(path)


def describe(record: dict, model: torch.nn.Module, seconds: list[float]) -> dict:
    """A run's deploy model as a manifest entry: identity, sizes, and costs per input duration."""
    features = FeatureConfig(**{f.name: record[f"features_{f.name}"] for f in fields(FeatureConfig)
                                if f"features_{f.name}" in record})
    input_dim = int(record.get("input_dim") or features.dim)
    entry = {k: record.get(k) for k in ("run_id", "method", "backbone", "preset", "dataset", "fold", "seed")}
    entry["input_dim"] = input_dim
    inputs = []
    for duration in seconds:
        frames = features.frames(duration)
        costs = measure.cost_figures(model, input_dim, frames)
        entry.update({k: costs[k] for k in ("params", "nonzero_params", "size_bytes", "size_format")})
        inputs.append({"seconds": duration, "frames": frames,
                       **{k: costs.get(k) for k in ("macs", "flops", "peak_memory_bytes")}})
    entry["inputs"] = inputs
    return entry


def check_frames(entry: dict) -> tuple[int, int]:
    """The two lengths an export is checked at: the shortest and the longest duration (or twice it)."""
    frames = sorted(i["frames"] for i in entry["inputs"])
    return frames[0], max(frames[-1], 2 * frames[0])


def measure_run(entry: dict, model: torch.nn.Module, device: str, runtimes: list[str], threads: list[int],
                rule: probe.TimingRule, onnx_dir: Path, graph_cache: Path) -> list[dict]:
    """Rows of one deploy model for every runtime x thread count x duration (under the machine lock)."""
    env = {**probe.probe_environment(), **environment()}
    rows = []
    with measure.exclusive():
        for runtime in runtimes:
            if runtime == probe.RUNTIME_ORT:
                rows += _onnx_rows(entry, model, device, threads, rule, onnx_dir, graph_cache, env)
                continue
            counts = [1] if runtime == measure.RUNTIME_CUDA else threads
            for count in counts:
                for item in entry["inputs"]:
                    if runtime == measure.RUNTIME_CUDA:
                        samples = measure.time_cuda(model, entry["input_dim"], item["frames"], rule)
                    else:
                        samples = measure.time_eager(model, entry["input_dim"], item["frames"], count, rule)
                    rows.append(probe.make_row(entry, device, runtime, torch.__version__, count, item,
                                               probe.summarize(samples, item["seconds"], rule), rule, env))
    return rows


def _onnx_rows(entry, model, device, threads, rule, onnx_dir, graph_cache, env) -> list[dict]:
    from bench.onnx_io import export_onnx

    onnx_path = onnx_dir / f"{entry['run_id']}.onnx"
    try:
        difference = export_onnx(model, entry["input_dim"], onnx_path, check_frames(entry), f"run {entry['run_id']}",
                                 graph_cache)
    except BenchError as error:
        log.warning("no onnxruntime rows: %s", error)
        return []
    rows = _checked(probe.measure_model, onnx_dir, {**entry, "file": onnx_path.name}, device, threads, None, rule, env)
    return [r | {"check_max_abs_diff": difference, "check_ok": difference <= probe.CHECK_ATOL} for r in rows]


def timing_options(command):
    """Options shared by ``measure`` and ``probe``: threads, durations, device tag, stopping rule."""
    for option in reversed([
        click.option("--threads", default="1,all", show_default=True, help="thread counts; 'all' = usable cores"),
        click.option("--device", help="device tag for the rows [default: host name]"),
        click.option("--max-seconds", type=float, default=probe.TimingRule.max_seconds, show_default=True,
                     help="time cap per model x runtime x threads x duration"),
        click.option("--target-rel-ci", type=float, default=probe.TimingRule.target_rel_ci, show_default=True,
                     help="stop when the median's 95% interval is within this fraction of it"),
    ]):
        command = option(command)
    return command


def _rule(max_seconds: float, target_rel_ci: float) -> probe.TimingRule:
    if max_seconds <= 0 or not 0 < target_rel_ci < 1:
        raise BenchError("--max-seconds must be > 0 and --target-rel-ci in (0, 1), "
                         "e.g. --max-seconds 5 --target-rel-ci 0.01")
    return probe.TimingRule(max_seconds=max_seconds, target_rel_ci=target_rel_ci)


RESULTS = click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
RUNS = click.option("--runs", help="comma-separated run ids (or unique prefixes) [default: every recorded run]")
SECONDS = click.option("--seconds", default="2,5,10", show_default=True, help="input durations in seconds")


@click.command("measure")
@RESULTS
@RUNS
@SECONDS
@click.option("--runtimes", default=f"{measure.RUNTIME_EAGER},{probe.RUNTIME_ORT}", show_default=True,
              help=f"any of {', '.join(RUNTIMES)} ({measure.RUNTIME_CUDA} needs a GPU)")
@timing_options
@click.option("--force", is_flag=True, help="re-measure rows already stored for this device")
def measure_command(results_dir, runs, seconds, runtimes, threads, device, max_seconds, target_rel_ci, force) -> None:
    """Measure costs and latency of recorded deploy models on this machine (no retraining)."""
    from bench.cli import default_cache_dir

    tag, counts = _checked(probe.device_tag, device), _checked(probe.parse_threads, threads)
    durations, rule = _checked(probe.parse_seconds, seconds), _rule(max_seconds, target_rel_ci)
    chosen_runtimes = [r.strip() for r in runtimes.split(",") if r.strip()]
    unknown = [r for r in chosen_runtimes if r not in RUNTIMES]
    if unknown or not chosen_runtimes:
        raise BenchError(f"unknown runtime {(unknown or [''])[0]!r}: use any of {', '.join(RUNTIMES)}")
    if measure.RUNTIME_CUDA in chosen_runtimes and not torch.cuda.is_available():
        raise BenchError(f"runtime {measure.RUNTIME_CUDA} needs a CUDA GPU and none is visible: "
                         f"drop it from --runtimes")
    store, latency = RecordStore(results_dir), LatencyStore(results_dir)
    chosen = select_runs(store, runs)
    for number, (record, path) in enumerate(chosen, 1):
        have = {(r["runtime"], int(r["threads"]), float(r["input_seconds"]))
                for r in latency.rows(tag, record["run_id"])}
        todo = [r for r in chosen_runtimes if force or any(
            (r, c, s) not in have for c in ([1] if r == measure.RUNTIME_CUDA else counts) for s in durations)]
        click.echo(f"[{number}/{len(chosen)}] {record['run_id']} {record.get('method')} "
                   f"{record.get('backbone')}/{record.get('preset')}: " + (", ".join(todo) or "already measured"))
        if not todo:
            continue
        model = load_model(path)
        entry = describe(record, model, durations)
        rows = measure_run(entry, model, tag, todo, counts, rule, results_dir / "onnx",
                           default_cache_dir() / "onnx-graphs")
        latency.merge(tag, record["run_id"], rows)
    click.echo(f"rows: {latency.folder}  table: {latency.write_table()}")


@click.command("export")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder to write (created)")
@RESULTS
@RUNS
@SECONDS
@click.option("--skip-unexportable", is_flag=True, help="leave out deploy models ONNX cannot express")
def export_command(out, results_dir, runs, seconds, skip_unexportable) -> None:
    """Write the recorded deploy models as ONNX plus manifest.json and the standalone probe.py."""
    from bench.cli import default_cache_dir
    from bench.onnx_io import export_onnx

    durations = _checked(probe.parse_seconds, seconds)
    chosen = select_runs(RecordStore(results_dir), runs)
    out.mkdir(parents=True, exist_ok=True)
    entries, skipped = [], []
    for number, (record, path) in enumerate(chosen, 1):
        rid = record["run_id"]
        click.echo(f"[{number}/{len(chosen)}] {rid} {record.get('method')} "
                   f"{record.get('backbone')}/{record.get('preset')}")
        model = load_model(path)
        entry = describe(record, model, durations)
        try:
            difference = export_onnx(model, entry["input_dim"], out / f"{rid}.onnx", check_frames(entry),
                                     f"run {rid} ({record.get('method')})", default_cache_dir() / "onnx-graphs")
        except BenchError:
            if not skip_unexportable:
                raise
            skipped.append(rid)
            continue
        frames = check_frames(entry)[0]
        features, lengths = measure.example_input(entry["input_dim"], frames)
        check = Path("checks") / f"input-{entry['input_dim']}x{frames}.npy"
        (out / check).parent.mkdir(exist_ok=True)
        np.save(out / check, features.numpy())
        with torch.inference_mode():
            logits = model(features, lengths).tolist()
        entries.append({**entry, "file": f"{rid}.onnx", "onnx_bytes": (out / f"{rid}.onnx").stat().st_size,
                        "check": {"input": str(check), "logits": logits, "atol": probe.CHECK_ATOL,
                                  "export_max_abs_diff": difference}})
    manifest = {"schema": probe.MANIFEST_SCHEMA, "schema_version": probe.MANIFEST_VERSION,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "inputs": {"features": "float32 (1, frames, input_dim)", "lengths": "int64 (1,)"},
                "outputs": {"logits": "float32 (1, classes)"}, "exported_on": environment(), "models": entries}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, default=str))
    shutil.copyfile(Path(probe.__file__), out / "probe.py")
    if skipped:
        click.echo(f"left out (not exportable): {', '.join(skipped)}")
    click.echo(f"exported {len(entries)} model(s) to {out}; on the device: python {out.name}/probe.py {out.name}")


@click.command("probe")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--seconds", help="input durations to time [default: all exported]")
@timing_options
@click.option("--out", type=click.Path(path_type=Path), help="rows file [default: TARGET/latency-<device>.json]")
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
    return document["rows"], document.get("device")


@click.command("import-latency")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
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
    for run_id, run_rows in by_run.items():
        latency.merge(tag, run_id, run_rows)
    strangers = sorted(set(by_run) - known)
    if strangers:
        click.echo(f"note: {len(strangers)} run(s) not recorded in {results_dir} ({strangers[0]}...)")
    click.echo(f"imported {len(rows)} row(s) of device {tag}; table: {latency.write_table()}")
