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

import json
import re
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
import optuna
import pandas as pd
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from bench.cli.main import default_cache_dir, parse_assignments, parse_data_roots, parse_ints, parse_list
from bench.data.features import FeatureConfig
from bench.execution.checkpoint import discard_run_checkpoints
from bench.execution.claims import optimize_total
from bench.execution.context import RunContext
from bench.execution.runner import deploy_model, latency_reference
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.measure import costs, onnx_io
from bench.measure.costs import LATENCY_SECONDS
from bench.paths import UserPath
from bench.registry import METHODS, BenchError
from bench.reporting.results import RecordStore, atomic_write_text
from bench.training.config import TrainConfig
from bench.training.evaluate import evaluate, scores_of

# --objectives name -> trial attribute; latency is the records' figure: the interleaved ratio to the plain
# lightweight model (absolute milliseconds drift with the machine's load between trials)
COSTS = {"macs": "macs", "latency": "latency_ratio"}


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


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter: ``component``'s ``name``, known to Optuna as ``key``."""

    component: str
    name: str
    key: str
    kind: str  # float | int | categorical | fixed (not searched)
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        return suggest(self.key, self.low, self.high, log=self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        kind = optuna.distributions.IntDistribution if self.kind == "int" else optuna.distributions.FloatDistribution
        return kind(self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        return value in self.choices if self.kind == "categorical" else self.low <= value <= self.high


def _typed(component: str, name: str, text: str, where: str):
    """``text`` as the declared type of the parameter, validated against its declared range."""
    try:
        return getattr(METHODS.get(component).make_params({name: text}), name)
    except BenchError as error:
        raise BenchError(f"--param {where}: {error}") from None


def parse_search_param(text: str, components: list[str]) -> SearchParam:
    """``NAME=LOW:HIGH[:log]`` (range), ``NAME=A,B,C`` (choices) or ``NAME=VALUE`` (kind ``fixed``, the
    value as the only choice); NAME may be ``COMPONENT.NAME`` when the method is a composition."""
    target, sep, spec = (part.strip() for part in text.partition("="))
    if not sep or not target or not spec:
        raise BenchError(f"bad --param {text!r}: use NAME=LOW:HIGH[:log], NAME=A,B,C or NAME=VALUE")
    component, _, name = target.rpartition(".")
    owners = [component] if component else [c for c in components if name in {p.name for p in METHODS.get(c).params}]
    if component and component not in components:
        raise BenchError(f"--param {text}: {component!r} is not part of the tuned method {'+'.join(components)!r}")
    if len(owners) != 1 or name not in {p.name for p in METHODS.get(owners[0]).params}:
        declared = ", ".join(f"{c}.{p.name}" for c in components for p in METHODS.get(c).params) or "none"
        problem = "is ambiguous: prefix it with its method" if len(owners) > 1 else "is not a parameter"
        raise BenchError(f"--param {text}: {target!r} {problem}; searchable parameters: {declared}")
    component = owners[0]
    info = {p.name: p for p in METHODS.get(component).params}[name]
    key = name if len(components) == 1 else f"{component}.{name}"
    has_range = info.low is not None or info.high is not None
    if ":" in spec:
        if info.choices is not None or not has_range or info.type not in (int, float):
            raise BenchError(f"--param {text}: {info.describe()} declares no numeric range; give choices "
                             f"({name}=A,B) or one value")
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise BenchError(f"--param {text} does not parse: use {name}=LOW:HIGH or {name}=LOW:HIGH:log")
        try:
            info.type(parts[0]), info.type(parts[1])
        except ValueError:
            raise BenchError(f"--param {text} does not parse: LOW and HIGH must be {info.type.__name__}s") from None
        low, high = (_typed(component, name, part, text) for part in parts[:2])
        log = len(parts) == 3 or info.log
        if low >= high or (log and low <= 0):
            raise BenchError(f"--param {text}: need LOW < HIGH{' and LOW > 0 for a log scale' if log else ''}")
        return SearchParam(component, name, key, info.type.__name__, low, high, log)
    if "," in spec:
        if info.choices is None and not has_range and info.type is not bool:
            raise BenchError(f"--param {text}: {info.describe()} declares no range or choices, so it cannot be searched")
        values = [_typed(component, name, v.strip(), text) for v in spec.split(",") if v.strip()]
        return SearchParam(component, name, key, "categorical", choices=tuple(dict.fromkeys(values)))
    return SearchParam(component, name, key, "fixed", choices=(_typed(component, name, spec, text),))


@dataclass
class TuneSetting:
    """What every trial of a study shares; stored with the study so that extensions match it."""

    method: str
    backbone: str
    preset: str
    dataset: str
    folds: list[int]
    seed: int
    objectives: list[str]
    train: TrainConfig = TrainConfig()
    features: FeatureConfig = FeatureConfig()
    fixed: dict = field(default_factory=dict)  # {component: {param: value}} not searched
    dataset_params: dict = field(default_factory=dict)
    teacher_preset: str = "large"

    def spec(self, fold: int, searched: dict) -> RunSpec:
        params = {c: dict(self.fixed.get(c, {})) | searched.get(c, {}) for c in self.method.split("+")}
        return RunSpec(self.method, self.backbone, self.preset, self.dataset, fold, self.seed, self.train,
                       self.features, {c: p for c, p in params.items() if p}, self.dataset_params, self.teacher_preset)

    def identity(self) -> dict:
        identity = json.loads(json.dumps(asdict(self), default=str))
        if "latency" in self.objectives:  # its unit changed (ms -> ratio): older studies must not be extended
            identity["latency_objective"] = COSTS["latency"]
        return identity


def validation_scores(spec: RunSpec, workspace: Workspace, cost: str | None = None) -> dict:
    """Train and deploy ``spec``'s method, then score the deploy model on the validation split only
    (the test split is never touched) and measure its cost when asked."""
    if spec.train_config().final_fit:
        raise BenchError("tuning scores on the validation speakers: it cannot train on them (final_fit)")
    data = workspace.fold_data(spec)
    # as `bench run` does: the fingerprint names the cached plain models a trial reuses (the large one too)
    spec = replace(spec, corpus_fingerprint=data.fingerprint)
    shipped, _, _ = deploy_model(RunContext(spec, data, workspace))
    model, graph = shipped.model.to("cpu"), shipped.graph
    if graph is None:
        scores = {"val_ua": evaluate(model, data.val, data.num_classes)["ua"]}
    else:  # what ships is the method's graph (quant's int8 one): scored in ONNX Runtime, as recorded runs are
        scores = {"val_ua": scores_of(onnx_io.predict_graph(graph, data.val), data.val, data.num_classes)["ua"]}
    frames = spec.features.frames(LATENCY_SECONDS)
    if cost == "macs":
        scores["macs"] = (onnx_io.graph_macs(graph, data.input_dim, frames)["macs"] if graph is not None
                          else costs.count_macs(model, data.input_dim, frames))
    elif cost == "latency_ratio":
        scores["latency_ratio"] = costs.deploy_latency(model, latency_reference(spec, data), data.input_dim, frames,
                                                         {}, workspace.cache_dir / "onnx-graphs",
                                                         graph=graph)["latency_ratio"]
    discard_run_checkpoints(workspace.cache_dir, spec.run_id)  # trials are not recorded runs
    return scores


def make_objective(setting: TuneSetting, space: list[SearchParam], workspace: Workspace):
    cost = COSTS.get(setting.objectives[1]) if len(setting.objectives) > 1 else None

    def objective(trial: optuna.Trial):
        searched: dict = {}
        for p in space:
            searched.setdefault(p.component, {})[p.name] = p.suggest(trial)
        uas, trial_costs = [], []
        for step, fold in enumerate(setting.folds):
            scores = validation_scores(setting.spec(fold, searched), workspace, cost)
            uas.append(scores["val_ua"])
            trial.set_user_attr(f"fold_{fold}_val_ua", scores["val_ua"])
            if cost:
                trial_costs.append(scores[cost])
                trial.set_user_attr(f"fold_{fold}_{cost}", scores[cost])
            else:  # the pruner compares running means over the same folds
                trial.report(statistics.mean(uas), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return (statistics.mean(uas), statistics.mean(trial_costs)) if cost else statistics.mean(uas)

    return objective


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


@click.command("tune")
@click.option("--method", required=True, help="method to tune (a+b composes; then name params as b.PARAM)")
@click.option("--backbone", default="convtransformer", show_default=True)
@click.option("--preset", default="lightweight", show_default=True, help="deploy preset")
@click.option("--dataset", default="embedded", show_default=True)
@click.option("--param", "-p", "params", multiple=True,
              help="NAME=LOW:HIGH[:log] range, NAME=A,B,C choices or NAME=VALUE fixed (repeatable)")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True, help="trials added by this call")
@click.option("--total-trials", type=click.IntRange(min=1),
              help="instead of --trials: run until the study has this many complete trials, shared by all workers")
@click.option("--objectives", default="ua", show_default=True, help="ua, or ua,macs / ua,latency (multi-objective)")
@click.option("--folds", default="1,2", show_default=True, help="folds whose validation splits score a trial")
@click.option("--test-folds", help="folds the best setting is re-run on (default: --folds)")
@click.option("--seeds", default="0", show_default=True, help="seeds of the final runs; trials use the first")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--teacher-preset", default="large", show_default=True)
@click.option("--storage", help="Optuna storage URL or journal:PATH (default: sqlite:///<results-dir>/optuna.db)")
@click.option("--study-name", help="default: METHOD-BACKBONE-PRESET-DATASET")
@click.option("--heartbeat", type=click.IntRange(min=1), default=60, show_default=True,
              help="seconds between heartbeats; a trial silent twice as long is failed and retried")
@click.option("--max-retry", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--dataset-param", "dataset_params", multiple=True, help="DATASET.PARAM=VALUE")
@click.option("--data-root", "data_roots", multiple=True, help="corpus folder: PATH or NAME=PATH")
@click.option("--results-dir", type=UserPath(), default=Path("results"), show_default=True)
@click.option("--cache-dir", type=UserPath(), default=None)
@click.option("--quiet", "-q", is_flag=True, help="no progress bars or per-trial lines")
@click.option("--device", default="auto", show_default=True,
              help="training device of trials and final runs: auto (CUDA when present), cpu, cuda, cuda:N")
@click.option("--amp", is_flag=True, help="bf16 autocast while training (CUDA, or a CPU with native bf16)")
def tune_command(method, backbone, preset, dataset, params, trials, objectives, folds, test_folds, seeds, epochs,
                 batch_size, lr, teacher_preset, storage, study_name, heartbeat, max_retry, dataset_params,
                 data_roots, results_dir, cache_dir, quiet, total_trials, device, amp) -> None:
    """Search a method's parameters with Optuna, then re-run the best setting on the test folds."""
    from bench.reporting.summary import print_summary

    result = tune(method, backbone, preset, dataset, params, trials=trials, total_trials=total_trials,
                  objectives=objectives, folds=folds, test_folds=test_folds, seeds=seeds, epochs=epochs,
                  batch_size=batch_size, lr=lr, teacher_preset=teacher_preset, storage=storage,
                  study_name=study_name, heartbeat=heartbeat, max_retry=max_retry, dataset_params=dataset_params,
                  data_roots=data_roots, results_dir=results_dir, cache_dir=cache_dir, progress=not quiet,
                  device=device, amp=amp, echo=None if quiet else click.echo)
    for trial in result.best:
        click.echo(f"best trial {trial.number}: validation {', '.join(f'{v:.4f}' for v in trial.values)} "
                   f"with {trial.params}")
    print_summary(result.records)
    click.echo(f"trials: {result.trials_csv}  study: {result.study_name} in {result.storage}  "
               f"records: {RecordStore(results_dir).records_dir}")


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
    from bench.execution.grid import make_grid, run_grid

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
