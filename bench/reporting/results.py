"""Run records: one JSON file per finished run, written atomically, plus the tidy table rebuilt
from them (``runs.csv``). The records are the truth; the table can always be regenerated."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import pandas as pd

from bench.registry import BenchError
from bench.schema import ADDED_WITH_DEFAULTS, problems

log = logging.getLogger("bench")
SCHEMA_VERSION = 1
# What a record's run_id may be: it names the run's files (models/<run_id>.pt, an export's <run_id>.onnx),
# so a path there would read and write outside their folders
RUN_ID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def run_id(key: dict) -> str:
    """Stable id of a run from its identifying settings."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (usually 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class WriteError(BenchError, OSError):
    """A file that could not be written: one line for the CLI, an ``OSError`` for callers that recover
    (a read-only cache)."""

    def __str__(self) -> str:
        return self.strerror


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file.
    The file gets the umask's usual mode, not the temporary file's private 0600, so that a shared
    results folder or a served report stays readable. A failure is a :class:`WriteError` naming the
    file; the old file is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        # a file name that is not UTF-8 (named in a report's warnings) is written as \udcff, not a crash
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(error.errno, f"cannot write {path} ({error.strerror or error}): the old file is "
                                          f"left as it was; make it writable or choose another folder") from None
        raise


# The folders bench keeps under a results folder: records, deploy models, run claims, latency
# measurements, report tables and tune's trial tables.
RESULT_FOLDERS = ("records", "models", "claims", "latency", "tables", "tune")


def check_folders(root: Path, names: tuple[str, ...]) -> None:
    """A one-line error when one of ``root``'s folders ``names`` is a file (found before anything runs,
    not after training finished)."""
    for name in names:
        path = Path(root) / name
        if path.exists() and not path.is_dir():
            raise BenchError(f"{path} is a file where a folder belongs: move it away")


class RecordStore:
    """Records under ``<results_dir>/records/<run_id>.json`` and the table ``<results_dir>/runs.csv``."""

    def __init__(self, results_dir: Path):
        self.root = Path(results_dir)
        self.records_dir = self.root / "records"

    def check_writable(self) -> None:
        """Before anything runs: the records folder takes files and ``runs.csv`` can be replaced."""
        check_folders(self.root, RESULT_FOLDERS)
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.records_dir, prefix=".probe", delete=True)
            probe.close()
        except OSError as error:
            raise BenchError(f"results folder {self.root} is not writable ({error.strerror}): "
                             f"choose another with --results-dir") from None
        table = self.root / "runs.csv"
        if table.exists() and not table.is_file():
            raise BenchError(f"{table} is not a file, so the table cannot be written there: move it away")
        if table.is_file():  # replaced after every run: find out now whether it can be (immutable, read-only folder)
            try:
                atomic_write_text(table, table.read_text(errors="replace"))
            except OSError as error:
                raise BenchError(f"{table} cannot be replaced ({os.strerror(error.errno) if error.errno else error}), so no run "
                                 f"could be recorded in its table: make it writable or choose another --results-dir") from None

    def path(self, rid: str) -> Path:
        return self.records_dir / f"{rid}.json"

    def read(self, path: Path) -> tuple[dict | None, str | None]:
        """The record in ``path``, or None and why it is no valid record (``file: reason``)."""
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or UTF-8, a 5000-digit number
            return None, f"{path}: unreadable JSON ({str(error)[:200] or type(error).__name__})"
        if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
            version = record.get("schema_version") if isinstance(record, dict) else None
            return None, f"{path}: foreign record (schema_version {version!r}, expected {SCHEMA_VERSION})"
        if record.get("checksum") != checksum(record):
            return None, f"{path}: checksum mismatch (file modified or corrupted)"
        record = {**ADDED_WITH_DEFAULTS, **record}
        # a checksum anyone can recompute proves no origin: the fields must still be what the schema says
        found = problems(record, undeclared=False, missing=False)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            return None, f"{path}: not a record of the declared schema: {found[0]}{more}"
        rid = record.get("run_id")
        if not isinstance(rid, str) or not RUN_ID_NAME.fullmatch(rid):
            return None, f"{path}: run_id {str(rid)[:80]!r} is not a run id (letters, digits, '.', '_', '-')"
        return record, None

    def has(self, rid: str) -> bool:
        """Whether run ``rid`` has a valid record. A file that is none (truncated, foreign, edited) is
        named in a warning and does not count: the run is executed again and its record replaces it."""
        path = self.path(rid)
        if not path.exists():
            return False
        record, problem = self.read(path)
        if record is not None and record.get("run_id") != rid:
            problem = f"{path}: holds run {record.get('run_id')!r}, not {rid!r}"
        if problem:
            log.warning("%s; running %s again", problem, rid)
        return problem is None

    def write(self, record: dict) -> Path:
        record = dict(record, schema_version=SCHEMA_VERSION)
        record["checksum"] = checksum(record)
        path = self.path(record["run_id"])
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str))
        return path

    def load(self) -> tuple[list[dict], list[str]]:
        """All valid records, one per run, and a list of problems (``file: reason``) for corrupt or
        foreign ones and for copies of a record (``X (copy).json``), which are left out."""
        by_run, problems = {}, []
        paths = sorted(self.records_dir.glob("*.json")) if self.records_dir.exists() else []
        for path in paths:
            record, problem = self.read(path)
            if problem:
                problems.append(problem)
                continue
            kept = by_run.setdefault(record["run_id"], (path, record))[0]
            if kept != path:
                if path.stem == record["run_id"]:  # the record under its own name is the one kept
                    by_run[record["run_id"]], (kept, path) = (path, record), (path, kept)
                problems.append(f"{path}: a second record of run {record['run_id']} (kept {kept.name}); "
                                f"delete the copy")
        return [by_run[rid][1] for rid in sorted(by_run, key=lambda rid: by_run[rid][0])], problems

    def table(self) -> pd.DataFrame:
        records, _ = self.load()
        rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in records]
        frame = pd.DataFrame(rows)
        return frame.sort_values(["finished_at", "run_id"]).reset_index(drop=True) if len(frame) else frame

    def write_table(self) -> Path:
        """Rebuild ``runs.csv`` from the records (atomic; concurrent writers produce the same file)."""
        path = self.root / "runs.csv"
        atomic_write_text(path, self.table().to_csv(index=False))
        return path
