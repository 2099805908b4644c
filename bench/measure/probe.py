"""Standalone latency probe for the ONNX deploy models that ``bench export --out DIR`` writes.

It imports only onnxruntime, numpy and the standard library, so it can be copied to a target board
(a Raspberry Pi: ``pip install onnxruntime numpy``) and run there::

    python probe.py DIR [--device pi4] [--threads 1,all] [--seconds 2,5,10] [--max-seconds 5]

DIR holds ``manifest.json`` and one ``<run_id>.onnx`` per run (a single ``.onnx`` file also works).
The probe first checks each model's output on the manifest's check input against the PyTorch output
recorded at export, then times it and writes ``DIR/latency-<device>.json`` and ``.csv``: one row per
(run_id, runtime, threads, input_seconds, device), the schema ``bench import-latency`` merges.

``bench.measure.costs`` imports the timing rule and the row schema from here, so that PyTorch eager, ONNX
Runtime on this machine and ONNX Runtime on a board are all timed and reported alike.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import csv
import functools
import gc
import json
import math
import os
import platform
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

SCHEMA = "hrf-bench-latency"
SCHEMA_VERSION = 1
MANIFEST_SCHEMA = "hrf-bench-export"
MANIFEST_VERSION = 1
RUNTIME_ORT = "onnxruntime"
CHECK_ATOL = 1e-4
DEVICE_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Bounds on what one flag may ask for: every thread count builds a session, every duration an input
# tensor (a 1e9 s input is terabytes). Ten minutes is also the longest utterance a corpus may hold.
MAX_THREADS = 256
MAX_INPUT_SECONDS = 600.0
MAX_TIMING_SECONDS = 3600.0


class ProbeError(Exception):
    """Bad input: reported on one line, exit status 2."""


@dataclass(frozen=True)
class TimingRule:
    """When to stop timing: after warm-up, sample until the 95 % confidence interval of the median is
    within ``target_rel_ci`` of it (distribution-free, so outliers from a busy machine do not inflate
    it), with at least ``min_samples`` and at most ``max_samples`` samples; ``max_seconds`` caps the
    time of one measurement before either (but it keeps at least 3 samples). A measurement also lasts
    at least ``min_seconds`` (up to ``max_seconds``): on a shared VM the machine's speed drifts over
    seconds, and a median of samples from a quarter of a second only says how fast it was then."""

    warmup_runs: int = 3
    warmup_seconds: float = 0.2
    min_samples: int = 10
    max_samples: int = 2000
    max_seconds: float = 5.0
    target_rel_ci: float = 0.01
    min_seconds: float = 2.0


def median_interval(ordered: list[float]) -> tuple[float, float]:
    """95 % confidence interval of the median of sorted samples from order statistics (sign test)."""
    n = len(ordered)
    half = 1.96 * math.sqrt(n) / 2
    return ordered[max(0, math.floor(n / 2 - half))], ordered[min(n - 1, math.ceil(n / 2 + half))]


def relative_interval(ordered: list[float]) -> float:
    low, high = median_interval(ordered)
    return (high - low) / 2 / max(float(np.median(ordered)), 1e-12)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's own ceiling for its dynamic threshold
TRIM_THRESHOLD_BYTES = 1 << 30


@functools.cache
def steady_allocator() -> str:
    """Let glibc keep freed memory in the process (no per-allocation mmap, no trimming of the heap
    top), as the arena allocators of deployed runtimes do. With glibc's defaults an eager PyTorch
    inference page-faults fresh memory for its tensors every time (about 1,200 minor faults per
    lightweight Conformer pass on a 2-core VM), which made it about 30 % slower and its latency
    noisier. Process-wide and idempotent; returns the setting for the record (``env_allocator``)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        if not (libc.gnu_get_libc_version and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
            return "default"
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): leave it alone
        return "default"
    return f"glibc mmap_threshold={MMAP_THRESHOLD_BYTES} trim_threshold={TRIM_THRESHOLD_BYTES}"


def time_adaptively(sample, rule: TimingRule) -> list[tuple[float, float | None]]:
    """``(wall ms, CPU ms or None)`` of repeated ``sample()`` calls (each runs the model once and
    returns its times) after warm-up, stopping by ``rule`` on the wall times. The garbage collector
    is off while timing (as in timeit), and freed memory stays in the process (``steady_allocator``)."""
    steady_allocator()
    started = time.perf_counter()
    for _ in range(rule.warmup_runs):
        sample()
    while time.perf_counter() - started < rule.warmup_seconds:
        sample()
    samples: list[tuple[float, float | None]] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        started, next_check = time.perf_counter(), rule.min_samples
        while len(samples) < rule.max_samples:
            samples.append(sample())
            elapsed = time.perf_counter() - started
            if elapsed >= rule.max_seconds and len(samples) >= 3:
                break
            if len(samples) >= next_check and elapsed >= min(rule.min_seconds, rule.max_seconds):
                if relative_interval(sorted(wall for wall, _ in samples)) <= rule.target_rel_ci:
                    break
                next_check = len(samples) + max(5, len(samples) // 10)  # the interval needs a sort
    finally:
        if enabled:
            gc.enable()
    return samples


def summarize(samples: list[tuple[float, float | None]], audio_seconds: float | None, rule: TimingRule) -> dict:
    """Wall-time median, p90, IQR, p5, min, mean, sample count, interval, stability flag, real-time factor,
    and the median process CPU time per run where the samples have it."""
    ordered = sorted(wall for wall, _ in samples)
    p5, q1, median, q3, p90 = (float(v) for v in np.percentile(ordered, [5, 25, 50, 75, 90]))
    rel_ci = relative_interval(ordered)
    cpu = [c for _, c in samples if c is not None]
    return {"latency_ms": median, "latency_p90_ms": p90, "latency_iqr_ms": q3 - q1, "latency_min_ms": ordered[0],
            "latency_p5_ms": p5,
            "latency_mean_ms": float(np.mean(ordered)), "latency_samples": len(ordered),
            "latency_rel_ci": rel_ci, "latency_stable": rel_ci <= rule.target_rel_ci,
            "latency_cpu_ms": float(np.median(cpu)) if cpu else None,
            "rtf": median / 1000 / audio_seconds if audio_seconds else None}


BLOCK_SECONDS = 0.03  # one block of runs of one model; the machine's speed drifts over seconds, not this
BOOTSTRAP_RESAMPLES = 2000


def ratio_interval(ratios: list[float]) -> tuple[float, float, float]:
    """Median of per-pair latency ratios and its 95 % percentile-bootstrap interval (resampling pairs;
    seeded, so the same pairs give the same interval)."""
    values = np.asarray(ratios, dtype=float)
    rng = np.random.default_rng(0)
    medians = np.median(values[rng.integers(0, len(values), (BOOTSTRAP_RESAMPLES, len(values)))], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(values)), float(low), float(high)


def time_interleaved(sample, reference, rule: TimingRule) -> dict:
    """Time ``sample()`` (the model) and ``reference()`` (the plain reference model) in alternating
    blocks of about ``BLOCK_SECONDS`` each (the order swapped every pair: ABBA, so that a steady drift
    cancels), until the 95 % interval of the median per-pair ratio of block medians is within
    ``rule.target_rel_ci`` of it, after at least ``rule.min_seconds`` (capped by ``rule.max_seconds``).
    A shared machine's speed changes the model's and the reference's times alike within a pair, so
    the ratio stays where absolute times drift. Returns both sample lists and the pair ratios."""
    steady_allocator()
    runs = {}
    for name, call in (("model", sample), ("reference", reference)):
        started, count = time.perf_counter(), 0
        while count < rule.warmup_runs or time.perf_counter() - started < rule.warmup_seconds / 2:
            call()
            count += 1
        runs[name] = max(1, round(BLOCK_SECONDS / max((time.perf_counter() - started) / count, 1e-6)))
    samples: dict[str, list] = {"model": [], "reference": []}
    ratios: list[float] = []
    calls = {"model": sample, "reference": reference}
    enabled = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        while True:
            order = ("model", "reference") if len(ratios) % 2 == 0 else ("reference", "model")
            block = {}
            for name in order:
                block[name] = [calls[name]() for _ in range(runs[name])]
                samples[name] += block[name]
            ratios.append(float(np.median([w for w, _ in block["model"]]) / np.median([w for w, _ in block["reference"]])))
            elapsed = time.perf_counter() - started
            if elapsed >= rule.max_seconds and len(ratios) >= 3:
                break
            if len(ratios) >= rule.min_samples and elapsed >= min(rule.min_seconds, rule.max_seconds):
                ratio, low, high = ratio_interval(ratios)
                if (high - low) / 2 <= rule.target_rel_ci * ratio:
                    break
    finally:
        if enabled:
            gc.enable()
    return {"model": samples["model"], "reference": samples["reference"], "ratios": ratios}


def ratio_figures(timed: dict, audio_seconds: float | None, rule: TimingRule) -> dict:
    """:func:`summarize` of the model's samples plus ``latency_ratio`` (model / reference, median of the
    pair ratios) with its interval, and the reference's median latency."""
    ratio, low, high = ratio_interval(timed["ratios"])
    return {**summarize(timed["model"], audio_seconds, rule), "latency_ratio": ratio, "latency_ratio_ci_low": low,
            "latency_ratio_ci_high": high, "latency_ratio_pairs": len(timed["ratios"]),
            "reference_latency_ms": float(np.median([w for w, _ in timed["reference"]]))}


PEAK_GEMM_SIZE = 512  # square GEMM: large enough for the kernels' steady rate, 268 MFLOP per run
PEAK_SECONDS = 0.3


def peak_gflops(graphs: dict, threads: int = 1) -> dict:
    """The core's peak GEMM rate in GFLOP/s per precision (``fp32``: MatMul, ``int8``: MatMulInteger of
    uint8 x int8), from ``graphs`` (precision -> ONNX file or bytes taking ``a``, ``b``): the fastest of
    repeated ``PEAK_GEMM_SIZE`` cubed products over ``PEAK_SECONDS`` each."""
    rng, n = np.random.default_rng(0), PEAK_GEMM_SIZE
    feeds = {"fp32": {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)},
             "int8": {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": rng.integers(-128, 128, (n, n), dtype=np.int8)}}
    rates = {}
    for precision, graph in graphs.items():
        session, feed = ort_session(graph, threads), feeds[precision]
        session.run(None, feed)
        best, started = math.inf, time.perf_counter()
        while time.perf_counter() - started < PEAK_SECONDS:
            best = min(best, clocked(lambda: session.run(None, feed))[0])
        rates[precision] = 2 * n ** 3 / (best / 1000) / 1e9
    return rates


def roofline(latency_ms: float, float_macs: float | None, int8_macs: float | None, peaks: dict) -> dict:
    """``roofline_ratio``: measured time over the time its FLOPs take at the peak rate of their precision,
    and ``peak_gflops``, the peak that bound implies for this mix of float and int8 work."""
    if not float_macs and not int8_macs or not peaks:
        return {}
    bound = 2 * (float_macs or 0) / (peaks["fp32"] * 1e9) + 2 * (int8_macs or 0) / (peaks["int8"] * 1e9)
    return {"roofline_ratio": latency_ms / 1000 / bound,
            "peak_gflops": 2 * ((float_macs or 0) + (int8_macs or 0)) / bound / 1e9,
            "peak_gflops_fp32": peaks["fp32"], "peak_gflops_int8": peaks["int8"]}


def clocked(run) -> tuple[float, float]:
    """Wall and process CPU milliseconds of one ``run()``. On a shared machine the CPU time (all of
    this process's threads) is what other jobs cannot stretch: at 1 thread it is the latency the run
    would have alone, give or take cache and clock effects."""
    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
    run()
    return (time.perf_counter_ns() - wall) / 1e6, (time.process_time_ns() - cpu) / 1e6


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        for key in ("model name", "Model", "Hardware"):  # x86, Raspberry Pi, other ARM boards
            for line in lines:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def probe_environment() -> dict:
    """The ``env_*`` fields the probe can know without torch (same names as ``bench.execution.env``)."""
    import onnxruntime
    return {"env_host": socket.gethostname(), "env_cpu": cpu_model(), "env_cores": os.cpu_count(),
            "env_usable_cores": usable_cores(), "env_machine": platform.machine(),
            "env_python": platform.python_version(), "env_platform": platform.platform(),
            "env_numpy": np.__version__, "env_allocator": steady_allocator(),
            "env_onnxruntime": onnxruntime.__version__ or package_version("onnxruntime")}


def device_tag(text: str | None) -> str:
    """``text`` (default: the host name) checked as a device tag: letters, digits, ``._-``."""
    tag = text if text is not None else re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "device"
    if not DEVICE_TAG.match(tag):
        raise ProbeError(f"bad device tag {tag!r}: use letters, digits, '.', '_' or '-' (e.g. --device pi4)")
    return tag


def parse_threads(text: str) -> list[int]:
    """``1,all`` -> ``[1, usable cores]`` (duplicates dropped)."""
    values = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item == "all":
            values.append(usable_cores())
        elif item.isdigit() and 0 < int(item) <= MAX_THREADS:
            values.append(int(item))
        elif item.isdigit() and int(item) > MAX_THREADS:
            raise ProbeError(f"bad threads {item!r}: at most {MAX_THREADS} (this machine has {usable_cores()} "
                             f"usable cores), e.g. 1,all")
        else:
            raise ProbeError(f"bad threads {item!r}: use positive integers or 'all', e.g. 1,all")
    return sorted(set(values)) or [1]


def parse_seconds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ProbeError(f"bad seconds {text!r}: use durations in seconds, e.g. 2,5,10") from None
    if not values or not all(0 < v <= MAX_INPUT_SECONDS for v in values):  # NaN fails too
        raise ProbeError(f"bad seconds {text!r}: durations must be positive and at most {MAX_INPUT_SECONDS:g}, "
                         f"e.g. 2,5,10")
    return values


def check_rule(max_seconds: float, target_rel_ci: float) -> None:
    """The stopping rule's flags: a finite time cap and a fraction (NaN fails every comparison)."""
    if not (0 < max_seconds <= MAX_TIMING_SECONDS and 0 < target_rel_ci < 1):
        raise ProbeError(f"--max-seconds must be in (0, {MAX_TIMING_SECONDS:g}] and --target-rel-ci in (0, 1), "
                         f"e.g. --max-seconds 5 --target-rel-ci 0.01")


def ort_session(path: Path | bytes, threads: int, spinning: bool = True):
    """An ONNX Runtime CPU session (of a file, or a serialized model) with ``threads`` intra-op threads,
    sequential execution. Without ``spinning`` its idle worker threads sleep at once instead of
    spinning for more work: two sessions timed in alternation must not steal each other's cores."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own pybind types (InvalidProtobuf, Fail, NoSuchFile...)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1][:160]
        what = "the serialized model" if isinstance(path, bytes) else path
        raise ProbeError(f"{what} is not a readable ONNX model ({reason}): give a folder written by "
                         f"`bench export --out DIR` or an .onnx file") from None


def load_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.exists():
        raise ProbeError(f"{folder} has no manifest.json: give the folder written by `bench export --out DIR`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or UTF-8
        raise ProbeError(f"{path} is not readable JSON ({str(error)[:120]}): re-run `bench export`") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ProbeError(f"{path} is not an hrf-bench export manifest: re-run `bench export`")
    if manifest.get("schema_version") != MANIFEST_VERSION:
        raise ProbeError(f"{path} has manifest schema version {manifest.get('schema_version')!r}, this probe reads "
                         f"{MANIFEST_VERSION}: use the probe.py that `bench export` copied next to it")
    models = manifest.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ProbeError(f"{path} has no list of models: re-run `bench export`")
    for model in models:  # every file it names and every size it gives, checked before anything is timed
        problem = entry_problem(model)
        if problem:
            raise ProbeError(f"{path} has a model {problem}: re-run `bench export`")
        inside(folder, model.get("file"), "a model")
        if model.get("reference"):
            inside(folder, model["reference"], "a reference model")
        if model.get("check"):
            if not isinstance(model["check"], dict):
                raise ProbeError(f"{path} has a check that is not a table: re-run `bench export`")
            inside(folder, model["check"].get("input"), "a check input")
    return manifest


MAX_INPUT_DIM = 100_000  # features per frame; every timed input is (1, frames, input_dim) floats


def _whole(value, high: float) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= high


def entry_problem(model: dict) -> str | None:
    """What makes a manifest entry unusable (None when it is fine): the sizes the timed inputs are built
    from must be positive whole numbers within bounds, so that a damaged manifest cannot crash the probe
    halfway or ask for terabytes."""
    if not isinstance(model.get("run_id"), str) or not DEVICE_TAG.match(model["run_id"]):
        return f"with run_id={model.get('run_id')!r}"
    if not _whole(model.get("input_dim"), MAX_INPUT_DIM):
        return f"{model['run_id']} with input_dim={model.get('input_dim')!r}"
    inputs = model.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(e, dict) and isinstance(e.get("seconds"), (int, float)) and not isinstance(e["seconds"], bool)
            and 0 < e["seconds"] <= MAX_INPUT_SECONDS and _whole(e.get("frames"), MAX_INPUT_SECONDS * 1000)
            for e in inputs):
        return f"{model['run_id']} without a list of inputs of positive seconds and frames"
    return None


def single_model_manifest(path: Path, seconds: list[float], frames_per_second: float) -> dict:
    """A manifest for one bare ``.onnx`` file: input width from its graph, no output check."""
    inputs = ort_session(path, 1).get_inputs()
    dims = inputs[0].shape if inputs else []
    if len(inputs) != 2 or len(dims) != 3 or not isinstance(dims[2], int):
        raise ProbeError(f"{path} does not take (features (B, T, F), lengths (B,)): export it with `bench export`")
    return {"models": [{"run_id": path.stem, "file": path.name, "input_dim": dims[2],
                        "inputs": [{"seconds": s, "frames": int(s * frames_per_second) + 1} for s in seconds]}]}


def inside(folder: Path, name, what: str) -> Path:
    """``folder / name`` for a file the manifest names, refused unless it is a relative path inside ``folder``
    (a manifest is data: it must not point the probe at files elsewhere on the device)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise ProbeError(f"the manifest names {what} {name!r}, not a file inside the export folder: re-run `bench export`")
    path = folder / name
    root = folder.resolve()
    if root not in path.resolve().parents:
        raise ProbeError(f"the manifest names {what} {name!r}, outside the export folder: re-run `bench export`")
    return path


def check_output(session, model: dict, folder: Path) -> float | None:
    """Largest |ONNX Runtime - PyTorch| on the manifest's check input (None when it has none)."""
    check = model.get("check")
    if not check:
        return None
    path = inside(folder, check.get("input"), "a check input")
    try:
        features = np.load(path).astype(np.float32)  # never a pickle: np.load refuses object arrays
        if features.ndim != 3 or features.shape[2] != model["input_dim"]:
            raise ValueError(f"shape {features.shape}, not (B, frames, {model['input_dim']})")
        lengths = np.full((features.shape[0],), features.shape[1], dtype=np.int64)
        logits = session.run(None, {"features": features, "lengths": lengths})[0]
        return float(np.max(np.abs(logits - np.asarray(check["logits"], dtype=np.float32))))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ProbeError(f"the check of {model['run_id']} is unusable ({path.name}: {str(error)[:120]}): "
                         f"re-run `bench export`") from None


def measure_model(folder: Path, model: dict, device: str, threads_list: list[int], seconds: list[float] | None,
                  rule: TimingRule, environment: dict, peaks: dict | None = None) -> list[dict]:
    """Rows for one manifest entry: every thread count x input duration, timed against the entry's
    ``reference`` graph (the plain lightweight model of its backbone) when the export has one, with
    the roofline ratio at 1 thread given the core's ``peaks``."""
    path = inside(folder, model.get("file"), "a model")
    reference = inside(folder, model["reference"], "a reference model") if model.get("reference") else None
    for needed in filter(None, (path, reference)):
        if not needed.exists():
            raise ProbeError(f"{needed} is missing: copy the whole export folder to the device")
    rows, difference = [], None
    wanted = [e for e in model["inputs"] if seconds is None or any(abs(e["seconds"] - s) < 1e-9 for s in seconds)]
    if not wanted:
        raise ProbeError(f"no exported duration matches --seconds; {model['run_id']} has "
                         f"{', '.join(str(e['seconds']) for e in model['inputs'])}")
    for threads in threads_list:
        session = ort_session(path, threads, spinning=reference is None)
        baseline = ort_session(reference, threads, spinning=False) if reference else None
        if difference is None:
            difference = check_output(session, model, folder)
        for entry in wanted:
            rng = np.random.default_rng(0)
            feed = {"features": rng.standard_normal((1, entry["frames"], model["input_dim"]), dtype=np.float32),
                    "lengths": np.array([entry["frames"]], dtype=np.int64)}
            run = functools.partial(clocked, functools.partial(session.run, None, feed))
            if baseline is None:
                stats = summarize(time_adaptively(run, rule), entry["seconds"], rule)
            else:
                reference_run = functools.partial(clocked, functools.partial(baseline.run, None, feed))
                stats = ratio_figures(time_interleaved(run, reference_run, rule), entry["seconds"], rule)
            if threads == 1 and peaks:
                stats.update(roofline(stats["latency_ms"], entry.get("float_macs", entry.get("macs")),
                                      entry.get("int8_macs"), peaks))
            atol = model["check"].get("atol", CHECK_ATOL) if model.get("check") else CHECK_ATOL
            rows.append(make_row(model, device, RUNTIME_ORT, environment["env_onnxruntime"], threads, entry,
                                 stats, rule, environment, check_max_abs_diff=difference,
                                 check_ok=None if difference is None else difference <= atol,
                                 onnx_bytes=path.stat().st_size))
    return rows


def make_row(model: dict, device: str, runtime: str, runtime_version: str, threads: int, entry: dict,
             stats: dict, rule: TimingRule, environment: dict, **extra) -> dict:
    """One tidy measurement row; run identity and cost figures come from the manifest entry."""
    identity = {k: model.get(k) for k in ("run_id", "method", "backbone", "preset", "dataset", "fold", "seed")}
    costs = {k: v for k, v in entry.items() if k not in ("seconds", "frames")}
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **identity, "device": device, "runtime": runtime,
            "runtime_version": runtime_version, "threads": threads, "input_seconds": entry["seconds"],
            "input_frames": entry["frames"], **stats, **costs,
            **{k: model.get(k) for k in ("input_dim", "params", "nonzero_params", "size_bytes", "size_format")},
            **extra, **{f"rule_{k}": v for k, v in asdict(rule).items()},
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **environment}


def write_rows(rows: list[dict], device: str, path: Path) -> tuple[Path, Path]:
    """``path`` (.json: schema, device, rows) and the same rows as CSV beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "device": device, "rows": rows}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, path)
    table = path.with_suffix(".csv")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path, table


def run_probe(target: Path, device: str | None = None, threads: str = "1,all", seconds: str | None = None,
              rule: TimingRule = TimingRule(), out: Path | None = None, frames_per_second: float = 100.0,
              log=print) -> tuple[list[dict], Path]:
    """Measure every model of an export folder (or one .onnx file) and write the rows; returns them."""
    target = Path(target)
    tag, threads_list = device_tag(device), parse_threads(threads)
    durations = parse_seconds(seconds) if seconds else None
    if out is not None and Path(out).is_dir():  # found before the timing, not when the rows are written
        raise ProbeError(f"--out {out} is a folder: give the rows file to write, e.g. --out latency-pi4.json")
    if target.is_dir():
        folder, manifest = target, load_manifest(target)
    elif target.is_file():
        folder = target.parent
        manifest = single_model_manifest(target, durations or [2.0, 5.0, 10.0], frames_per_second)
    else:
        raise ProbeError(f"{target} does not exist: give the folder written by `bench export --out DIR`")
    environment, rows = probe_environment(), []
    gemms = {p: folder / "peak" / f"gemm-{p}.onnx" for p in ("fp32", "int8")}
    peaks = peak_gflops(gemms, 1) if all(g.exists() for g in gemms.values()) else None
    if peaks:
        log(f"peak GEMM rate at 1 thread: {peaks['fp32']:.0f} GFLOP/s fp32, {peaks['int8']:.0f} GFLOP/s int8")
    for number, model in enumerate(manifest["models"], 1):
        log(f"[{number}/{len(manifest['models'])}] {model['run_id']} {model.get('method', '')} "
            f"{model.get('backbone', '')}/{model.get('preset', '')}")
        rows += measure_model(folder, model, tag, threads_list, durations, rule, environment, peaks)
    bad = sorted({r["run_id"] for r in rows if r.get("check_ok") is False})
    if bad:
        log(f"warning: ONNX output differs from the output recorded at export beyond its tolerance for {', '.join(bad)}")
    path, table = write_rows(rows, tag, out or folder / f"latency-{tag}.json")
    log(f"rows: {path}  table: {table}")
    return rows, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="folder from `bench export --out DIR` (or one .onnx file)")
    parser.add_argument("--device", help="device tag for the rows (default: the host name)")
    parser.add_argument("--threads", default="1,all", help="intra-op thread counts (default: 1,all)")
    parser.add_argument("--seconds", help="input durations to time (default: all exported)")
    parser.add_argument("--max-seconds", type=float, default=TimingRule.max_seconds,
                        help="time cap per model, thread count and duration (default: %(default)s)")
    parser.add_argument("--target-rel-ci", type=float, default=TimingRule.target_rel_ci,
                        help="stop when the 95%% interval of the latency ratio to the reference (of the median "
                             "without one) is within this fraction (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="rows file (default: TARGET/latency-<device>.json)")
    parser.add_argument("--frames-per-second", type=float, default=100.0, help="for a bare .onnx file only")
    args = parser.parse_args(argv)
    try:
        check_rule(args.max_seconds, args.target_rel_ci)
        rule = TimingRule(max_seconds=args.max_seconds, target_rel_ci=args.target_rel_ci)
        run_probe(args.target, args.device, args.threads, args.seconds, rule, args.out, args.frames_per_second)
    except ProbeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
