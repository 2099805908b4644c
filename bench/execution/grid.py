"""A benchmark grid: its settings (flags or a TOML/YAML file), its expansion into runs, and the loop
that executes the runs not yet recorded."""

from __future__ import annotations

import difflib
import itertools
import logging
import math
import os
import time
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from tqdm import tqdm

from bench.api import default_cache_dir
from bench.data.features import FeatureConfig
from bench.execution.checkpoint import discard_recorded_checkpoints
from bench.execution.claims import Shard, execute_claimed
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.method import TRAINS_AT
from bench.paths import read_text
from bench.registry import BACKBONES, DATASETS, DEFAULT_BACKBONE, METHODS, BenchError
from bench.reporting.results import RecordStore
from bench.training.config import TrainConfig
from bench.training.devices import training_precision

log = logging.getLogger("bench")



MAX_SEED = 2 ** 32
MAX_FOLD = 1000  # leave-one-speaker-out folds of the largest corpora stay far below this


@dataclass
class Grid:
    """The axes of a benchmark; ``presets`` empty means each method's default presets."""

    methods: list[str] = field(default_factory=list)  # empty = every registered method
    backbones: list[str] = field(default_factory=lambda: [DEFAULT_BACKBONE])
    presets: list[str] | dict = field(default_factory=list)  # or {method: [presets]} (others: their defaults)
    datasets: list[str] = field(default_factory=lambda: ["embedded"])
    folds: list[int] = field(default_factory=lambda: [1])
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainConfig = TrainConfig()
    features: FeatureConfig = FeatureConfig()
    method_params: dict = field(default_factory=dict)
    # {method: {param: [values]}}: each run of a method with that component repeats at every combination
    # of its swept values (accuracy-cost curves: [sweeps.prune] ratio = [0.5, 0.25, 0.125])
    sweeps: dict = field(default_factory=dict)
    dataset_params: dict = field(default_factory=dict)  # {dataset: {param: value}}
    data_roots: dict = field(default_factory=dict)
    teacher_preset: str = "large"

    def validate(self) -> None:
        for axis in ("backbones", "datasets", "folds", "seeds"):
            if not getattr(self, axis):
                raise BenchError(f"the grid has no {axis}: give at least one")
        for name in self.backbones:
            BACKBONES.get(name)
            for preset in {*(p for m in self.method_names() for p in self.presets_for(m)), self.teacher_preset}:
                check_preset(name, preset)
        for name in self.datasets:
            DATASETS.get(name).make_params(self.dataset_params.get(name))
        for method in self.method_names():
            for component in method.split("+"):
                METHODS.get(component).make_params(self.method_params.get(component))
                if METHODS.get(component).obj.trains_at not in TRAINS_AT:
                    raise BenchError(f"method {component!r} declares trains_at={METHODS.get(component).obj.trains_at!r}: "
                                     f"one of {', '.join(TRAINS_AT)}")
            early = [c for c in method.split("+")[:-1] if METHODS.get(c).obj.must_be_last]
            if early:  # e.g. quant: nothing trains or transforms its model further
                raise BenchError(f"{early[0]} must come last in a composition, got {method!r}: e.g. hrf+{early[0]}")
        for component, swept in self.sweeps.items():
            for name, values in swept.items():
                if name in self.method_params.get(component, {}):
                    raise BenchError(f"{component}.{name} is both swept and fixed (-p): give it in one of them")
                resolved = [repr(METHODS.get(component).make_params(self.method_params.get(component, {}) | {name: value}))
                            for value in values]  # every swept value must be a valid parameter value
                if len(set(resolved)) < len(values):
                    raise BenchError(f"the sweep of {component}.{name} repeats a value ({values}): each once")
        stray = set(self.presets) - set(self.method_names()) if isinstance(self.presets, dict) else set()
        if stray:
            raise BenchError(f"presets given for {sorted(stray)[0]!r}, which is not among the grid's methods")
        components = {c for m in self.method_names() for c in m.split("+")}
        for given, option, known, what in ((self.method_params, "-p", components, "methods"),
                                           (self.sweeps, "sweep", components, "methods"),
                                           (self.dataset_params, "--dataset-param", self.datasets, "datasets"),
                                           (self.data_roots, "--data-root", self.datasets, "datasets")):
            unused = sorted(set(given) - set(known))
            if unused:
                close = difflib.get_close_matches(unused[0], sorted(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise BenchError(f"{option} given for {unused[0]!r}, which is not among the grid's {what} "
                                 f"({', '.join(sorted(known))}): {hint}add it to the grid or drop the {option}")
        if any(f < 1 for f in self.folds):
            raise BenchError(f"folds are numbered from 1, got {self.folds}")
        if any(s < 0 for s in self.seeds):
            raise BenchError(f"seeds must be >= 0, got {self.seeds}")
        if any(s >= MAX_SEED for s in self.seeds):  # torch seeds its generators with the low 32 bits
            raise BenchError(f"seeds must be < 2**32 = {MAX_SEED} (a larger seed repeats a smaller one's random "
                             f"stream), got {max(self.seeds)}")
        if any(f > MAX_FOLD for f in self.folds):
            raise BenchError(f"fold {max(self.folds)} is past any protocol's folds (at most {MAX_FOLD})")
        for axis in ("methods", "backbones", "datasets", "folds", "seeds"):
            values = getattr(self, axis)
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise BenchError(f"{axis}: {repeated[0]!r} is given twice; each run is run once, give each once")
        for method in self.method_names():
            components = method.split("+")
            twice = sorted({c for c in components if components.count(c) > 1})
            if twice:
                raise BenchError(f"method {method!r} composes {twice[0]} twice; a component applies once")

    def method_names(self) -> list[str]:
        """The grid's methods; when it names none, every registered method that runs by default."""
        return self.methods or [n for n in METHODS.names() if METHODS.get(n).obj.included_by_default]

    def presets_for(self, method: str) -> list[str]:
        given = self.presets.get(method) if isinstance(self.presets, dict) else self.presets
        # a method's own declared presets; a composition deploys at the lightweight budget
        return list(given or (METHODS.get(method).obj.default_presets if "+" not in method else ("lightweight",)))

    def specs(self, workspace: Workspace | None = None) -> list[RunSpec]:
        """The grid's runs; ``workspace`` (default: one on the default cache folder) reads each dataset's
        corpus listing for its fingerprint (part of every run's identity)."""
        if workspace is None:
            workspace = Workspace(default_cache_dir(), self.data_roots, progress=False)
        runs = []
        for dataset in self.datasets:
            fingerprint = workspace.fingerprint(dataset, self.dataset_params.get(dataset, {}))
            workspace.check_features(dataset, self.dataset_params.get(dataset, {}), self.features)
            corpus = workspace.listing(dataset, self.dataset_params.get(dataset, {}))[0]
            missing = [fold for fold in self.folds if not 1 <= fold <= len(corpus.folds)]
            if missing and corpus.folds:  # found before anything runs, in a dry run too
                raise BenchError(f"fold {missing[0]} does not exist for {dataset}: choose from 1..{len(corpus.folds)}")
            for backbone in self.backbones:
                for method in self.method_names():
                    for params in self.method_settings(method):
                        for preset in self.presets_for(method):
                            for fold in self.folds:
                                for seed in self.seeds:
                                    runs.append(RunSpec(
                                        method=method, backbone=backbone, preset=preset, dataset=dataset,
                                        fold=fold, seed=seed, train=self.train, features=self.features,
                                        method_params=params, dataset_params=self.dataset_params.get(dataset, {}),
                                        teacher_preset=self.teacher_preset, corpus_fingerprint=fingerprint,
                                        precision=training_precision(workspace.amp)))
        return runs

    def method_settings(self, method: str) -> list[dict]:
        """``method``'s parameter settings: its fixed ones, at every combination of its components' sweeps."""
        components = method.split("+")
        fixed = {c: dict(self.method_params[c]) for c in components if c in self.method_params}
        axes = [(c, name, values) for c in components for name, values in self.sweeps.get(c, {}).items()]
        settings = []
        for combination in itertools.product(*(values for _, _, values in axes)):
            params = {c: dict(p) for c, p in fixed.items()}
            for (component, name, _), value in zip(axes, combination):
                params.setdefault(component, {})[name] = value
            settings.append(params)
        return settings


def check_preset(backbone: str, preset: str) -> None:
    """An unknown preset is a one-line error with a did-you-mean."""
    presets = BACKBONES.get(backbone).extra["presets"]
    if preset not in presets:
        close = difflib.get_close_matches(preset, presets, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BenchError(f"unknown preset {preset!r} for backbone {backbone}.{hint} Available: {', '.join(presets)}")


def _list_of(kind):
    return lambda v: isinstance(v, list) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)


def _table_of_tables(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, dict) for k, t in v.items())


# What each grid value must be (a grid file can hold any TOML/YAML type): name -> (check, description).
GRID_TYPES = {
    "methods": (_list_of(str), "a list of names"), "backbones": (_list_of(str), "a list of names"),
    "presets": (lambda v: _list_of(str)(v) or (isinstance(v, dict) and all(_list_of(str)(x) for x in v.values())),
                "a list of names, or a table of METHOD = [names]"),
    "datasets": (_list_of(str), "a list of names"),
    "folds": (_list_of(int), "a list of integers, e.g. [1, 2]"), "seeds": (_list_of(int), "a list of integers, e.g. [0, 1]"),
    "train": (lambda v: isinstance(v, dict), "a table of training settings"),
    "features": (lambda v: isinstance(v, dict), "a table of feature settings"),
    "method_params": (_table_of_tables, "a table of tables, e.g. [method_params.hrf]"),
    "sweeps": (lambda v: _table_of_tables(v) and all(isinstance(x, list) and x for t in v.values() for x in t.values()),
               "a table of tables of non-empty lists, e.g. [sweeps.prune] ratio = [0.5, 0.25]"),
    "dataset_params": (_table_of_tables, "a table of tables, e.g. [dataset_params.emodb]"),
    "data_roots": (lambda v: isinstance(v, dict) and all(isinstance(x, (str, os.PathLike)) for x in v.values()),
                   "a table of NAME = \"PATH\""),
    "teacher_preset": (lambda v: isinstance(v, str), "a preset name"),
}


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_grid_values(values: dict, source: str) -> None:
    """Each grid value must have its type (see ``GRID_TYPES``): a one-line error naming it otherwise."""
    for name, value in values.items():
        check, description = GRID_TYPES[name]
        if not isinstance(value, (TrainConfig, FeatureConfig)) and not check(value):
            raise BenchError(f"{source}: {name} must be {description}, got {value!r}")


def typed_settings(cls: type, values: dict, section: str):
    """``cls(**values)`` after checking every value against the field's type (finite numbers only),
    so that a grid file's ``batch_size = 2.5`` or ``lr = nan`` is an error before anything runs."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    checked = {}
    for name, value in values.items():
        if name not in names:
            raise BenchError(f"unknown {section} setting {name!r}; valid: {', '.join(names)}")
        kind = hints[name]
        if type(None) in typing.get_args(kind):  # optional: None leaves it to the preset's recipe
            if value is None:
                checked[name] = None
                continue
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise BenchError(f"{section} setting {name}={value!r} must be {KIND_NAMES[kind]}")
        if kind is float and not math.isfinite(value):
            raise BenchError(f"{section} setting {name}={value!r} must be a finite number")
        checked[name] = value
    return cls(**checked)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last without a word,
    so ``folds: [1]`` then ``folds: [2]`` ran fold 2 only; TOML refuses it already)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: Path) -> dict:
    """Read a TOML or YAML grid file into a dict of Grid fields."""
    text = read_text(path, "config")
    try:
        data = tomllib.loads(text) if Path(path).suffix == ".toml" else yaml.load(text, Loader=_UniqueKeyLoader)
    except (ValueError, yaml.YAMLError, RecursionError) as error:  # ValueError: TOML's, and a 5000-digit number
        raise BenchError(f"config {path} does not parse: {(str(error).splitlines() or ['nested too deeply'])[0]}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise BenchError(f"config {path} must be a table of grid settings (methods = [...], folds = [...]), "
                         f"not a {type(data).__name__}")
    known = {f.name for f in fields(Grid)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BenchError(f"config {path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    check_grid_values(data, f"config {path}")
    return data


def make_grid(values: dict) -> Grid:
    """Grid from plain values (config file merged with CLI flags); nested settings become dataclasses."""
    values = dict(values)
    check_grid_values(values, "grid")
    if isinstance(values.get("train"), dict):
        values["train"] = typed_settings(TrainConfig, values["train"], "train")
    if isinstance(values.get("features"), dict):
        values["features"] = typed_settings(FeatureConfig, values["features"], "features")
    grid = Grid(**values)
    grid.validate()
    return grid


def run_grid(grid: Grid, store: RecordStore, cache_dir: Path, force: bool = False, progress: bool = True,
             shard: Shard | None = None, defer_latency: bool = False, device: str = "cpu",
             amp: bool = False) -> list[dict]:
    """Execute every run of ``grid`` (of its ``shard``) not yet in ``store`` (all of them with
    ``force``); returns the records of those runs, old and new.

    Each run is claimed first, so several workers on one results folder share the grid. Runs held
    by another worker are left for last and waited for (taken over if that worker dies), so when
    this returns every run is recorded.
    """
    store.check_writable()
    workspace = Workspace(cache_dir, grid.data_roots, progress, defer_latency=defer_latency, device=device, amp=amp)
    specs = grid.specs(workspace) if shard is None else shard.select(grid.specs(workspace))
    todo = [s for s in specs if force or not store.has(s.run_id)]
    if len(todo) < len(specs):
        log.info("%d of %d runs already recorded; skipping them (use --force to re-run)", len(specs) - len(todo), len(specs))
        pending = {s.run_id for s in todo}
        removed = discard_recorded_checkpoints(cache_dir, {s.run_id for s in specs} - pending)
        if removed:
            log.warning("removed %d epoch checkpoint(s) of runs already recorded (a worker was stopped between "
                        "writing a record and removing its checkpoints)", removed)
    rerun_before = time.time() if force else None
    busy = []
    for number, spec in enumerate(tqdm(todo, desc="runs", disable=not progress, unit="run"), 1):
        if progress:
            tqdm.write(f"[{number}/{len(todo)}] {spec.method} {spec.backbone}/{spec.preset} {spec.dataset} "
                       f"fold {spec.fold} seed {spec.seed}")
        if not execute_claimed(spec, store, workspace, rerun_before=rerun_before):
            busy.append(spec)
    if busy:
        log.info("waiting for %d runs held by other workers", len(busy))
    for spec in busy:
        execute_claimed(spec, store, workspace, wait=True, rerun_before=rerun_before)
    wanted = {s.run_id for s in specs}
    records, problems = store.load()
    for problem in problems:  # e.g. a copied record, counted once
        log.warning("%s", problem)
    return [r for r in records if r["run_id"] in wanted]
