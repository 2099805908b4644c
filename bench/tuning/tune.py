"""``bench tune``: Optuna searches over any method parameter that declares a range.

A trial trains the method on each chosen fold and scores its deploy model on that fold's
validation split (training speakers only); the objective is the mean validation UA, optionally
paired with the deploy cost (MACs or latency) for a multi-objective (NSGA-II) search. Studies live
in an Optuna storage (SQLite under the results folder by default), can be extended by later calls,
and survive killed workers: heartbeats mark their trials stale and a callback re-queues them.
After the study, the best setting is re-run on the test folds through the ordinary grid runner,
and the trials become a tidy table and plots under ``<results-dir>/tune/``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from bench.api import default_cache_dir
from bench.execution.claims import optimize_total
from bench.execution.grid import make_grid, run_grid
from bench.execution.workspace import Workspace
from bench.flags import parse_assignments, parse_data_roots, parse_ints, parse_list
from bench.registry import METHODS, BenchError
from bench.reporting.results import RecordStore, atomic_write_text
from bench.training.config import TrainConfig
from bench.tuning.objective import COSTS, TuneSetting, make_objective
from bench.tuning.space import SearchParam, parse_search_param
from bench.tuning.storage import make_storage


def open_study(storage, name: str, setting: TuneSetting, space: list[SearchParam]) -> optuna.Study:
    """Create the study (seeded with the declared defaults) or load it for extension, refusing one
    that was created for other settings."""
    directions = ["maximize"] + ["minimize"] * (len(setting.objectives) - 1)
    existing = name in optuna.get_all_study_names(storage)
    done = 0
    if existing:
        old = optuna.load_study(study_name=name, storage=storage)
        deadline = time.time() + 30
        while "setting" not in old.user_attrs and time.time() < deadline:  # created by a worker a moment ago
            time.sleep(0.2)
        stored = old.user_attrs.get("setting", {})
        differing = sorted(k for k, v in setting.identity().items() if stored.get(k) != v)
        if differing:
            raise BenchError(f"study {name!r} was created with other settings ({differing[0]}="
                             f"{stored.get(differing[0])!r}): keep them or choose a new --study-name")
        for p in space:  # Optuna fails a trial whose parameter changes kind (or choices) mid-study
            earlier = next((t.distributions[p.key] for t in old.trials if p.key in t.distributions), None)
            try:
                if earlier is not None:
                    optuna.distributions.check_distribution_compatibility(earlier, p.distribution())
            except ValueError:
                raise BenchError(f"study {name!r} searched {p.key} as {earlier}: keep that kind and those choices "
                                 f"or choose a new --study-name") from None
        done = len(old.trials)
    seed = setting.seed * 100_003 + done  # an extension does not replay the first call's random draws
    multi = len(directions) > 1
    sampler = optuna.samplers.NSGAIISampler(seed=seed) if multi else optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.NopPruner() if multi else optuna.pruners.MedianPruner()
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if not existing:
        study.set_user_attr("setting", setting.identity())
        defaults = {p.key: {i.name: i.default for i in METHODS.get(p.component).params}[p.name] for p in space}
        start = {p.key: defaults[p.key] for p in space if p.contains(defaults[p.key])}
        if start:
            study.enqueue_trial(start, skip_if_exists=True)  # workers may create the study together
    return study


def trials_table(study: optuna.Study, space: list[SearchParam]) -> pd.DataFrame:
    """One row per trial: study, trial, state, value(s), params_*, fold_*, seconds, datetime_start."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"study": study.study_name, "trial": t.number, "state": t.state.name}
        for k, value in enumerate(t.values or [None] * len(study.directions)):
            row["value" if k == 0 else f"value_{k}"] = value
        row |= {f"params_{p.key}": t.params.get(p.key) for p in space}
        row |= {k: v for k, v in sorted(t.user_attrs.items()) if k.startswith("fold_")}
        row["seconds"] = (t.duration.total_seconds() if t.duration else None)
        row["datetime_start"] = t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None
        row["retry_of"] = t.system_attrs.get("failed_trial")
        rows.append(row)
    return pd.DataFrame(rows)


def plot_value(table: pd.DataFrame, column: str, label: str, path: Path, log: bool = False,
               limits: tuple | None = None) -> None:
    """Mean validation UA of finished trials (and each fold's UA, faint) against ``column``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import StrMethodFormatter

    done = table[table["state"] == "COMPLETE"]
    folds = done.melt(id_vars=[column], value_vars=[c for c in table.columns if c.endswith("_val_ua")],
                      value_name="fold_ua")
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    ax = figure.subplots()
    ax.scatter(folds[column], folds["fold_ua"], s=12, color="0.7", label="one fold")
    ax.scatter(done[column], done["value"], s=30, color="C0", label="mean over folds")
    if log:  # powers of two read well for widths and ratios
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    if limits is not None:  # the searched range, so that plots of a study stay comparable as it grows
        ax.set_xlim(limits)
    ax.set(xlabel=label, ylabel="validation UA", title=table["study"].iloc[0] if len(table) else "")
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


def check_study_name(name: str) -> None:
    """A study's name becomes file names under ``results/tune/``: letters, digits and ``. _ + = -``, no path."""
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise BenchError(f"--study-name {name!r} must be a plain name (letters, digits, '.', '_', '+', '=', '-'; "
                         f"at most 128; no '/' or '..'): its tables and plots are written under results/tune/")


@dataclass
class TuneResult:
    """What :func:`tune` did: the study, its trials as a table, the best trials (the Pareto front for
    two objectives) and the records of their re-runs on the test folds."""

    study: optuna.Study
    study_name: str
    storage: str
    trials: pd.DataFrame
    trials_csv: Path
    best: list[optuna.trial.FrozenTrial]
    records: list[dict]


def _items(value) -> tuple[str, ...]:
    """``--param``-style arguments from the API: one string, or an iterable of strings."""
    return (value,) if isinstance(value, str) else tuple(value or ())


def _numbers(value, what: str) -> str:
    """Folds or seeds from the API: ``"1,2"``, ``"1-5"``, an int or a list of ints."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    try:
        return ",".join(str(int(v)) for v in value)
    except (TypeError, ValueError):
        raise BenchError(f"bad {what} {value!r}: use integers like [1, 2] or a string like 1-5") from None


def tune(method: str, backbone: str = "convtransformer", preset: str = "lightweight", dataset: str = "embedded",
         params=(), *, trials: int = 20, total_trials: int | None = None, objectives: str = "ua",
         folds="1,2", test_folds=None, seeds="0", epochs: int | None = None, batch_size: int | None = None,
         lr: float | None = None, teacher_preset: str = "large", storage: str | None = None,
         study_name: str | None = None, heartbeat: int = 60, max_retry: int = 3, dataset_params=(),
         data_roots=(), results_dir: str | Path = "results", cache_dir: str | Path | None = None,
         progress: bool = True, device: str = "auto", amp: bool = False, echo=None) -> TuneResult:
    """Search ``method``'s parameters with Optuna on validation splits, then re-run the best setting on the
    test folds (``bench tune``; the same arguments, ``params`` as ``["expansion_ratio=1:8", ...]``). Trials
    train and score through ``bench run``'s path: the same device, the corpus fingerprint that names the
    cached plain models, the int8 graph for ``+quant`` and the latency ratio for a latency objective.
    ``echo``: called with one line per finished trial (None: silent)."""
    results_dir = Path(results_dir)
    if study_name is not None:
        check_study_name(study_name)
    folds, seeds = _numbers(folds, "folds"), _numbers(seeds, "seeds")
    test_folds = None if test_folds is None else _numbers(test_folds, "test folds")
    params, dataset_params, data_roots = _items(params), _items(dataset_params), _items(data_roots)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise BenchError(f"bad trials {trials!r}: a whole number >= 1")
    # Everything is validated (and the data loaded) before the storage is opened or a study created.
    components = method.split("+")
    for component in components:
        METHODS.get(component)
    objective_names = parse_list(objectives, "objectives")
    if objective_names[0] != "ua" or len(objective_names) > 2 or any(o not in COSTS for o in objective_names[1:]):
        raise BenchError(f"bad --objectives {objectives!r}: use ua, ua,macs or ua,latency")
    parsed = [parse_search_param(text, components) for text in params]
    if len({(p.component, p.name) for p in parsed}) < len(parsed):
        raise BenchError("a parameter is given twice in --param")
    space = [p for p in parsed if p.kind != "fixed"]
    fixed: dict = {}
    for p in parsed:
        if p.kind == "fixed":
            fixed.setdefault(p.component, {})[p.name] = p.choices[0]
    if not space:
        raise BenchError("nothing to search: give at least one --param NAME=LOW:HIGH or NAME=A,B")
    seed_list = parse_ints(seeds, "seeds")
    train = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    grid_values = {"methods": [method], "backbones": [backbone], "presets": [preset], "datasets": [dataset],
                   "folds": parse_ints(test_folds or folds, "test-folds"), "seeds": seed_list, "train": train,
                   "method_params": fixed, "teacher_preset": teacher_preset,
                   "dataset_params": parse_assignments(dataset_params, "dataset-param"),
                   "data_roots": parse_data_roots(data_roots, [dataset])}
    make_grid(grid_values)  # validates backbone, preset, dataset, folds and training settings
    setting = TuneSetting(method, backbone, preset, dataset, parse_ints(folds, "folds"), seed_list[0], objective_names,
                          TrainConfig(**train), fixed=fixed, dataset_params=grid_values["dataset_params"].get(dataset, {}),
                          teacher_preset=teacher_preset)
    store = RecordStore(results_dir)
    store.check_writable()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    workspace = Workspace(cache, grid_values["data_roots"], progress=progress, device=device, amp=amp)
    for fold in setting.folds:
        workspace.fold_data(setting.spec(fold, {}))
    url = storage or f"sqlite:///{(results_dir / 'optuna.db').resolve()}"
    name = study_name or f"{method}-{backbone}-{preset}-{dataset}"

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(make_storage(url, heartbeat, max_retry), name, setting, space)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if echo is not None:
            values = ", ".join(f"{v:.4g}" for v in trial.values or [])
            echo(f"trial {trial.number} {trial.state.name} {values} {trial.params}")

    objective = make_objective(setting, space, workspace)
    if total_trials:  # workers on one study stop together at exactly this many complete trials
        optimize_total(study, objective, total_trials, callbacks=[report], poll_seconds=heartbeat)
    else:
        study.optimize(objective, n_trials=trials, callbacks=[report])

    table = trials_table(study, space)
    out = results_dir / "tune"
    atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    for p in space:
        limits = None if p.kind == "categorical" else (p.low, p.high)
        plot_value(table, f"params_{p.key}", p.key, out / f"{name}_ua_vs_{p.key}.png", p.log, limits)
    if len(setting.objectives) > 1:
        plot_value(table, "value_1", setting.objectives[1], out / f"{name}_ua_vs_{setting.objectives[1]}.png")
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not finished:
        raise BenchError(f"no trial of study {name!r} completed (see {out / f'{name}.csv'}): nothing to re-run on test folds")
    best = study.best_trials if len(setting.objectives) > 1 else [study.best_trial]
    by_key = {p.key: p for p in space}
    records = []
    for trial in best:  # multi-objective: every Pareto-optimal setting
        searched: dict = {}
        for key, value in trial.params.items():
            searched.setdefault(by_key[key].component, {})[by_key[key].name] = value
        method_params = {c: dict(fixed.get(c, {})) | searched.get(c, {}) for c in components}
        grid = make_grid(grid_values | {"method_params": {c: p for c, p in method_params.items() if p}})
        records += run_grid(grid, store, cache, progress=progress, device=device, amp=amp)
    return TuneResult(study, name, url, table, out / f"{name}.csv", best, records)
