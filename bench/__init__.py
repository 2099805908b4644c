"""hrf-bench: which way of making a speech-emotion Transformer small keeps the most accuracy at a given
on-device cost?

The public API (see the README's "Python API"), cheap to import: torch, pandas and the plug-ins load
when a function is first called::

    import bench
    records = bench.run(methods=["baseline", "hrf"], folds=[1, 2], seeds=[0], epochs=6)
    runs, summary = bench.load_runs("results"), bench.load_summary("results")

The harness is grouped by pipeline stage: ``bench.data`` (corpora, features), ``bench.training``,
``bench.execution`` (grids, runs, workers), ``bench.measure`` (costs, latency, ONNX, saved models),
``bench.reporting`` (records, tables, statistics, plots, HTML), ``bench.tuning`` and ``bench.cli``;
``bench.registry``, ``bench.method`` and ``bench.schema`` are the contracts they share. Subpackages
are importable as attributes too.
"""

from __future__ import annotations

import importlib

__all__ = ["run", "plan", "tune", "load_runs", "load_summary", "report", "list_methods", "list_backbones",
           "list_datasets", "load_model", "load_deployed", "BenchError"]


def __getattr__(name: str):
    if name == "BenchError":
        from bench.registry import BenchError
        return BenchError
    if name in __all__:
        return getattr(importlib.import_module("bench.api"), name)
    try:  # ``bench.registry`` or ``bench.execution`` after a bare ``import bench``
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"bench.{name}":
            raise
        raise AttributeError(f"module 'bench' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
