"""Optuna storages for ``bench tune``: SQLite, PostgreSQL or any SQLAlchemy URL, or a journal file on a
shared file system, each with heartbeats so that a dead worker's trial is retried."""

from __future__ import annotations

import re
import time
import warnings

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from bench.registry import BenchError


class _HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage has no heartbeat; this one keeps it as a trial system attribute, so
    that trials of killed workers on shared file systems are failed and retried as with RDB storages.
    ``BaseHeartbeat`` is the one private name used: Optuna (5.0) exports no other way for a storage to
    take part in ``fail_stale_trials``, and pyproject pins the minor it is tested with."""

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, callback):
        super().__init__(backend)
        self.heartbeat_interval, self.grace_period, self.callback = heartbeat_interval, 2 * heartbeat_interval, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [self.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in running
                if now - t.system_attrs.get("heartbeat", now) > self.grace_period]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.callback


def make_storage(url: str, heartbeat_interval: int = 60, max_retry: int = 3) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (``sqlite:///PATH``, ``postgresql://...``, any SQLAlchemy URL, or
    ``journal:PATH`` for a journal file on a shared file system), with heartbeats every
    ``heartbeat_interval`` s: a trial silent for twice that long is failed and re-queued (at most
    ``max_retry`` times). One-line BenchError when it cannot be opened."""
    given = url
    if url.startswith("postgresql://"):
        try:
            import psycopg2  # noqa: F401  (an optional dependency)
        except ImportError:
            raise BenchError("a postgresql:// storage needs the PostgreSQL driver: "
                             "pip install 'hrf-bench[postgres]'") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            if url.startswith("journal:"):
                path = url.removeprefix("journal:")
                if not path:
                    raise ValueError("empty journal path")
                return _HeartbeatJournalStorage(JournalFileBackend(path), heartbeat_interval, callback)
            if url.startswith("postgresql://"):  # SQLAlchemy >= 2.1 defaults to psycopg 3; the project ships psycopg2
                url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
            return RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=2 * heartbeat_interval,
                              heartbeat_stale_trial_callback=callback)
    except Exception as error:  # sqlalchemy, driver and file errors all mean the same thing to the user
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        shown = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", given)  # never echo a password
        raise BenchError(f"cannot open storage {shown!r} ({reason}): use sqlite:///PATH, "
                         f"postgresql://USER@HOST/DB or journal:PATH") from None
