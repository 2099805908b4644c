"""A benchmark grid: its settings (flags or a TOML/YAML file), its expansion into runs, and the loop
that executes the runs not yet recorded."""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from tqdm import tqdm

from bench.claims import Shard, execute_claimed
from bench.features import FeatureConfig
from bench.models import preset_config
from bench.registry import BACKBONES, DATASETS, METHODS, BenchError
from bench.results import RecordStore
from bench.runner import RunSpec, Workspace
from bench.train import TrainConfig

log = logging.getLogger("bench")

DEFAULT_PRESETS = {"baseline": ("lightweight", "large")}  # others deploy at the lightweight budget


@dataclass
class Grid:
    """The axes of a benchmark; ``presets`` empty means each method's default presets."""

    methods: list[str] = field(default_factory=list)  # empty = every registered method
    backbones: list[str] = field(default_factory=lambda: ["convtransformer"])
    presets: list[str] | dict = field(default_factory=list)  # or {method: [presets]} (others: their defaults)
    datasets: list[str] = field(default_factory=lambda: ["embedded"])
    folds: list[int] = field(default_factory=lambda: [1])
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainConfig = TrainConfig()
    features: FeatureConfig = FeatureConfig()
    method_params: dict = field(default_factory=dict)
    dataset_params: dict = field(default_factory=dict)  # {dataset: {param: value}}
    data_roots: dict = field(default_factory=dict)
    teacher_preset: str = "large"

    def validate(self) -> None:
        for name in self.backbones:
            BACKBONES.get(name)
            for preset in {p for m in self.method_names() for p in self.presets_for(m)}:
                preset_config(name, preset)
            preset_config(name, self.teacher_preset)
        for name in self.datasets:
            DATASETS.get(name).make_params(self.dataset_params.get(name))
        for method in self.method_names():
            for component in method.split("+"):
                METHODS.get(component).make_params(self.method_params.get(component))
            early = [c for c in method.split("+")[:-1] if getattr(METHODS.get(c).obj, "must_be_last", False)]
            if early:  # e.g. quant: nothing trains or transforms its model further
                raise BenchError(f"{early[0]} must come last in a composition, got {method!r}: e.g. hrf+{early[0]}")
        stray = set(self.presets) - set(self.method_names()) if isinstance(self.presets, dict) else set()
        if stray:
            raise BenchError(f"presets given for {sorted(stray)[0]!r}, which is not among the grid's methods")
        unused = set(self.method_params) - {c for m in self.method_names() for c in m.split("+")}
        if unused:
            raise BenchError(f"parameters given for {sorted(unused)[0]!r}, which is not among the grid's methods")
        if any(f < 1 for f in self.folds):
            raise BenchError(f"folds are numbered from 1, got {self.folds}")

    def method_names(self) -> list[str]:
        return self.methods or METHODS.names()

    def presets_for(self, method: str) -> list[str]:
        given = self.presets.get(method) if isinstance(self.presets, dict) else self.presets
        return list(given or DEFAULT_PRESETS.get(method, ("lightweight",)))

    def specs(self) -> list[RunSpec]:
        runs = []
        for dataset in self.datasets:
            for backbone in self.backbones:
                for method in self.method_names():
                    for preset in self.presets_for(method):
                        for fold in self.folds:
                            for seed in self.seeds:
                                runs.append(RunSpec(
                                    method=method, backbone=backbone, preset=preset, dataset=dataset, fold=fold,
                                    seed=seed, train=self.train, features=self.features,
                                    method_params={c: self.method_params[c] for c in method.split("+")
                                                   if c in self.method_params},
                                    dataset_params=self.dataset_params.get(dataset, {}),
                                    teacher_preset=self.teacher_preset))
        return runs


def load_config(path: Path) -> dict:
    """Read a TOML or YAML grid file into a dict of Grid fields."""
    try:
        text = Path(path).read_text()
        data = tomllib.loads(text) if Path(path).suffix == ".toml" else yaml.safe_load(text)
    except OSError as error:
        raise BenchError(f"cannot read config {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise BenchError(f"config {path} does not parse: {str(error).splitlines()[0]}") from None
    data = data or {}
    known = {f.name for f in fields(Grid)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BenchError(f"config {path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    return data


def make_grid(values: dict) -> Grid:
    """Grid from plain values (config file merged with CLI flags); nested settings become dataclasses."""
    values = dict(values)
    try:
        if isinstance(values.get("train"), dict):
            values["train"] = TrainConfig(**values["train"])
        if isinstance(values.get("features"), dict):
            values["features"] = FeatureConfig(**values["features"])
    except TypeError as error:
        raise BenchError(f"invalid setting: {error}") from None
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
    specs = grid.specs() if shard is None else shard.select(grid.specs())
    workspace = Workspace(cache_dir, grid.data_roots, progress, defer_latency=defer_latency, device=device, amp=amp)
    todo = [s for s in specs if force or not store.has(s.run_id)]
    if len(todo) < len(specs):
        log.info("%d of %d runs already recorded; skipping them (use --force to re-run)", len(specs) - len(todo), len(specs))
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
    records, _ = store.load()
    return [r for r in records if r["run_id"] in wanted]
