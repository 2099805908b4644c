"""Dividing a grid's runs among workers: deterministic shards for job arrays, and an exclusive claim
per run so that workers sharing one results folder never execute a run twice.

A claim is an OS file lock (``fcntl.flock`` through ``filelock``) on ``<results>/claims/<run_id>.lock``,
held while the run executes, next to ``<run_id>.json`` naming the holder (host, pid, start time).
The kernel drops the lock when its process dies, even by SIGKILL, so a dead worker's claim is free
at once and the next worker takes the run over (resuming its epoch checkpoint). On network file
systems the lock follows the NFS/Lustre locking rules; a crashed node's locks expire with its lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from bench import schema
from bench.execution.checkpoint import discard_run_checkpoints
from bench.paths import file_lock
from bench.registry import BenchError
from bench.reporting.results import SCHEMA_VERSION, RecordStore, atomic_write_text
from bench.execution.context import release_memory
from bench.execution.runner import execute, save_model
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based): every ``count``-th run of the grid, starting at ``index``.

    Shards follow the grid's run order, so their sizes differ by at most one and the same grid
    gives the same shards on every machine.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise BenchError(f"bad --shard {text!r}: use K/N with 1 <= K <= N, e.g. 1/4") from None
        if not sep or not 1 <= shard.index <= shard.count:
            raise BenchError(f"bad --shard {text!r}: use K/N with 1 <= K <= N, e.g. 1/4")
        return shard

    def select(self, specs: list[RunSpec]) -> list[RunSpec]:
        return specs[self.index - 1::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claims_dir(store: RecordStore) -> Path:
    return store.root / "claims"


def holder(store: RecordStore, rid: str) -> str:
    """Who holds (or last held) the claim on run ``rid``, for messages."""
    try:
        info = json.loads((claims_dir(store) / f"{rid}.json").read_text())
        return f"{info['worker']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "another worker"


@contextmanager
def claim(store: RecordStore, rid: str, wait: bool = False) -> Iterator[bool]:
    """Hold the exclusive claim on run ``rid`` for the block; yields False (without waiting, unless
    ``wait``) when a live worker holds it."""
    folder = claims_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    lock = file_lock(folder / f"{rid}.lock")
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    info = folder / f"{rid}.json"
    try:
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(info, json.dumps({"worker": worker_name(), "since": since}))
        yield True
    finally:
        info.unlink(missing_ok=True)
        lock.release()


def table_lock(store: RecordStore) -> FileLock:
    """Serializes rebuilding ``runs.csv``, so that the last rebuild sees every record written before it."""
    return file_lock(store.root / ".runs.csv.lock")


def execute_claimed(spec: RunSpec, store: RecordStore, workspace: Workspace, wait: bool = False,
                    rerun_before: float | None = None) -> bool:
    """Claim run ``spec``, execute and record it unless it is recorded by then; False when another
    worker holds the claim.

    ``rerun_before`` (a time.time() value, for ``--force``) re-runs records older than it, while a
    record written after it by another worker counts as done.
    """
    with claim(store, spec.run_id, wait) as held:
        if not held:
            log.info("run %s is held by %s; moving on", spec.run_id, holder(store, spec.run_id))
            return False
        path = store.path(spec.run_id)
        if path.exists() and (rerun_before is None or path.stat().st_mtime >= rerun_before) and store.read(path)[0]:
            return True  # recorded by another worker between our listing and our claim
        started = time.time()
        record = execute(spec, workspace)
        record["worker"] = worker_name()
        deploy_model = record.pop("_deploy_model", None)  # none when the run failed
        schema.check(dict(record, schema_version=SCHEMA_VERSION, checksum=""))  # as the store will write it
        if deploy_model is not None:
            save_model(deploy_model, store.root / "models" / f"{spec.run_id}.pt", record)
        else:  # a forced re-run that failed must not leave the old deploy model beside its record
            (store.root / "models" / f"{spec.run_id}.pt").unlink(missing_ok=True)
        store.write(record)
        del record
        release_memory()
        discard_run_checkpoints(workspace.cache_dir, spec.run_id)
        log.info("recorded run %s (%s %s/%s %s fold %d seed %d) in %.1f s", spec.run_id, spec.method, spec.backbone,
                 spec.preset, spec.dataset, spec.fold, spec.seed, time.time() - started)
    with table_lock(store):
        store.write_table()
    return True


# --- trials of an Optuna study shared by several workers ----------------------------------------

def _budgeted(objective, total: int):
    """``objective`` behind a guard: trial k runs only if fewer than ``total`` trials numbered below k
    are complete, running or waiting; otherwise it is pruned as surplus (user attr ``surplus``).

    Trial numbers are handed out one at a time under a lock on the study, so every trial sees all
    trials numbered below it: two workers can never both take the last slot.
    """
    from optuna import TrialPruned
    from optuna.trial import TrialState

    def guarded(trial):
        trial.set_user_attr("worker", worker_name())
        earlier = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                                 TrialState.WAITING))
        if sum(t.number < trial.number for t in earlier) >= total:
            trial.set_user_attr("surplus", True)
            raise TrialPruned(f"the study already has {total} complete or running trials")
        return objective(trial)
    return guarded


def optimize_total(study, objective, total: int, callbacks=(), poll_seconds: float = 1.0) -> None:
    """Run trials of ``study`` until it holds ``total`` complete trials, however many workers run
    this at once. A worker with no free slot waits while other workers' trials run; a killed
    worker's trial goes stale (heartbeat), is failed and re-queued, and a waiting worker runs it."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    guarded = _budgeted(objective, total)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        complete, waiting = states.count(TrialState.COMPLETE), states.count(TrialState.WAITING)
        if complete >= total:
            return
        if waiting or complete + states.count(TrialState.RUNNING) < total:
            study.optimize(guarded, n_trials=1, callbacks=list(callbacks))
        else:
            time.sleep(poll_seconds)
