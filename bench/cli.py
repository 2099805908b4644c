"""The ``bench`` command line. Names become objects here; the core takes objects."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import importlib

import click

from bench.executors import execution_options
from bench.probe import steady_allocator
from bench.registry import BenchError, load_builtin_plugins

log = logging.getLogger("bench")


def default_cache_dir() -> Path:
    return Path(os.environ.get("HRF_BENCH_CACHE", Path.home() / ".cache" / "hrf-bench"))


def parse_list(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BenchError(f"--{what} is empty: give a comma-separated list")
    return items


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """``1,2`` or ``1-5`` -> list of ints; anything else is a one-line error."""
    if text is None:
        return None
    values = []
    for item in parse_list(text, what):
        try:
            if "-" in item[1:]:
                low, high = item.split("-", 1)
                values.extend(range(int(low), int(high) + 1))
            else:
                values.append(int(item))
        except ValueError:
            raise BenchError(f"bad --{what} value {text!r}: use integers like 1,2 or 1-5") from None
    return values


def parse_assignments(items: tuple[str, ...], what: str) -> dict[str, dict[str, str]]:
    """``("hrf.expansion_ratio=4",)`` -> ``{"hrf": {"expansion_ratio": "4"}}``."""
    result: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        owner, dot, name = target.partition(".")
        if not sep or not dot or not owner or not name:
            raise BenchError(f"bad --{what} {item!r}: use NAME.PARAM=VALUE, e.g. hrf.expansion_ratio=4")
        result.setdefault(owner, {})[name] = value
    return result


def parse_data_roots(items: tuple[str, ...], datasets: list[str]) -> dict[str, str]:
    roots = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            if len(datasets) != 1:
                raise BenchError("--data-root PATH needs exactly one dataset; use --data-root NAME=PATH")
            name, path = datasets[0], item
        roots[name] = path
    return roots


# Commands defined in their own modules, imported only when used: "name": "module:attribute".
LAZY_COMMANDS: dict[str, str] = {
    "tune": "bench.tune:tune_command",
    "report": "bench.report:report_command",
    "measure": "bench.measure_cli:measure_command",
    "export": "bench.measure_cli:export_command",
    "probe": "bench.measure_cli:probe_command",
    "import-latency": "bench.measure_cli:import_latency_command",
}


class BenchGroup(click.Group):
    """Loads the lazy commands and turns BenchError into a one-line message and exit status 2."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BenchError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)


@click.group(cls=BenchGroup)
@click.option("--verbose", "-v", is_flag=True, help="log debug messages")
def main(verbose: bool) -> None:
    """hrf-bench: which way of making a speech-emotion Transformer small keeps the most accuracy?"""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    steady_allocator()  # fewer page faults: faster training, steadier latency (see its docstring)
    load_builtin_plugins()


@main.command("list")
def list_command() -> None:
    """Print the registered methods, backbones (with presets) and datasets."""
    from bench.catalog import describe_registries
    click.echo(describe_registries())


@main.command("run")
@click.option("--config", type=click.Path(path_type=Path), help="grid file (TOML or YAML); flags override it")
@click.option("--study", help="a shipped study grid (see `bench list`), e.g. emodb; flags override it")
@click.option("--dry-run", is_flag=True, help="print the runs, the plain models they share and a compute estimate")
@click.option("--methods", help="comma-separated methods; a+b composes (default: all registered)")
@click.option("--backbones", help="comma-separated backbones (default: convtransformer)")
@click.option("--presets", help="deploy presets (default: lightweight+large for baseline, lightweight otherwise)")
@click.option("--datasets", help="comma-separated datasets (default: embedded)")
@click.option("--folds", help="fold numbers, e.g. 1,2 or 1-5 (default: 1)")
@click.option("--seeds", help="seeds, e.g. 0,1,2 (default: 0)")
@click.option("--epochs", type=int, help="training epochs")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="peak learning rate (default: each preset's recipe)")
@click.option("--weight-decay", type=float, help="(default: each preset's recipe, as below)")
@click.option("--dropout", type=float)
@click.option("--label-smoothing", type=float)
@click.option("--patience", type=int, help="early stopping: epochs without a better validation UA; 0 = never")
@click.option("--class-weighting/--no-class-weighting", default=None,
              help="weight the loss by inverse class frequency (imbalanced corpora such as daicwoz)")
@click.option("--features", "feature_kind", type=click.Choice(["logmel", "spectrogram", "mfcc"]),
              help="front-end features (default: logmel)")
@click.option("--n-mels", type=int, help="mel bins of logmel (and of the mel filterbank behind mfcc)")
@click.option("--teacher-preset", help="preset of the large model that kd/prune/lowrank start from")
@click.option("--param", "-p", "params", multiple=True, help="method parameter, METHOD.PARAM=VALUE")
@click.option("--dataset-param", "dataset_params", multiple=True, help="dataset parameter, DATASET.PARAM=VALUE")
@click.option("--data-root", "data_roots", multiple=True, help="corpus folder: PATH, or NAME=PATH (repeatable)")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="features, corpora and trained models [env HRF_BENCH_CACHE, default ~/.cache/hrf-bench]")
@click.option("--force", is_flag=True, help="re-run runs already recorded")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
@execution_options
def run_command(config, study, dry_run, methods, backbones, presets, datasets, folds, seeds, epochs, batch_size, lr,
                weight_decay, dropout, label_smoothing, patience, teacher_preset, params, dataset_params, data_roots,
                results_dir, cache_dir, force, quiet, class_weighting, feature_kind, n_mels, execution) -> None:
    """Run a benchmark grid; runs already recorded are skipped."""
    from bench.grid import load_config, make_grid
    from bench.summary import print_summary
    from bench.results import RecordStore

    if config and study:
        raise BenchError("give either --config or --study, not both")
    if study:
        from bench.studies import study_path
        config = study_path(study)
    values = load_config(config) if config else {}
    flags = {"methods": parse_list(methods, "methods"), "backbones": parse_list(backbones, "backbones"),
             "presets": parse_list(presets, "presets"), "datasets": parse_list(datasets, "datasets"),
             "folds": parse_ints(folds, "folds"), "seeds": parse_ints(seeds, "seeds"),
             "teacher_preset": teacher_preset}
    values.update({k: v for k, v in flags.items() if v is not None})
    train = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "dropout": dropout,
             "label_smoothing": label_smoothing, "patience": patience, "class_weighting": class_weighting}
    values["train"] = dict(values.get("train", {})) | {k: v for k, v in train.items() if v is not None}
    features = {"kind": feature_kind, "n_mels": n_mels}
    values["features"] = dict(values.get("features", {})) | {k: v for k, v in features.items() if v is not None}
    for key, given in (("method_params", parse_assignments(params, "param")),
                       ("dataset_params", parse_assignments(dataset_params, "dataset-param"))):
        merged = dict(values.get(key, {}))
        for owner, assignments in given.items():
            merged[owner] = dict(merged.get(owner, {})) | assignments
        values[key] = merged
    values["data_roots"] = dict(values.get("data_roots", {})) | parse_data_roots(
        data_roots, values.get("datasets", ["embedded"]))
    grid = make_grid(values)
    store = RecordStore(results_dir)
    if dry_run:
        from bench.estimate import describe_plan
        click.echo(describe_plan(grid, store, force=force, device=execution.device,
                                 latency=not execution.defer_latency))
        return
    records = execution.run(grid, store, cache_dir or default_cache_dir(), force=force, progress=not quiet)
    if records is None:  # submitted without waiting
        return
    print_summary(records)
    click.echo(f"records: {store.records_dir}  table: {store.root / 'runs.csv'}")


if __name__ == "__main__":
    main()
