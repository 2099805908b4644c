"""``bench measure``, ``bench export``, ``bench probe`` and ``bench import-latency``: cost and latency of
recorded runs' deploy models (``results/models/<run_id>.pt``), measured without retraining.

Measurement rows (schema in :mod:`bench.measure.probe`) are stored per device and run in
``results/latency/<device>-<run_id>.json`` and gathered in ``results/latency.csv``; a device tag names
one machine, so rows of different machines are never mixed under one tag.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np
import torch

from bench.api import default_cache_dir
from bench.execution.env import environment
from bench.measure import costs, probe, timing
from bench.measure.latency_store import LatencyStore, read_rows
from bench.measure.onnx_io import export_onnx, peak_graphs
from bench.measure.remeasure import (RUNTIMES, _checked, _write_onnx, check_frames, describe, measure_run,
                                     reference_model, reference_stem, select_runs)
from bench.paths import UserPath, file_in_the_way
from bench.registry import BenchError
from bench.reporting.results import RecordStore, atomic_write_text, check_folders

INT8_CHECK_RTOL = 0.05  # an int8 model's check tolerance, relative to its largest logit


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
@click.option("--runtimes", default=f"{timing.RUNTIME_EAGER},{probe.RUNTIME_ORT}", show_default=True,
              help=f"any of {', '.join(RUNTIMES)} ({timing.RUNTIME_CUDA} needs a GPU)")
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
    if timing.RUNTIME_CUDA in chosen_runtimes and not torch.cuda.is_available():
        raise BenchError(f"runtime {timing.RUNTIME_CUDA} needs a CUDA GPU and none is visible: "
                         f"drop it from --runtimes")
    check_folders(results_dir, ("latency", "onnx"))  # before minutes of timing, not when its rows are written
    store, latency = RecordStore(results_dir), LatencyStore(results_dir)
    chosen = select_runs(store, runs)
    for number, (record, shipped) in enumerate(chosen, 1):
        have = {(r["runtime"], int(r["threads"]), float(r["input_seconds"]))
                for r in latency.rows(tag, record["run_id"])}
        # a graph the method ships (quant's int8 one) runs in onnxruntime only: PyTorch has no path for it
        runnable = [r for r in chosen_runtimes if shipped.graph is None or r == probe.RUNTIME_ORT]
        todo = [r for r in runnable if force or any(
            (r, c, s) not in have for c in ([1] if r == timing.RUNTIME_CUDA else counts) for s in durations)]
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
    blocking = file_in_the_way(out.parent)
    if blocking is not None:
        raise BenchError(f"--out {out} cannot be made: {blocking} is a file; give a folder to create")
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
        reference = Path("references") / f"{reference_stem(entry)}.onnx"
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


@click.command("import-latency")
@click.argument("file", type=UserPath(exists=True, dir_okay=False))
@RESULTS
@click.option("--device", help="tag the rows with this device instead of the file's own tag")
def import_latency_command(file, results_dir, device) -> None:
    """Merge a probe's latency rows (from another machine) into the results, under its device tag."""
    rows, file_device = read_rows(file)
    check_folders(results_dir, ("latency",))
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
