"""Where a grid's runs execute: in this process (``local``) or as a job array through submitit
(``submitit``: Slurm when ``sbatch`` is available, else submitit's local backend, which starts the
same job processes on this machine). Every job runs one shard of the grid through the same
claim -> execute -> record path as a local worker, so jobs, local workers and reruns combine freely.

Heavy modules (torch, the grid runner, submitit) are imported when a grid runs, not when the
command line is built.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bench.paths import UserPath
from bench.registry import BenchError

if TYPE_CHECKING:
    from bench.execution.claims import Shard
    from bench.execution.grid import Grid
    from bench.reporting.results import RecordStore

log = logging.getLogger("bench")


@dataclass(frozen=True)
class SubmititOptions:
    """Job-array settings; ``cluster`` None lets submitit pick (Slurm if available, else local)."""

    jobs: int = 4  # array tasks; task k runs shard k/jobs
    folder: Path | None = None  # submitit's logs and pickles (default <results>/submitit)
    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 1
    gpus_per_task: int = 0  # GPUs each task asks Slurm for (train with --device auto or cuda)
    mem_gb: float | None = None
    array_parallelism: int | None = None  # most tasks running at once (Slurm's %N); None = all
    cluster: str | None = None
    wait: bool = True  # wait for the jobs (False: submit and return)

    def __post_init__(self):
        if self.mem_gb is not None and not (math.isfinite(self.mem_gb) and self.mem_gb > 0):  # nan reached Slurm
            raise BenchError(f"--mem-gb must be a positive number, got {self.mem_gb}")
        if self.gpus_per_task < 0:
            raise BenchError(f"--gpus-per-task must be >= 0, got {self.gpus_per_task}")
        for name in ("jobs", "time_min", "cpus_per_task", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


@dataclass(frozen=True)
class Execution:
    """How ``bench run`` executes its grid."""

    executor: str = "local"  # local | submitit
    shard: Shard | None = None  # local only: the part of the grid this worker runs
    submitit: SubmititOptions = field(default_factory=SubmititOptions)
    defer_latency: bool = False  # leave latency to the serialized ``bench measure`` stage
    device: str = "auto"  # training and evaluation: auto (CUDA when present), cpu, cuda, cuda:N
    amp: bool = False  # bf16 autocast while training (CUDA, or a CPU with native bf16)

    def __post_init__(self):
        if self.executor == "submitit" and self.shard is not None:
            raise BenchError("--shard is for the local executor; --executor submitit shards the grid over --jobs")

    def run(self, grid: Grid, store: RecordStore, cache_dir: Path, force: bool = False,
            progress: bool = True) -> list[dict] | None:
        """The grid's records once its runs are recorded (None: jobs submitted, not waited for)."""
        if self.executor == "submitit":
            return run_submitit(grid, store, cache_dir, self.submitit, force, self.defer_latency, self.device, self.amp)
        from bench.execution.grid import run_grid
        return run_grid(grid, store, cache_dir, force=force, progress=progress, shard=self.shard,
                        defer_latency=self.defer_latency, device=self.device, amp=self.amp)


def execution_options(command):
    """Add the scale-out options to ``bench run``; the command receives them as ``execution``."""
    options = [
        click.option("--executor", type=click.Choice(["local", "submitit"]), default="local", show_default=True,
                     help="run here, or as a submitit job array (Slurm; local processes where there is no Slurm)"),
        click.option("--shard", help="run only shard K/N of the grid, e.g. 2/4 (for job arrays)"),
        click.option("--defer-latency", is_flag=True,
                     help="skip in-run latency (records say latency_deferred); time it in the serialized `bench measure`"),
        click.option("--device", default="auto", show_default=True,
                     help="training and evaluation device: auto (CUDA when present), cpu, cuda, cuda:N; latency stays on the CPU"),
        click.option("--amp", is_flag=True, help="bf16 autocast while training, on CUDA or on a CPU with native bf16 "
                     "(AVX512-BF16, AMX); test scores stay float32"),
        click.option("--jobs", type=int, default=4, show_default=True, help="[submitit] array tasks, one shard each"),
        click.option("--partition", help="[submitit] Slurm partition"),
        click.option("--time-min", type=int, default=240, show_default=True, help="[submitit] time limit per task, minutes"),
        click.option("--cpus-per-task", type=int, default=1, show_default=True,
                     help="[submitit] cores per task (and its torch threads)"),
        click.option("--gpus-per-task", type=int, default=0, show_default=True,
                     help="[submitit] GPUs per task (Slurm --gpus-per-task), for GPU partitions"),
        click.option("--mem-gb", type=float, help="[submitit] memory per task"),
        click.option("--array-parallelism", type=int, help="[submitit] most tasks running at once (default: all)"),
        click.option("--submitit-folder", type=UserPath(),
                     help="[submitit] job logs and pickles (default: RESULTS_DIR/submitit)"),
        click.option("--wait/--no-wait", default=True, show_default=True,
                     help="[submitit] wait for the jobs, or submit them and return"),
    ]

    @functools.wraps(command)
    def with_execution(*args, executor, shard, defer_latency, device, amp, jobs, partition, time_min, cpus_per_task,
                       gpus_per_task, mem_gb, array_parallelism, submitit_folder, wait, **kwargs):
        from bench.execution.claims import Shard
        submitit = SubmititOptions(jobs=jobs, folder=submitit_folder, partition=partition, time_min=time_min,
                                   cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, mem_gb=mem_gb,
                                   array_parallelism=array_parallelism, wait=wait)
        execution = Execution(executor, Shard.parse(shard) if shard else None, submitit, defer_latency, device, amp)
        return command(*args, execution=execution, **kwargs)

    for option in reversed(options):
        with_execution = option(with_execution)
    return with_execution


def run_shard(grid: Grid, results_dir: Path, cache_dir: Path, shard: Shard, force: bool, defer_latency: bool,
              threads: int, device: str = "auto", amp: bool = False) -> int:
    """The body of one array task: run ``shard`` of ``grid``; returns how many of its runs are recorded."""
    import torch

    from bench.execution.grid import run_grid
    from bench.registry import load_builtin_plugins
    from bench.reporting.results import RecordStore

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_builtin_plugins()
    torch.set_num_threads(threads)  # a Slurm task sees the whole node's cores; use only its own
    return len(run_grid(grid, RecordStore(results_dir), cache_dir, force=force, progress=False, shard=shard,
                        defer_latency=defer_latency, device=device, amp=amp))


def run_submitit(grid: Grid, store: RecordStore, cache_dir: Path, options: SubmititOptions, force: bool = False,
                 defer_latency: bool = False, device: str = "auto", amp: bool = False) -> list[dict] | None:
    """Run ``grid`` as a submitit job array of ``options.jobs`` shards; returns the grid's records,
    or None when not waiting for the jobs."""
    try:
        import submitit
    except ImportError:
        raise BenchError("--executor submitit needs submitit: pip install 'hrf-bench[slurm]'") from None

    from bench.execution.claims import Shard

    store.check_writable()
    folder = Path(options.folder or store.root / "submitit")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.cluster)
    executor.update_parameters(name="hrf-bench", timeout_min=options.time_min, cpus_per_task=options.cpus_per_task,
                               mem_gb=options.mem_gb, slurm_partition=options.partition,
                               slurm_array_parallelism=options.array_parallelism or options.jobs,
                               **({"slurm_gpus_per_task": options.gpus_per_task} if options.gpus_per_task else {}))
    shards = [Shard(k, options.jobs) for k in range(1, options.jobs + 1)]
    count = len(shards)
    jobs = executor.map_array(run_shard, [grid] * count, [store.root.resolve()] * count,
                              [Path(cache_dir).resolve()] * count, shards, [force] * count,
                              [defer_latency] * count, [options.cpus_per_task] * count, [device] * count, [amp] * count)
    log.info("submitted %d %s jobs (%s); logs in %s", count, executor.cluster, ", ".join(j.job_id for j in jobs), folder)
    if not options.wait:
        return None
    for job, shard in zip(jobs, shards):
        try:
            recorded = job.result()
        except Exception as error:  # submitit raises its own types, carrying the task's traceback
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise BenchError(f"job {job.job_id} (shard {shard}) failed: {lines[-1]}; see {job.paths.stderr}, "
                             f"fix and run again (recorded runs are kept)") from None
        log.info("job %s (shard %s) finished: %d runs recorded", job.job_id, shard, recorded)
    from bench.execution.workspace import Workspace
    wanted = {s.run_id for s in grid.specs(Workspace(cache_dir, grid.data_roots, progress=False))}
    records, _ = store.load()
    return [r for r in records if r["run_id"] in wanted]
