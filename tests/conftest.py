"""Shared fixtures: a tiny separable corpus of pre-extracted features registered as dataset ``toy``,
so tests train real models in seconds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data.corpus import Corpus, Utterance, speaker_folds
from bench.registry import DATASETS, load_builtin_plugins, param

load_builtin_plugins()
# Every run's float ONNX export is checked in ONNX Runtime by default (a fresh export per architecture
# costs seconds to minutes); the suite skips it, here and in its ``bench`` subprocesses, except where
# the check itself is tested (tests/test_onnx.py).
os.environ.setdefault("HRF_BENCH_ONNX_CHECK", "0")
torch.set_num_threads(1)  # the suite shares 2 cores; small models gain nothing from more threads

TOY_CLASSES = ["a", "b", "c", "d"]
TOY_DIM = 16


@dataclass
class ToyParams:
    speakers: int = param(6, "number of speakers", low=3)
    per_speaker: int = param(24, "utterances per speaker", low=4)
    separation: float = param(1.5, "class mean offset (larger = easier)", low=0.0)


def write_toy_features(folder: Path, params: ToyParams) -> list[Utterance]:
    """Random (frames, 16) arrays whose class shifts a band of 4 dims; deterministic."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    utterances = []
    for speaker in range(params.speakers):
        for i in range(params.per_speaker):
            label = i % len(TOY_CLASSES)
            frames = rng.normal(size=(int(rng.integers(30, 90)), TOY_DIM)).astype(np.float32)
            frames[:, 4 * label: 4 * label + 4] += params.separation
            path = folder / f"s{speaker}_{i}.npy"
            if not path.exists():
                np.save(path, frames)
            utterances.append(Utterance(f"s{speaker}_{i}", TOY_CLASSES[label], f"s{speaker}", features=path))
    return utterances


@DATASETS.register("toy", "tiny separable random features for tests", params=ToyParams)
def load_toy(root: Path | None, cache_dir: Path, params: ToyParams) -> Corpus:
    folder = Path(cache_dir) / f"toy-{params.speakers}-{params.per_speaker}-{params.separation}"
    utterances = write_toy_features(folder, params)
    speakers = sorted({u.speaker for u in utterances})
    groups = [speakers[k::3] for k in range(3)]
    return Corpus("toy", TOY_CLASSES, utterances, speaker_folds(utterances, groups),
                  fingerprint=f"toy-{params}")


# Skips for want of what CI installs (.ci/run): there (CI=true) they fail, since a skip would hide a
# broken install step; on a laptop without these they stay skips.
CI_INSTALLS = ("EmoDB", "Chromium", "Playwright", "PostgreSQL", "[postgres] extra", "[slurm] extra")


def required_in_ci(report) -> str | None:
    """The skip reason of ``report`` when it is a skip that must fail in CI, else None."""
    if not report.skipped or os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return None
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason if any(name.lower() in reason.lower() for name in CI_INSTALLS) else None


def fail_in_ci(report) -> None:
    reason = required_in_ci(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), where this must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # a module-level skip (pytest.importorskip)
    outcome = yield
    fail_in_ci(outcome.get_result())


@pytest.fixture
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def toy_plugin_path(tmp_path_factory) -> str:
    """A PYTHONPATH under which separate ``bench`` processes find the ``toy`` dataset, registered
    like a third-party plug-in: an installed distribution's ``hrf_bench.datasets`` entry point."""
    site = tmp_path_factory.mktemp("plugin-site")
    info = site / "hrf_bench_toy-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hrf-bench-toy\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[hrf_bench.datasets]\ntoy = conftest\n")
    return os.pathsep.join([str(site), str(Path(__file__).parent)])


@pytest.fixture
def bench_env(toy_plugin_path, cache_dir) -> dict[str, str]:
    """Environment for ``bench`` subprocesses: the toy plug-in, this test's cache, one thread."""
    path = os.pathsep.join(p for p in (toy_plugin_path, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, HRF_BENCH_CACHE=str(cache_dir), OMP_NUM_THREADS="1")


@pytest.fixture(scope="session")
def tiny_grid_results(tmp_path_factory) -> Path:
    """A results folder of real tiny runs on ``toy`` (2 folds x 2 seeds, 2 epochs): ``baseline`` at
    ``tiny`` and ``lightweight`` (report with ``--light-preset tiny --large-preset lightweight``), and
    ``hrf`` at ``tiny`` when that method is registered."""
    from bench.execution.grid import make_grid, run_grid
    from bench.registry import METHODS
    from bench.reporting.results import RecordStore

    store = RecordStore(tmp_path_factory.mktemp("tiny-grid") / "results")
    cache = tmp_path_factory.mktemp("tiny-grid-cache")
    common = {"backbones": ["convtransformer"], "datasets": ["toy"], "folds": [1, 2], "seeds": [0, 1],
              "train": {"epochs": 2}}
    run_grid(make_grid(common | {"methods": ["baseline"], "presets": ["tiny", "lightweight"]}), store, cache,
             progress=False)
    if "hrf" in METHODS:
        run_grid(make_grid(common | {"methods": ["hrf"], "presets": ["tiny"]}), store, cache, progress=False)
    return store.root


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory) -> Path:
    """A results folder with one real recorded run and its saved deploy model (``baseline``,
    convtransformer ``tiny``, ``toy``, 1 epoch); tests that write into it copy it first."""
    from bench.execution.grid import make_grid, run_grid
    from bench.reporting.results import RecordStore

    root = tmp_path_factory.mktemp("recorded-run")
    grid = make_grid({"methods": ["baseline"], "backbones": ["convtransformer"], "presets": ["tiny"],
                      "datasets": ["toy"], "folds": [1], "seeds": [0], "train": {"epochs": 1}})
    run_grid(grid, RecordStore(root / "results"), root / "cache", progress=False)
    return root / "results"


class WritesAFile:
    """Unpickled by a full unpickler, it creates ``marker``: what a planted cache file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def code_payload(tmp_path) -> tuple[WritesAFile, Path]:
    """An object that runs code when unpickled, and the file that code would create."""
    marker = tmp_path / "unpickled"
    return WritesAFile(marker), marker
