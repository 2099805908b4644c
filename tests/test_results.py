"""Run records: atomic writes, integrity checks, the tidy table."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from bench.reporting import results
from bench.reporting.results import RecordStore, atomic_write_text


def record(rid: str, ua: float = 0.5) -> dict:
    return {"run_id": rid, "method": "baseline", "ua": ua, "finished_at": "2026-01-01T00:00:00+00:00",
            "confusion": [[1, 0], [0, 1]]}


def test_interrupted_write_leaves_no_half_record(tmp_path, monkeypatch):
    store = RecordStore(tmp_path)
    store.write(record("r1", 0.5))
    before = store.path("r1").read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt  # killed between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write(record("r1", 0.9))
    with pytest.raises(KeyboardInterrupt):
        store.write(record("r2", 0.9))
    monkeypatch.undo()
    assert store.path("r1").read_bytes() == before and not store.path("r2").exists()
    assert [p.name for p in store.records_dir.iterdir()] == ["r1.json"]  # no temporary files left


def test_table_has_one_row_per_record_without_nested_fields(tmp_path):
    store = RecordStore(tmp_path)
    for i in range(3):
        store.write(record(f"r{i}", 0.1 * i))
    table = pd.read_csv(store.write_table())
    assert sorted(table["run_id"]) == ["r0", "r1", "r2"] and "confusion" not in table.columns
    assert set(table["schema_version"]) == {results.SCHEMA_VERSION}


def test_corrupt_and_foreign_records_are_named(tmp_path):
    store = RecordStore(tmp_path)
    store.write(record("good"))
    store.write(record("edited"))
    edited = json.loads(store.path("edited").read_text())
    edited["ua"] = 0.99
    store.path("edited").write_text(json.dumps(edited))
    store.path("broken").write_text('{"run_id": "bro')
    foreign = dict(record("old"), schema_version=0)
    store.path("old").write_text(json.dumps(foreign))
    records, problems = store.load()
    assert [r["run_id"] for r in records] == ["good"]
    text = "\n".join(problems)
    for name, reason in (("edited.json", "checksum"), ("broken.json", "unreadable"), ("old.json", "foreign")):
        assert name in text and reason in text


def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and len(list(path.parent.iterdir())) == 1


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_generated_files_get_the_umasks_mode_not_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        store = RecordStore(tmp_path)
        written = [store.write(record("r1")), store.write_table()]
        atomic_write_text(tmp_path / "reports" / "index.html", "<html></html>")
    finally:
        os.umask(old)
    for path in [*written, tmp_path / "reports" / "index.html"]:
        assert path.stat().st_mode & 0o777 == mode, path


def test_a_copied_record_counts_once_and_is_named(tmp_path):
    store = RecordStore(tmp_path)
    store.write(record("r1"))
    store.write(record("r2"))
    copy = store.records_dir / "r1 (copy).json"
    copy.write_bytes(store.path("r1").read_bytes())
    records, problems = store.load()
    assert sorted(r["run_id"] for r in records) == ["r1", "r2"]
    assert problems == [f"{copy}: a second record of run r1 (kept r1.json); delete the copy"]
    assert len(store.table()) == 2


def test_a_damaged_record_does_not_count_as_recorded(tmp_path, caplog):
    store = RecordStore(tmp_path)
    store.write(record("r1"))
    assert store.has("r1") and not store.has("r2")
    store.path("r1").write_text(store.path("r1").read_text()[:50])
    assert not store.has("r1") and f"{store.path('r1')}: unreadable JSON" in caplog.text
    store.write(record("r1"))
    store.path("r2").write_bytes(store.path("r1").read_bytes())  # another run's record under this name
    assert not store.has("r2") and "holds run 'r1', not 'r2'" in caplog.text
