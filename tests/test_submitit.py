"""`--executor submitit` runs the grid as a job array through submitit; here its local backend
starts real job processes, each running one shard through the same claim -> record path."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from bench.cli.main import main
from bench.execution.grid import make_grid
from bench.reporting.results import RecordStore
from bench.execution.workspace import Workspace

pytest.importorskip("submitit", reason="the [slurm] extra is not installed (pip install -e '.[slurm]'; .ci/run does)")

GRID = {"methods": ["baseline"], "datasets": ["toy"], "presets": ["tiny"], "folds": [1, 2, 3], "seeds": [0],
        "train": {"epochs": 1}}


@pytest.mark.slow  # several real processes; still run by default
def test_submitit_local_job_array_completes_a_small_grid(tmp_path, bench_env, monkeypatch):
    for name in ("PYTHONPATH", "HRF_BENCH_CACHE", "OMP_NUM_THREADS"):  # inherited by the job processes
        monkeypatch.setenv(name, bench_env[name])
    results = tmp_path / "results"
    result = CliRunner().invoke(main, [
        "run", "--methods", "baseline", "--datasets", "toy", "--presets", "tiny", "--folds", "1-3", "--seeds", "0",
        "--epochs", "1", "--quiet", "--defer-latency", "--results-dir", str(results),
        "--executor", "submitit", "--jobs", "2", "--time-min", "10"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output  # the summary of the finished grid

    records, problems = RecordStore(results).load()
    assert not problems
    specs = make_grid(GRID).specs(Workspace(bench_env["HRF_BENCH_CACHE"], progress=False))
    assert sorted(r["run_id"] for r in records) == sorted(s.run_id for s in specs)
    workers = {r["worker"] for r in records}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)  # one process per job
    logs = list((results / "submitit").rglob("*_log.err"))
    assert len(logs) == 2 and all("recorded run" in log.read_text() for log in logs)
