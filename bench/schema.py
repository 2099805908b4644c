"""The run record's declared schema: every field a record may hold, its JSON type and what it means.

A record is one JSON object per run (:mod:`bench.reporting.results`). Its fields come from the harness, declared
here, and from the methods it composes, each declaring its own on :attr:`bench.method.Method.record_fields`.
:func:`problems` checks a record against both, and :class:`bench.reporting.results.RecordStore` refuses to write one
that does not match; :func:`merge` builds a record from its parts and refuses two parts that set the
same field, so no value is silently replaced by whichever part comes last. ``bench schema`` prints the
reference (``docs/records.md`` is its output).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from bench.data.features import ADDED_LATER as FEATURES_ADDED_LATER, FeatureConfig
from bench.execution.env import _PACKAGES
from bench.registry import METHODS, BenchError, load_builtin_plugins
from bench.training.config import TrainConfig

# JSON types a field's value may have (bool is not a number here: JSON tells them apart)
_KINDS = {"str": (str,), "int": (int,), "number": (int, float), "fraction": (int, float), "bool": (bool,),
          "list": (list,), "dict": (dict,), "any": (str, int, float, bool, list, dict)}


@dataclass(frozen=True)
class Field:
    """One record field. ``when``: ``always`` (every record, failed runs too), ``ok`` (every finished
    run) or ``optional`` (only where it applies, e.g. an int8 model's ONNX Runtime figures)."""

    kind: str
    doc: str
    nullable: bool = False
    when: str = "ok"

    def accepts(self, value) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) and self.kind not in ("bool", "any"):
            return False
        if self.kind == "fraction":  # a score: NaN or 1e308 in an edited record would top the leaderboard
            return isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1
        return isinstance(value, _KINDS[self.kind])


def _always(kind: str, doc: str, nullable: bool = False) -> Field:
    return Field(kind, doc, nullable, "always")


def _optional(kind: str, doc: str, nullable: bool = False) -> Field:
    return Field(kind, doc, nullable, "optional")


IDENTITY = {
    "run_id": _always("str", "16 hex digits: a hash of the run's identifying settings (the fields of this section)"),
    "method": _always("str", "the method, or a composition such as `prune+quant`"),
    "method_params": _always("dict", "each component's parameters, resolved with their defaults"),
    "backbone": _always("str", "the architecture's registered name"),
    "preset": _always("str", "the deploy budget: the preset whose plain model the run is compared with"),
    "architecture": _always("dict", "the preset's architecture settings (editing a preset changes the run's identity)"),
    "teacher_preset": _always("str", "the model a method starts from or distils (`large`), if it uses one", nullable=True),
    "teacher_architecture": _always("dict", "that model's architecture settings", nullable=True),
    "dataset": _always("str", "the corpus's registered name"),
    "dataset_params": _always("dict", "the corpus's parameters (root, protocol, seed, ...)"),
    "corpus_fingerprint": _always("str", "a hash of the corpus's file list, labels and folds"),
    "fold": _always("int", "the test fold (the unit of evidence)"),
    "seed": _always("int", "the training seed"),
    "recipe": _always("dict", "the training settings the deploy model's preset trains with (recipe and overrides)"),
    "teacher_recipe": _always("dict", "the training settings of the teacher or large model", nullable=True),
}

OUTCOME = {
    "status": _always("str", "`ok`, or `failed` for a run a method declared impossible (its reason beside it)"),
    "status_reason": _optional("str", "why a failed run failed"),
    "wall_seconds": _always("number", "the run's wall time, from its data to its record"),
    "finished_at": _always("str", "UTC time the record was made (ISO 8601)"),
    "worker": _always("str", "the process that ran it (host:pid)"),
    "schema_version": _always("int", "the record format (bench.reporting.results.SCHEMA_VERSION)"),
    "checksum": _always("str", "SHA-256 of the other fields: an edited record is refused"),
}

SCORES = {
    "wa": Field("fraction", "test weighted accuracy (accuracy), of the model that ships (an int8 one in ONNX Runtime)"),
    "ua": Field("fraction", "test unweighted accuracy (macro recall), likewise"),
    "macro_f1": Field("fraction", "test macro F1 over all classes"),
    "weighted_f1": Field("fraction", "test F1 weighted by class support"),
    "confusion": Field("list", "test confusion matrix, rows true class, columns predicted"),
    "classes": Field("list", "class names in the matrix's order"),
    "headline_metric": Field("str", "the corpus's headline metric (`ua` for most; DAIC-WOZ's `f1_depressed`)"),
    "dataset_metrics": Field("list", "the metrics the corpus declares, each a field of the record"),
    "ua_torch": Field("fraction", "test UA of the PyTorch model (equal to `ua` unless the method ships its own ONNX graph, as quant does)"),
    "accuracy_runtime": Field("str", "where `ua` was measured: `pytorch`, or `onnxruntime int8` / `onnxruntime` for an ONNX graph the method ships (int8 or not)"),
    "val_ua": Field("fraction", "validation UA of the deploy model (null after a final fit on the validation speakers)", True),
    "val_wa": Field("number", "validation WA, likewise", True),
}

DATA = {
    "n_train": Field("int", "training utterances of the fold"),
    "n_val": Field("int", "validation utterances (speakers held out of the training split)"),
    "n_test": Field("int", "test utterances (the fold's test speakers)"),
    "n_fit": Field("int", "utterances the deploy model was trained on (train + val after a final fit)"),
    "skipped_files": Field("int", "corpus files left out (unreadable or unlabeled)"),
    "skipped": Field("list", "those files and why"),
    "input_dim": Field("int", "feature dimension per frame"),
}

COSTS = {
    "params": Field("int", "parameters of the deploy model"),
    "nonzero_params": Field("int", "its nonzero parameters (what unstructured pruning reduces)"),
    "train_params": Field("int", "the most parameters trained at once (an HRF model before merging)"),
    "macs": Field("int", "multiply-accumulates for `input_seconds` of audio (float + int8)", True),
    "flops": Field("int", "2 x macs", True),
    "float_macs": Field("int", "the float part of macs", True),
    "int8_macs": Field("int", "the int8 part of macs (0 unless an int8 graph ships)", True),
    "macs_error": _optional("str", "why MACs could not be counted"),
    "input_seconds": Field("number", "the utterance length costs and latency are measured at"),
    "input_frames": Field("int", "its frames"),
    "peak_memory_bytes": Field("int", "peak activation memory of one forward pass", True),
    "peak_memory_method": _optional("str", "how peak memory was measured"),
    "peak_memory_error": _optional("str", "why it could not be"),
    "size_bytes": Field("int", "size of the shipped model file"),
    "size_format": Field("str", "its format (`float32 state_dict`; `int8 onnx` or `onnx` for a graph the method ships)"),
}

LATENCY = {
    "latency_ms": _optional("number", "median wall latency of one utterance, 1 thread"),
    "latency_cpu_ms": _optional("number", "median process CPU time of one utterance"),
    "latency_mean_ms": _optional("number", "mean latency"),
    "latency_min_ms": _optional("number", "fastest latency"),
    "latency_p5_ms": _optional("number", "5th percentile"),
    "latency_p90_ms": _optional("number", "90th percentile"),
    "latency_iqr_ms": _optional("number", "interquartile range"),
    "latency_rel_ci": _optional("number", "relative half-width of the median's interval"),
    "latency_samples": _optional("int", "timed runs"),
    "latency_stable": _optional("bool", "whether the timing rule's precision was reached"),
    "latency_ratio": _optional("number", "latency over the plain lightweight model's, timed interleaved (the robust figure)"),
    "latency_ratio_ci_low": _optional("number", "its interval's low end"),
    "latency_ratio_ci_high": _optional("number", "its interval's high end"),
    "latency_ratio_pairs": _optional("int", "interleaved pairs behind the ratio"),
    "reference_latency_ms": _optional("number", "the reference model's median latency in the same timing"),
    "latency_threads": _optional("int", "threads used"),
    "latency_runtime": _optional("str", "the runtime timed (eager PyTorch or ONNX Runtime)"),
    "latency_deferred": _optional("bool", "latency left to `bench measure` (`--defer-latency`)"),
    "rtf": _optional("number", "real-time factor: latency over the audio's duration"),
    "roofline_ratio": _optional("number", "latency over the time its FLOPs take at this core's peak GEMM rate"),
    "peak_gflops": _optional("number", "that peak for the model's float/int8 mix"),
    "peak_gflops_fp32": _optional("number", "this core's fp32 GEMM peak (GFLOP/s)"),
    "peak_gflops_int8": _optional("number", "this core's int8 GEMM peak (GFLOP/s)"),
}

ONNX = {
    "onnx_status": Field("str", "`ok`, `not exported` or `failed: <why>` for the shipped ONNX model"),
    "onnx_prediction_mismatch": _optional("number", "share of test utterances whose ONNX prediction differs from PyTorch's"),
    "ua_onnx": _optional("number", "test UA in ONNX Runtime"),
}

TRAINING = {
    "train_device": Field("str", "where training ran (`cpu`, `cuda`)"),
    "train_amp": Field("bool", "bf16 autocast while training (`--amp`)"),
    "train_precision": Field("str", "`fp32` or `bf16-autocast`; a cached plain model is reused only at the same precision"),
    "best_epoch": Field("int", "epoch of the best validation UA", True),
    "deployed_epoch": Field("int", "epoch whose weights are deployed", True),
    "history": Field("list", "per-epoch loss and validation scores of the training behind the deploy model"),
    "fit_seconds": Field("number", "the method's own training time"),
    "reused_fit_seconds": Field("number", "training time of cached models it built on"),
    "fit_flops": Field("int", "estimated FLOPs of the method's own training: 3 x forward FLOPs of the model that trains "
                    "(plus a teacher's forward) at the training split's mean length x utterances x epochs "
                    "(null: not countable)", True),
    "reused_fit_flops": Field("int", "the same for the cached models it built on (null: cached before they were counted)",
                           True),
    "train_peak_memory_bytes": Field("int", "peak memory of the method's own training above what the process held "
                                            "before it (null: trained by a cached model only, or not measurable)", True),
    "train_peak_memory_how": Field("str", "`process peak RSS above its start` (Linux CPU) or `cuda allocator peak`",
                                   True),
    "resumed_from_epoch": _optional("int", "the checkpoint an interrupted training resumed from"),
}

# Where the run's wall time went (``bench.execution.context.PhaseTimes``): they add up to ``wall_seconds``.
TIMING = {
    "seconds_data": Field("number", "loading, feature extraction (when not cached) and normalization of the fold"),
    "seconds_training": Field("number", "training steps of every model trained in this run (cached plain models "
                                        "trained here included)"),
    "seconds_validation": Field("number", "the per-epoch validation of those trainings"),
    "seconds_methods": Field("number", "the methods' other work: loading cached models, pruning scores, folding, "
                                       "calibration, int8 conversion"),
    "seconds_scoring": Field("number", "test and validation scores of the deploy model in PyTorch"),
    "seconds_costs": Field("number", "counting parameters, MACs, FLOPs, size and peak memory"),
    "seconds_latency": Field("number", "the interleaved latency timing (0 with `--defer-latency`)"),
    "seconds_onnx": Field("number", "ONNX export of the shipped model and its check in ONNX Runtime"),
    "seconds_other": Field("number", "the rest of `wall_seconds` (record assembly, model building)"),
}

# Fields whose names follow a pattern: (regular expression, field)
# Fields added to schema version 1 after records were written without them, with the value those records
# ran with: the reader fills them in (the stored file and its checksum stay as they are).
ADDED_WITH_DEFAULTS = {f"features_{name}": value for name, value in FEATURES_ADDED_LATER.items()}

PATTERNS = [
    (r"[a-z0-9]+_model_cache", _optional("str", "`hit` or `miss`: whether the plain model of that preset was reused")),
    (r"[a-z0-9]+_model_git_commit", _optional("str", "the commit that trained that cached plain model")),
    (r"(f1|recall)_.+", _optional("number", "a corpus-declared per-class test metric (e.g. `f1_depressed`)")),
    (r"[a-z0-9_]+_onnx", _optional("number", "a corpus-declared headline metric in ONNX Runtime")),
]


def _dataclass_fields(prefix: str, cls, doc: str) -> dict[str, Field]:
    return {f"{prefix}{f.name}": _always("any", doc.format(name=f.name), nullable=True) for f in fields(cls)}


def harness_fields() -> dict[str, Field]:
    """Every named field the harness writes."""
    environment = {
        "env_host": "host name", "env_cpu": "CPU model", "env_cores": "CPU cores", "env_torch_threads": "torch threads",
        "env_python": "Python version", "env_platform": "OS and kernel", "env_cuda": "GPU name, if any",
        "env_git_commit": "the project's commit (`+dirty` with uncommitted changes)",
        "env_allocator": "the allocator setting timings were taken with",
    }
    env = {k: _always("any", doc, nullable=True) for k, doc in environment.items()}
    env.update({f"env_{p.replace('-', '_')}": _always("str", f"{p} version", nullable=True) for p in _PACKAGES})
    return {**IDENTITY, **OUTCOME,
            **_dataclass_fields("train_", TrainConfig, "training setting `{name}` as asked (null: the preset's recipe)"),
            **_dataclass_fields("features_", FeatureConfig, "front-end setting `{name}`"),
            **SCORES, **DATA, **COSTS, **LATENCY, **ONNX, **TRAINING, **TIMING, **env}


def method_fields(method: str) -> dict[str, str]:
    """The fields the components of ``method`` (``a+b``) declare, name -> description."""
    declared = {}
    for component in str(method).split("+"):
        if component in METHODS.names():
            declared.update(METHODS.get(component).obj.record_fields)
    return declared


def _pattern_field(name: str) -> Field | None:
    return next((f for pattern, f in PATTERNS if re.fullmatch(pattern, name)), None)


def problems(record: dict, undeclared: bool = True, missing: bool = True) -> list[str]:
    """What in ``record`` does not match the schema: undeclared fields, missing fields, wrong types.
    Reading checks only the types (``undeclared=False, missing=False``): it tolerates the fields of a
    plug-in that is not installed and records written before a field existed."""
    harness = harness_fields()
    declared = method_fields(record.get("method", "")) if undeclared else {}
    found = []
    for name, value in record.items():
        spec = harness.get(name) or _pattern_field(name)
        if spec is None:
            if undeclared and name not in declared:
                found.append(f"field {name!r} is not declared (bench/schema.py, or the method's record_fields)")
        elif not spec.accepts(value):
            kind = "a number in [0, 1]" if spec.kind == "fraction" else spec.kind
            found.append(f"field {name!r} holds {type(value).__name__} {value!r:.40}, not {kind}"
                         + ("" if not spec.nullable else " or null"))
    finished = record.get("status") == "ok"
    for name, spec in harness.items() if missing else ():
        if name not in record and (spec.when == "always" or spec.when == "ok" and finished):
            found.append(f"field {name!r} is missing")
    return found


def check(record: dict) -> None:
    """BenchError naming what in ``record`` does not match the schema (a bug in the harness or a plug-in:
    nothing is written)."""
    found = problems(record)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise BenchError(f"run {record.get('run_id')}: its record does not match the declared schema "
                         f"(bench/schema.py): {'; '.join(found[:3])}{more}")


def merge(*parts: dict) -> dict:
    """One dict of ``parts``; a field set by two parts is a bug in whoever assembles the record."""
    merged = {}
    for part in parts:
        twice = merged.keys() & part.keys()
        if twice:
            raise BenchError(f"record fields set twice while assembling a record: {', '.join(sorted(twice))}")
        merged.update(part)
    return merged


def reference() -> str:
    """The schema as Markdown (``bench schema``; ``docs/records.md``)."""
    load_builtin_plugins()
    sections = [("Identity: which run it is", IDENTITY), ("Outcome", OUTCOME),
                ("Test and validation scores", SCORES), ("Data", DATA), ("Costs of the deploy model", COSTS),
                ("Latency (in-run, 1 thread)", LATENCY), ("ONNX", ONNX), ("Training", TRAINING),
                ("Where the wall time went", TIMING)]
    harness = harness_fields()
    named = {n for _, section in sections for n in section}
    rest = {n: f for n, f in harness.items() if n not in named}
    lines = ["# Run records", "",
             "One JSON file per run under `<results>/records/<run_id>.json`; `runs.csv` holds their flat fields.",
             "Generated by `bench schema` from `bench/schema.py` and the methods' `record_fields`.",
             "`when`: always (failed runs too), ok (every finished run), optional (where it applies). "
             "`fraction`: a finite number in [0, 1]; a record holding anything else there is not read.", ""]

    def table(title: str, entries: dict[str, Field]) -> None:
        lines.extend([f"## {title}", "", "| field | type | when | meaning |", "|---|---|---|---|"])
        for name, f in entries.items():
            kind = f.kind + (" or null" if f.nullable else "")
            lines.append(f"| `{name}` | {kind} | {f.when} | {f.doc} |")
        lines.append("")

    for title, section in sections:
        table(title, section)
    table("Settings and environment", rest)
    table("Fields named by pattern", {pattern: f for pattern, f in PATTERNS})
    lines.extend(["## Fields the methods declare", ""])
    for name in METHODS.names():
        declared = METHODS.get(name).obj.record_fields
        if declared:
            lines.extend([f"### {name}", "", "| field | meaning |", "|---|---|"])
            lines.extend(f"| `{field}` | {doc} |" for field, doc in declared.items())
            lines.append("")
    return "\n".join(lines)
