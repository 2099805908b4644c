"""Concurrent workers: `bench run` processes on one grid and results folder share its runs through
claims, record each run exactly once, wait for a run another worker holds, and take it over when
that worker dies; a plain model needed by two runs is trained once."""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench.execution.grid import make_grid
from bench.reporting.results import RecordStore
from bench.execution.workspace import Workspace

GRID = {"methods": ["baseline", "quant"], "datasets": ["toy"], "presets": ["tiny"],
        "folds": [1, 2, 3], "seeds": [0], "train": {"epochs": 4}}
ARGS = ["--methods", "baseline,quant", "--datasets", "toy", "--presets", "tiny", "--folds", "1-3",
        "--seeds", "0", "--epochs", "4", "--quiet", "--defer-latency"]

# Holds the claim on one run until killed, like a worker busy with it.
HOLD = """
import sys, time
from bench.execution.claims import claim
from bench.reporting.results import RecordStore
with claim(RecordStore(sys.argv[1]), sys.argv[2]) as held:
    print("held" if held else "busy", flush=True)
    time.sleep(600)
"""


def wait_until(condition, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow  # several real processes; still run by default
def test_two_workers_share_a_grid_each_run_recorded_once_and_a_dead_holders_run_taken_over(
        tmp_path, bench_env):
    results = tmp_path / "results"
    specs = make_grid(GRID).specs(Workspace(tmp_path / "cache", progress=False))
    expected = {s.run_id for s in specs}
    held = specs[-1].run_id  # quant, fold 3

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(results), held], env=bench_env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [subprocess.Popen([sys.executable, "-m", "bench.cli.main", "run", *ARGS, "--results-dir", str(results)],
                                env=bench_env, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    try:
        wait_until(lambda: all("held by other workers" in log.read_text() for log in logs)
                   and len(list((results / "records").glob("*.json"))) == len(expected) - 1,
                   "both workers to record the free runs and wait for the held one")
        assert not RecordStore(results).has(held)
        assert all(f":{holder.pid} since" in log.read_text() for log in logs)  # the message names the holder
        assert all(worker.poll() is None for worker in workers)  # still waiting, not given up
        holder.send_signal(signal.SIGKILL)  # the holder dies without releasing anything
        for worker in workers:
            assert worker.wait(timeout=240) == 0, [log.read_text() for log in logs]
    finally:
        for process in (holder, *workers):
            process.kill()

    recorded = collections.Counter()
    recorded_by = {}
    for log, worker in zip(logs, workers):
        for rid in re.findall(r"recorded run ([0-9a-f]{16})", log.read_text()):
            recorded[rid] += 1
            recorded_by[rid] = worker.pid
    assert set(recorded) == expected and set(recorded.values()) == {1}, recorded  # each run executed once
    records, problems = RecordStore(results).load()
    assert not problems and sorted(r["run_id"] for r in records) == sorted(expected)
    assert {r["run_id"]: int(r["worker"].rsplit(":", 1)[1]) for r in records} == recorded_by
    table = pd.read_csv(results / "runs.csv")  # rebuilt under a lock: no row lost to a race
    assert sorted(table["run_id"]) == sorted(expected)
    # baseline and quant of one fold start from the same cached plain model: trained once
    misses = collections.Counter(r["fold"] for r in records if r.get("tiny_model_cache") == "miss")
    assert misses == {1: 1, 2: 1, 3: 1}, misses
