"""``bench tune``: an Optuna search over a method's declared parameters, from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from bench.paths import UserPath
from bench.reporting.results import RecordStore

from bench.tuning.tune import tune


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
