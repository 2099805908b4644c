"""The Python API: what the ``bench`` commands do, as functions for scripts and notebooks.

The command line is a thin layer over these functions (it parses flags and prints); a grid run from
a notebook and one from ``bench run`` take the same path and give the same records. Names are looked
up in the registries, whose plug-ins (built-in and installed packages) load on first use.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from bench.registry import BACKBONES, DATASETS, METHODS, BenchError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from bench.execution.executors import Execution
    from bench.method import Deployed
    from bench.reporting.html import Report
    from bench.tuning.tune import TuneResult

LIST_AXES = ("methods", "backbones", "presets", "datasets")
INT_AXES = ("folds", "seeds")
NESTED_SETTINGS = ("method_params", "sweeps", "dataset_params")  # {owner: {param: value}}, merged per owner


def default_cache_dir() -> Path:
    """``$HRF_BENCH_CACHE``, else ``~/.cache/hrf-bench``: corpora, features and trained plain models."""
    return Path(os.environ.get("HRF_BENCH_CACHE", Path.home() / ".cache" / "hrf-bench"))


MAX_RANGE = 10_000  # values one range may expand to (folds and seeds; a grid of more is a mistake)
# ASCII digits only: int() also reads "1_0" as 10 and other scripts' digits, a typo taken for another run
INTEGER_OR_RANGE = re.compile(r"[-+]?[0-9]+(\s*-\s*[-+]?[0-9]+)?")


def parse_ints(text: str, what: str) -> list[int]:
    """``"1,2"`` or ``"1-5"`` -> list of ints; anything else is a one-line error."""
    values = []
    for item in (t.strip() for t in text.split(",")):
        try:
            if not INTEGER_OR_RANGE.fullmatch(item):
                raise ValueError(item)
            if "-" in item[1:]:
                low, high = item.split("-", 1)
                if int(low) > int(high):
                    raise BenchError(f"bad {what} range {item!r}: it is empty; write it low-high, e.g. {high}-{low}")
                if int(high) - int(low) >= MAX_RANGE:
                    raise BenchError(f"bad {what} range {item!r}: more than {MAX_RANGE} values")
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(item))
        except ValueError:
            raise BenchError(f"bad {what} value {text!r}: use integers like 1,2 or 1-5") from None
    return values


def _axis(name: str, value: Any) -> list:
    """A grid axis from a list, a single name or number, or a comma-separated string."""
    if isinstance(value, str):
        items = [t.strip() for t in value.split(",") if t.strip()]
        if not items:
            raise BenchError(f"{name} is empty: give a comma-separated list")
        return parse_ints(value, name) if name in INT_AXES else items
    if isinstance(value, int) or not isinstance(value, Iterable):
        return [value]
    items = list(value)
    if not items:
        raise BenchError(f"{name} is empty: give at least one value")
    return items


def _tables(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


# What the nested settings :func:`grid_values` merges must be: name -> (check, description).
SETTING_TYPES = {
    **{name: (_tables, "a dict of dicts, e.g. {'hrf': {'expansion_ratio': 4}}") for name in NESTED_SETTINGS},
    "data_roots": (lambda v: isinstance(v, dict), "a dict of dataset name -> folder"),
    "train": (lambda v: isinstance(v, dict), "a dict of training settings, e.g. {'epochs': 8}"),
    "features": (lambda v: isinstance(v, (str, dict)), "a feature kind such as 'mfcc', or a dict of feature settings"),
}


def grid_values(config: str | Path | None = None, **given: Any) -> dict:
    """The settings of a grid: the grid file (TOML or YAML) when given, overridden by ``given``.

    ``given`` takes the grid's fields (``methods``, ``backbones``, ``presets``, ``datasets``, ``folds``,
    ``seeds``, ``train``, ``features``, ``method_params``, ``sweeps``, ``dataset_params``, ``data_roots``,
    ``teacher_preset``) and, as shortcuts, training settings (``epochs=8``, ``lr=1e-3``...) and feature
    settings (``features="mfcc"``, ``n_mels=64``...). None means "not given". Given ``methods`` narrow
    the file's: its presets and method parameters for methods left out are dropped (an explicit one
    for a method not in the grid is still an error)."""
    from bench.data.features import FeatureConfig
    from bench.execution.grid import Grid, load_config
    from bench.training.config import TrainConfig

    values = load_config(Path(config)) if config else {}
    if given.get("methods") is not None:  # narrowed by the caller: the file's settings for other methods lapse
        names = _axis("methods", given["methods"])
        components = {c for m in names if isinstance(m, str) for c in m.split("+")}  # other types: make_grid says so
        if isinstance(values.get("presets"), dict):
            values["presets"] = {m: p for m, p in values["presets"].items() if m in names}
        for nested in ("method_params", "sweeps"):
            if nested in values:
                values[nested] = {m: p for m, p in values[nested].items() if m in components}
    train_fields = {f.name for f in fields(TrainConfig)}
    feature_fields = {f.name for f in fields(FeatureConfig)} - {"kind"}
    grid_fields = {f.name for f in fields(Grid)}
    train, features = dict(values.get("train", {})), dict(values.get("features", {}))
    for name, value in given.items():
        if value is None:
            continue
        expected = SETTING_TYPES.get(name)
        if expected and not expected[0](value):  # e.g. method_params=[1]: a TypeError deep below otherwise
            raise BenchError(f"{name} must be {expected[1]}, got {value!r}")
        if name in train_fields:
            train[name] = value
        elif name in feature_fields:
            features[name] = value
        elif name == "features":
            features |= {"kind": value} if isinstance(value, str) else dict(value)
        elif name == "train":
            train |= dict(value)
        elif name in NESTED_SETTINGS:
            merged = dict(values.get(name, {}))
            for owner, assignments in value.items():
                merged[owner] = dict(merged.get(owner, {})) | dict(assignments)
            values[name] = merged
        elif name == "data_roots":
            values[name] = dict(values.get(name, {})) | {k: str(v) for k, v in value.items()}
        elif name in LIST_AXES or name in INT_AXES:
            values[name] = _axis(name, value)
        elif name in grid_fields:
            values[name] = value
        else:
            valid = sorted(grid_fields | train_fields | feature_fields)
            raise BenchError(f"unknown setting {name!r}; valid settings: {', '.join(valid)}")
    values["train"], values["features"] = train, features
    return values


def run(methods: Any = None, backbones: Any = None, datasets: Any = None, folds: Any = None, seeds: Any = None, *,
        config: str | Path | None = None, results_dir: str | Path = "results", cache_dir: str | Path | None = None,
        force: bool = False, progress: bool = True, execution: Execution | None = None,
        **settings: Any) -> list[dict] | None:
    """Run a benchmark grid and return its records (one dict per run, as written to
    ``<results_dir>/records``); runs already recorded are not run again (unless ``force``).

    ``methods`` etc. take lists (``["baseline", "hrf+quant"]``, ``[1, 2]``) or strings (``"1-5"``);
    omitted axes take the grid defaults (every method, convtransformer, embedded, fold 1, seed 0).
    ``settings``: see :func:`grid_values` (``epochs=2``, ``presets=["tiny"]``, ``method_params={"hrf":
    {"expansion_ratio": 4}}``...). ``execution`` runs shards or a submitit job array; with a job array
    that is not waited for, the result is None."""
    from bench.execution.executors import Execution
    from bench.execution.grid import make_grid
    from bench.reporting.results import RecordStore

    values = grid_values(config, methods=methods, backbones=backbones, datasets=datasets, folds=folds, seeds=seeds,
                         **settings)
    grid = make_grid(values)
    store = RecordStore(Path(results_dir))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return (execution or Execution()).run(grid, store, cache, force=force, progress=progress)


def plan(methods: Any = None, backbones: Any = None, datasets: Any = None, folds: Any = None, seeds: Any = None, *,
         config: str | Path | None = None, results_dir: str | Path = "results", cache_dir: str | Path | None = None,
         force: bool = False, execution: Execution | None = None, **settings: Any) -> str:
    """What :func:`run` with the same arguments would do, as text (``bench run --dry-run``): the runs, the
    plain models trained once and reused, and a compute estimate calibrated by timing a few training
    steps of each backbone and preset on this machine. Nothing is trained or written."""
    from bench.execution.estimate import describe_plan
    from bench.execution.executors import Execution
    from bench.execution.grid import make_grid
    from bench.reporting.results import RecordStore
    from bench.execution.workspace import Workspace

    grid = make_grid(grid_values(config, methods=methods, backbones=backbones, datasets=datasets, folds=folds,
                                 seeds=seeds, **settings))
    execution = execution or Execution()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return describe_plan(grid, RecordStore(Path(results_dir)), Workspace(cache, grid.data_roots, progress=False),
                         force=force, device=execution.device, latency=not execution.defer_latency,
                         amp=execution.amp)


def load_runs(results_dir: str | Path = "results") -> pd.DataFrame:
    """The tidy runs table: one row per recorded run (identity, settings, metrics, costs, environment)."""
    from bench.reporting.results import RecordStore
    from bench.reporting.summary import runs_frame

    store = RecordStore(Path(results_dir))
    if not store.records_dir.is_dir():  # a typo or another folder is not "no runs": say so
        raise BenchError(f"{results_dir} is not a results folder (it has no records/ folder): give the folder "
                         f"`bench run --results-dir` wrote")
    return runs_frame(store.load()[0])


def load_summary(results_dir: str | Path = "results", light_preset: str = "lightweight", large_preset: str = "large",
                 seed: int = 0) -> pd.DataFrame:
    """The summary: mean and std over folds and seeds per configuration, the differences to the plain
    baselines, and the paired statistics with their bootstrap intervals (``ci_low``, ``ci_high``)."""
    from bench.reporting.summary import summary_table

    return summary_table(load_runs(results_dir), light_preset, large_preset, seed)


def report(results_dir: str | Path = "results", reports_dir: str | Path = "reports", light_preset: str = "lightweight",
           large_preset: str = "large", seed: int = 0) -> Report:
    """Write the tables, figures and HTML leaderboard (``bench report``); returns where they are."""
    from bench.reporting.html import build_report

    return build_report(Path(results_dir), Path(reports_dir), light_preset, large_preset, seed)


def tune(method: str, backbone: str = "convtransformer", preset: str = "lightweight", dataset: str = "embedded",
         params: Any = (), **options: Any) -> TuneResult:
    """Search ``method``'s parameters with Optuna on validation splits, then re-run the best setting on the
    test folds (``bench tune``): ``params`` like ``["expansion_ratio=1:8"]``, options as the command's
    (``trials``, ``objectives``, ``folds``, ``seeds``, ``epochs``, ``storage``, ``results_dir``, ``device``...).
    Returns the study, its trials table, the best trials and the test-fold records."""
    from bench.tuning.tune import tune as tune_study

    return tune_study(method, backbone, preset, dataset, params, **options)


def list_methods() -> list[str]:
    """Names of the registered methods (built-in and installed plug-ins)."""
    return METHODS.names()


def list_backbones() -> list[str]:
    return BACKBONES.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_model(run_id: str, results_dir: str | Path = "results") -> nn.Module:
    """The deploy model of a recorded run (``run_id`` or a unique prefix of it), in eval mode: the float
    PyTorch module (for a method that ships its own ONNX graph, quant's int8 one, see :func:`load_deployed`)."""
    return load_deployed(run_id, results_dir).model


def load_deployed(run_id: str, results_dir: str | Path = "results") -> Deployed:
    """What a recorded run ships (``run_id`` or a unique prefix of it): the module in eval mode, and the
    ONNX graph its method ships in the module's place (``.graph``, bytes; None when the module's export ships)."""
    from bench.measure.model_store import find_model, load_deploy_model

    return load_deploy_model(find_model(run_id, Path(results_dir)))
