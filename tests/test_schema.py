"""The run record's declared schema (bench.schema): every record the harness writes matches it, a
method cannot record a field it does not declare, parts of a record cannot overwrite each other, and
docs/records.md is what ``bench schema`` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import schema
from bench.cli.main import main
from bench.registry import BenchError, load_builtin_plugins
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from methods.hrf import HRF

load_builtin_plugins()
DOCS = Path(__file__).resolve().parents[1] / "docs" / "records.md"


def test_a_recorded_run_matches_the_schema(recorded_run):
    record, = [json.loads(p.read_text()) for p in (recorded_run / "records").glob("*.json")]
    assert schema.problems(record) == []
    assert {n for n, f in schema.harness_fields().items() if f.when != "optional"} <= set(record)


def test_what_does_not_match_is_named(recorded_run):
    record, = [json.loads(p.read_text()) for p in (recorded_run / "records").glob("*.json")]
    broken = {k: v for k, v in record.items() if k != "macro_f1"} | {"ua": "high", "fold": True, "mystery": 1}
    found = schema.problems(broken)
    assert "field 'macro_f1' is missing" in found
    assert any(p.startswith("field 'mystery' is not declared") for p in found)
    assert any("'ua' holds str" in p for p in found) and any("'fold' holds bool" in p for p in found)
    with pytest.raises(BenchError, match="does not match the declared schema"):
        schema.check(broken)
    # a method's declared fields belong to records of that method (and its compositions) only
    hrf_field = dict(record, hrf_expansion_ratio=4)
    assert any("hrf_expansion_ratio" in p for p in schema.problems(hrf_field))
    assert schema.problems(dict(hrf_field, method="hrf+quant")) == []


def test_parts_of_a_record_cannot_overwrite_each_other():
    assert schema.merge({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(BenchError, match="set twice.*int8_macs"):
        schema.merge({"int8_macs": 0, "a": 1}, {"int8_macs": 5})


def test_a_method_recording_an_undeclared_field_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(HRF, "record_fields", {k: v for k, v in HRF.record_fields.items() if k != "hrf_init"})
    spec = RunSpec(method="hrf", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=1))
    with pytest.raises(BenchError, match="method hrf records fields its record_fields do not declare: hrf_init"):
        execute(spec, Workspace(tmp_path, progress=False, defer_latency=True))


def test_records_reference_is_what_bench_schema_prints():
    printed = CliRunner().invoke(main, ["schema"], catch_exceptions=False)
    assert printed.exit_code == 0 and "| `latency_ratio` |" in printed.output and "### hrf" in printed.output
    assert DOCS.read_text() == printed.output, "docs/records.md is stale: run `bench schema > docs/records.md`"
