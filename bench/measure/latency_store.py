"""Latency measured outside a run: ``<results>/latency/<device>/<run_id>.json`` per device and run, the
tidy ``latency.csv`` built from them, and the checks on rows a device's probe sends back."""

from __future__ import annotations

import json
import logging
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from bench.measure import probe
from bench.registry import BenchError
from bench.reporting.results import atomic_write_text

log = logging.getLogger("bench")
class LatencyStore:
    """Rows under ``<results>/latency/<device>-<run_id>.json``; the table ``<results>/latency.csv``."""

    def __init__(self, results_dir: Path):
        self.root = Path(results_dir)
        self.folder = self.root / "latency"

    def path(self, device: str, run_id: str) -> Path:
        return self.folder / f"{device}-{run_id}.json"

    def rows(self, device: str, run_id: str) -> list[dict]:
        """The rows stored for ``device`` and ``run_id``; a damaged file is a one-line error (it holds
        measurements: it is neither trusted nor replaced)."""
        path = self.path(device, run_id)
        if not path.exists():
            return []
        document, problem = read_document(path)
        if problem is None:
            problem = next((f"row {n} {p}" for n, p in ((n, row_problem(r)) for n, r in enumerate(document["rows"], 1))
                            if p), None)
        if problem:
            raise BenchError(f"{path} {problem}: move it away (its rows are measured again) and run again")
        return document["rows"]

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
            document, problem = read_document(path)
            if problem is None:
                rows += document["rows"]
            else:
                log.warning("skipped %s: %s", path, problem)
        frame = pd.DataFrame(rows)
        if len(frame):
            frame = frame.sort_values(["device", "run_id", "runtime", "threads", "input_seconds"])
        atomic_write_text(self.root / "latency.csv", frame.to_csv(index=False))
        return self.root / "latency.csv"


def read_document(path: Path) -> tuple[dict | None, str | None]:
    """A stored latency file (``latency/<device>-<run_id>.json``), or None and what is wrong with it."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or UTF-8
        return None, f"is unreadable ({str(error)[:120] or type(error).__name__})"
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        return None, "is not a latency file of hrf-bench"
    if document.get("schema_version") != probe.SCHEMA_VERSION:
        return None, f"has latency schema version {document.get('schema_version')!r}"
    return document, None


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
    except (OSError, ValueError, RecursionError, pd.errors.ParserError) as error:
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
