"""The ``bench`` command line. Names become objects here; the core takes objects."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from bench import api
from bench.data.features import FEATURE_KINDS
from bench.execution.executors import execution_options
from bench.flags import parse_assignments, parse_data_roots, parse_ints, parse_list
from bench.measure.probe import steady_allocator
from bench.paths import UserPath
from bench.registry import DEFAULT_BACKBONE, BenchError

log = logging.getLogger("bench")


# Commands defined in their own modules, imported only when used: "name": "module:attribute".
LAZY_COMMANDS: dict[str, str] = {
    "tune": "bench.cli.tune:tune_command",
    "report": "bench.cli.report:report_command",
    "measure": "bench.cli.measure:measure_command",
    "export": "bench.cli.measure:export_command",
    "probe": "bench.cli.measure:probe_command",
    "import-latency": "bench.cli.measure:import_latency_command",
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
        except click.UsageError as error:  # e.g. --epochs abc: one line too, instead of click's usage block
            command = f"bench {ctx.invoked_subcommand} --help" if ctx.invoked_subcommand else "bench --help"
            click.echo(f"error: {error.format_message()} (see {command})", err=True)
            sys.exit(2)


@click.group(cls=BenchGroup)
@click.option("--verbose", "-v", is_flag=True, help="log debug messages")
def main(verbose: bool) -> None:
    """hrf-bench: which way of making a speech-emotion Transformer small keeps the most accuracy?"""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    steady_allocator()  # fewer page faults: faster training, steadier latency (see its docstring)


@main.command("list")
def list_command() -> None:
    """Print the registered methods, backbones (with presets) and datasets."""
    from bench.cli.catalog import describe_registries
    click.echo(describe_registries())


@main.command("schema")
def schema_command() -> None:
    """Print the run record's fields (Markdown): the harness's and those each method declares."""
    from bench.schema import reference
    click.echo(reference())


@main.command("run")
@click.option("--config", type=UserPath(), help="grid file (TOML or YAML); flags override it")
@click.option("--study", help="a shipped study grid (see `bench list`), e.g. emodb; flags override it")
@click.option("--dry-run", is_flag=True, help="print the runs, the plain models they share and a compute estimate")
@click.option("--methods", help="comma-separated methods; a+b composes (default: all registered)")
@click.option("--backbones", help=f"comma-separated backbones (default: {DEFAULT_BACKBONE})")
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
@click.option("--keep-weights", type=click.Choice(["best", "last"]),
              help="deploy the best validation-UA epoch's weights or the final epoch's (default: the recipe's)")
@click.option("--class-weighting/--no-class-weighting", default=None,
              help="weight the loss by inverse class frequency (imbalanced corpora such as daicwoz)")
@click.option("--mixup-alpha", type=float, help="mixup: lambda ~ Beta(alpha, alpha) per batch; 0 = off "
              "(default: the recipe's)")
@click.option("--speed-perturb", type=float, help="tempo factor uniform in [1-s, 1+s] per utterance, on the "
              "feature frames; 0 = off (default: the recipe's)")
@click.option("--noise-std", type=float, help="Gaussian noise of this std on the standardized training frames; "
              "0 = off (default: the recipe's)")
@click.option("--final-fit/--no-final-fit", default=None,
              help="train on training + validation speakers, no validation epochs (needs --keep-weights last)")
@click.option("--features", "feature_kind", type=click.Choice(list(FEATURE_KINDS)),
              help="front-end features (default: logmel; logmel-stats: log-mel functionals, egemaps and "
                   "compare: openSMILE functionals, one vector per utterance, for svm)")
@click.option("--n-mels", type=int, help="mel bins of logmel (and of the mel filterbank behind mfcc)")
@click.option("--deltas", type=click.IntRange(0, 2), help="append each frame's delta (1) or delta and "
              "delta-delta (2) to it (default 0)")
@click.option("--normalize", type=click.Choice(["global", "speaker"]),
              help="standardize features with each speaker's own statistics (speaker, default) or the "
                   "training split's (global)")
@click.option("--teacher-preset", help="preset of the large model that kd/prune/lowrank start from")
@click.option("--param", "-p", "params", multiple=True, help="method parameter, METHOD.PARAM=VALUE")
@click.option("--dataset-param", "dataset_params", multiple=True, help="dataset parameter, DATASET.PARAM=VALUE")
@click.option("--data-root", "data_roots", multiple=True, help="corpus folder: PATH, or NAME=PATH (repeatable)")
@click.option("--results-dir", type=UserPath(), default=Path("results"), show_default=True)
@click.option("--cache-dir", type=UserPath(), default=None,
              help="features, corpora and trained models [env HRF_BENCH_CACHE, default ~/.cache/hrf-bench]")
@click.option("--force", is_flag=True, help="re-run runs already recorded")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
@execution_options
def run_command(config, study, dry_run, methods, backbones, presets, datasets, folds, seeds, epochs, batch_size, lr,
                weight_decay, dropout, label_smoothing, patience, keep_weights, teacher_preset, params, dataset_params, data_roots,
                results_dir, cache_dir, force, quiet, class_weighting, mixup_alpha, speed_perturb, noise_std, final_fit,
                feature_kind, n_mels, deltas, normalize, execution) -> None:
    """Run a benchmark grid; runs already recorded are skipped."""
    from bench.execution.grid import load_config
    from bench.reporting.summary import print_summary

    if config and study is not None:
        raise BenchError("give either --config or --study, not both")
    if study is not None:  # --study "" (an unset variable) is an unknown study, not the default grid
        from bench.studies import study_path
        config = study_path(study)
    named = parse_list(datasets, "datasets") or (load_config(config).get("datasets") if config else None)
    axes = (parse_list(methods, "methods"), parse_list(backbones, "backbones"), parse_list(datasets, "datasets"),
            parse_ints(folds, "folds"), parse_ints(seeds, "seeds"))
    settings = dict(
        config=config, results_dir=results_dir, cache_dir=cache_dir, force=force, execution=execution,
        presets=parse_list(presets, "presets"), teacher_preset=teacher_preset, epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, dropout=dropout, label_smoothing=label_smoothing, patience=patience,
        keep_weights=keep_weights, mixup_alpha=mixup_alpha, speed_perturb=speed_perturb, noise_std=noise_std,
        final_fit=final_fit,
        class_weighting=class_weighting, features=feature_kind, n_mels=n_mels, deltas=deltas, normalize=normalize,
        method_params=parse_assignments(params, "param"),
        dataset_params=parse_assignments(dataset_params, "dataset-param"),
        data_roots=parse_data_roots(data_roots, named or ["embedded"]))
    if dry_run:
        click.echo(api.plan(*axes, **settings))
        return
    records = api.run(*axes, progress=not quiet, **settings)
    if records is None:  # submitted without waiting
        return
    print_summary(records)
    for record in records:  # failed runs (e.g. an unreachable budget) are recorded outcomes, named here
        if record.get("status") == "failed":
            click.echo(f"failed run {record['run_id']} ({record['method']} {record['backbone']}/{record['preset']} "
                       f"fold {record['fold']} seed {record['seed']}): {record['status_reason']}", err=True)
    click.echo(f"records: {results_dir / 'records'}  table: {results_dir / 'runs.csv'}")


if __name__ == "__main__":
    main()
