"""`--shard K/N` splits a grid deterministically: the shards of one grid are disjoint, cover it
exactly and differ in size by at most one; `--defer-latency` leaves latency to `bench measure`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bench.cli.main import main
from bench.execution.grid import make_grid
from bench.reporting.results import RecordStore
from bench.execution.workspace import Workspace

GRID = {"methods": ["baseline"], "datasets": ["toy"], "presets": ["tiny"], "folds": [1, 2, 3], "seeds": [0],
        "train": {"epochs": 1}}
ARGS = ["run", "--methods", "baseline", "--datasets", "toy", "--presets", "tiny", "--folds", "1-3", "--seeds", "0",
        "--epochs", "1", "--quiet"]


@pytest.fixture(autouse=True)
def test_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_two_shards_cover_the_grid_exactly_once(tmp_path, cache_dir):
    expected = [spec.run_id for spec in make_grid(GRID).specs(Workspace(cache_dir, progress=False))]
    recorded = {}
    for shard, extra in (("1/2", ()), ("2/2", ("--defer-latency",))):
        result = invoke(*ARGS, "--shard", shard, *extra, "--results-dir", str(tmp_path / shard[0]))
        assert result.exit_code == 0, result.output
        records, problems = RecordStore(tmp_path / shard[0]).load()
        assert not problems
        recorded[shard] = records
    first, second = ({r["run_id"] for r in recorded[s]} for s in ("1/2", "2/2"))
    assert first == {expected[0], expected[2]} and second == {expected[1]}  # every 2nd run, in grid order
    assert all(r["latency_ms"] > 0 and "latency_deferred" not in r for r in recorded["1/2"])
    assert all(r["latency_deferred"] is True and "latency_ms" not in r for r in recorded["2/2"])


def test_same_shard_of_a_recorded_grid_runs_nothing_again(tmp_path):
    results = str(tmp_path / "results")
    assert invoke(*ARGS, "--shard", "3/3", "--defer-latency", "--results-dir", results).exit_code == 0
    record, = (tmp_path / "results" / "records").glob("*.json")
    before = record.read_bytes()
    again = invoke(*ARGS, "--shard", "3/3", "--defer-latency", "--results-dir", results)
    assert again.exit_code == 0 and record.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (("--shard", "3/2"), "bad --shard '3/2': use K/N with 1 <= K <= N"),
    (("--shard", "two"), "bad --shard 'two'"),
    (("--shard", "0/2"), "bad --shard '0/2'"),
    (("--shard", "1/2", "--executor", "submitit"), "--shard is for the local executor"),
    (("--executor", "submitit", "--jobs", "0"), "--jobs must be >= 1, got 0"),
])
def test_bad_scale_options_are_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, [*ARGS, "--results-dir", str(tmp_path / "results"), *args])
    assert result.exit_code == 2 and f"error: {message}" in result.output, result.output
    assert not (tmp_path / "results").exists()
