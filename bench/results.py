"""Run records: one JSON file per finished run, written atomically, plus the tidy table rebuilt
from them (``runs.csv``). The records are the truth; the table can always be regenerated."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from bench.registry import BenchError

SCHEMA_VERSION = 1


def run_id(key: dict) -> str:
    """Stable id of a run from its identifying settings."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RecordStore:
    """Records under ``<results_dir>/records/<run_id>.json`` and the table ``<results_dir>/runs.csv``."""

    def __init__(self, results_dir: Path):
        self.root = Path(results_dir)
        self.records_dir = self.root / "records"

    def check_writable(self) -> None:
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.records_dir, prefix=".probe", delete=True)
            probe.close()
        except OSError as error:
            raise BenchError(f"results folder {self.root} is not writable ({error.strerror}): "
                             f"choose another with --results-dir") from None

    def path(self, rid: str) -> Path:
        return self.records_dir / f"{rid}.json"

    def has(self, rid: str) -> bool:
        return self.path(rid).exists()

    def write(self, record: dict) -> Path:
        record = dict(record, schema_version=SCHEMA_VERSION)
        record["checksum"] = checksum(record)
        path = self.path(record["run_id"])
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str))
        return path

    def load(self) -> tuple[list[dict], list[str]]:
        """All valid records and a list of problems (``file: reason``) for corrupt or foreign ones."""
        records, problems = [], []
        for path in sorted(self.records_dir.glob("*.json")) if self.records_dir.exists() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                problems.append(f"{path}: unreadable JSON ({error})")
                continue
            if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
                version = record.get("schema_version") if isinstance(record, dict) else None
                problems.append(f"{path}: foreign record (schema_version {version!r}, expected {SCHEMA_VERSION})")
            elif record.get("checksum") != checksum(record):
                problems.append(f"{path}: checksum mismatch (file modified or corrupted)")
            else:
                records.append(record)
        return records, problems

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
