"""`bench tune --total-trials N` with two worker processes on one study in a real PostgreSQL server:
the study ends with exactly N complete trials, and the trial of the worker killed mid-trial is
failed by its stale heartbeat and retried by the surviving worker.

The server is taken from HRF_BENCH_TEST_POSTGRES (default postgresql://bench:bench@127.0.0.1/bench,
what .ci/run sets up); without a reachable server the test is skipped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from bench.tuning.storage import make_storage

URL = os.environ.get("HRF_BENCH_TEST_POSTGRES", "postgresql://bench:bench@127.0.0.1/bench")
TOTAL = 4
SLICE_SECONDS = 0.02  # how long the workers run between two looks at the study


@contextlib.contextmanager
def frozen(*processes: subprocess.Popen):
    """The processes stopped (SIGSTOP) for the duration of the block, then continued."""
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            process.send_signal(signal.SIGCONT)


@pytest.fixture
def postgres() -> str:
    psycopg2 = pytest.importorskip(
        "psycopg2", reason="the [postgres] extra is not installed (pip install -e '.[postgres]'; .ci/run does)")
    try:
        psycopg2.connect(URL, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        pytest.skip(f"no PostgreSQL server at {URL} ({str(error).strip().splitlines()[0]}); "
                    f"set HRF_BENCH_TEST_POSTGRES or run .ci/run, which installs and starts one")
    return URL


def running_trial_of(worker: str, name: str, storage):
    """The running trial of ``worker`` that has reported a fold (is mid-trial), or None."""
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
    return next((t for t in trials if t.user_attrs.get("worker") == worker and t.intermediate_values), None)


@pytest.mark.slow  # several real processes; still run by default
def test_two_workers_share_a_postgres_study_and_end_with_exactly_n_complete_trials(postgres, tmp_path, bench_env):
    name = f"scale-{uuid.uuid4().hex[:12]}"
    command = [sys.executable, "-m", "bench.cli.main", "tune", "--method", "hrf", "--preset", "tiny", "--dataset", "toy",
               "--epochs", "3", "--folds", "1,2", "--test-folds", "1", "--param", "expansion_ratio=1:8",
               "--storage", postgres, "--study-name", name, "--heartbeat", "1", "--total-trials", str(TOTAL),
               "--results-dir", str(tmp_path / "results"), "--quiet"]
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    first, second = (subprocess.Popen(command, env=bench_env, stdout=log.open("w"), stderr=subprocess.STDOUT)
                     for log in logs)
    victim = f"{socket.gethostname()}:{first.pid}"
    storage = make_storage(postgres)  # the URL as a user gives it (plain postgresql://)
    try:
        killed = None
        deadline = time.time() + 240
        while killed is None:  # a trial of the first worker past its first fold, i.e. mid-trial
            assert time.time() < deadline and first.poll() is None, logs[0].read_text()
            # Both workers run in short slices and are looked at only while frozen: a worker cannot move
            # while the test reads the study, and a fold (tenths of a second of CPU at least) outlasts a
            # slice, so a trial's mid-point cannot pass unseen between two looks, however loaded the machine.
            with frozen(first, second):
                if name in optuna.get_all_study_names(storage) and (candidate := running_trial_of(victim, name, storage)):
                    time.sleep(0.5)  # writes already sent reach the server: the trial is still running after them
                    again = running_trial_of(victim, name, storage)
                    if again is not None and again.number == candidate.number:
                        killed = again
                        first.send_signal(signal.SIGKILL)
            time.sleep(SLICE_SECONDS)
        assert second.wait(timeout=300) == 0, logs[1].read_text()
    finally:
        first.kill()
        second.kill()

    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        states = [t.state for t in trials]
        assert states.count(TrialState.COMPLETE) == TOTAL, [(t.number, t.state.name) for t in trials]
        assert trials[killed.number].state == TrialState.FAIL
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
        assert [t.state for t in retries] == [TrialState.COMPLETE]
        assert retries[0].params == killed.params
        assert not [t for t in trials if t.state == TrialState.RUNNING]
    finally:
        optuna.delete_study(study_name=name, storage=storage)
