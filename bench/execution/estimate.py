"""``bench run --dry-run``: the runs of a grid, the plain models they train once and share, and an
estimate of the compute, calibrated by timing a few training and evaluation steps of every backbone and
preset involved on this machine (or the ``--device`` given).

The estimate is an upper bound for early-stopped trainings (every epoch is counted). Step times are
medians over repeated steps; the dry run reports how busy other processes kept the machine while it
calibrated, and warns when that makes the figure unreliable. A method that
trains a wider model than it deploys (``Method.training_model``: hrf, repadapter, expandnets) is timed
on that model; a final fit trains on the validation speakers too and skips the per-epoch validation.
``matched-compute`` is counted at the run's epochs (it trains a few times more). Corpus sizes are the
nominal sizes of each protocol (``CORPUS_SIZES``); real corpora differ by a few per cent.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data.features import FeatureConfig
from bench.training.models import build_backbone, model_inputs, recipe
from bench.measure.probe import usable_cores
from bench.method import Method
from bench.registry import METHODS
from bench.reporting.results import RecordStore
from bench.execution.context import cached_model_path
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.devices import autocast, check_amp, resolve_device, training_precision


@dataclass(frozen=True)
class CorpusSize:
    """Nominal size of one fold: utterances in training and evaluation (validation + test) splits."""

    train: int
    evaluate: int
    mean_seconds: float
    classes: int


# Per fold of each dataset's default protocol (a fifth of the speakers tested, a fifth of the rest for
# validation unless the protocol says otherwise). "features" assumes 3 s utterances.
CORPUS_SIZES = {
    "embedded": CorpusSize(train=576, evaluate=384, mean_seconds=1.7, classes=4),
    "emodb": CorpusSize(train=321, evaluate=214, mean_seconds=2.8, classes=7),
    "ravdess": CorpusSize(train=960, evaluate=480, mean_seconds=3.7, classes=8),
    "cremad": CorpusSize(train=4760, evaluate=2680, mean_seconds=2.5, classes=6),
    "iemocap": CorpusSize(train=3540, evaluate=1990, mean_seconds=4.5, classes=4),
    "m3ed": CorpusSize(train=17400, evaluate=7050, mean_seconds=2.4, classes=7),
    "daicwoz": CorpusSize(train=11000, evaluate=5500, mean_seconds=2.5, classes=2),
    "features": CorpusSize(train=1000, evaluate=500, mean_seconds=3.0, classes=4),
}
FALLBACK_SIZE = CorpusSize(train=1000, evaluate=500, mean_seconds=3.0, classes=4)
EVAL_BATCH = 16  # bench.training.evaluate.predict's batch
LATENCY_SECONDS_PER_RUN = 5.0  # in-run cost figures and 1-thread latency (warm-up + at least 2 s)


# Other processes' CPU use (in cores) while calibrating above which the step times, and so the
# estimate, are said to be unreliable: they then time the machine's neighbours as well as the models.
LOADED_CORES = 0.5


def _busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``), or None where unreadable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class MachineLoad:
    """What other processes ran while a block ran: ``others`` (cores they kept busy on average: all
    cores' busy time minus this process's own, over the wall time), ``cores`` (usable by this
    process) and the 1-minute load average at the end. ``others`` is None without ``/proc/stat``."""

    def __enter__(self):
        self.cores = usable_cores()
        self._start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc):
        wall, busy, own = time.perf_counter(), _busy_seconds(), _own_seconds()
        started, busy_before, own_before = self._start
        elapsed = max(wall - started, 1e-9)
        self.others = (None if busy is None or busy_before is None
                       else max(0.0, (busy - busy_before) - (own - own_before)) / elapsed)
        self.load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return False

    def line(self) -> str:
        """The machine's load as the dry run reports it, with a warning when it makes the figure unreliable."""
        average = "" if self.load_average is None else f", 1-minute load average {self.load_average:.2f}"
        if self.others is None:
            return f"  machine load while calibrating: unknown (no /proc/stat){average}"
        text = (f"  machine load while calibrating: other processes kept {self.others:.1f} of {self.cores} cores "
                f"busy{average}")
        if self.others >= LOADED_CORES:
            text += ("\n  warning: the machine was loaded while calibrating, so the step times include its "
                     "neighbours' work and the estimate is likely too high for a quiet machine (or right for one "
                     "loaded like this); calibrate on the machine that will run the study, loaded as it will be")
        return text


@dataclass(frozen=True)
class StepTimes:
    train: float  # one optimizer step at the training batch size
    forward: float  # one inference forward pass at EVAL_BATCH


def time_steps(backbone: str, preset: str, size: CorpusSize, features: FeatureConfig, batch_size: int,
               device: torch.device, steps: int = 5, amp: bool = False, method=None) -> StepTimes:
    """Seconds of a training step (bf16 autocast with ``amp``) and an evaluation forward pass on
    batches of nominal length, of the plain model or of what ``method`` (a ``Method``) trains from it:
    the median of ``steps`` timed steps after a warm-up."""
    torch.manual_seed(0)
    features, overrides = model_inputs(backbone, features)
    model = build_backbone(backbone, preset, features.dim, size.classes, **overrides)
    model = (model if method is None else method.training_model(model)).to(device)
    frames = features.frames(size.mean_seconds)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def batch(n):
        return (torch.randn(n, frames, features.dim, device=device), torch.full((n,), frames, device=device),
                torch.randint(0, size.classes, (n,), device=device))

    def timed(step, n) -> float:
        feats, lengths, labels = batch(n)
        samples = []
        for k in range(steps + 1):  # the first call warms up (allocations, kernel selection)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            step(feats, lengths, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k:
                samples.append(time.perf_counter() - started)
        # the median: robust to a disturbed step, and what a run sharing the machine sees (the minimum is a
        # quiet machine's figure, which a study's trainings do not get)
        return statistics.median(samples)

    def train_step(feats, lengths, labels):
        model.train()
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(feats, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward(feats, lengths, labels):
        model.eval()
        with torch.inference_mode():
            model(feats, lengths)

    return StepTimes(timed(train_step, batch_size), timed(forward, EVAL_BATCH))


@dataclass
class Plan:
    """What a dry run found: the runs to execute and the plain models they need."""

    runs: list[RunSpec]
    recorded: int
    plain_models: dict[str, tuple[RunSpec, str]]  # cache name -> (a run needing it, preset)
    users: Counter  # cache name -> runs that use it
    cached: set[str]  # plain models already trained (reused as they are, --force included)


def plan(specs: list[RunSpec], store: RecordStore, cache_dir: Path, force: bool = False) -> Plan:
    todo = [s for s in specs if force or not store.has(s.run_id)]
    plain, users = {}, Counter()
    for spec in todo:
        presets = [spec.preset] if _method(spec.components[0]).trains_at == "plain" else []
        presets += [spec.teacher_preset] if spec.uses_teacher() else []
        for preset in presets:
            name = spec.plain_model_name(preset)
            plain.setdefault(name, (spec, preset))
            users[name] += 1
    cached = {name for name in plain if cached_model_path(cache_dir, name).exists()}
    return Plan(todo, len(specs) - len(todo), plain, users, cached)


class Calibration:
    """Step times per (backbone, preset, dataset, batch size), timed once each on ``device``."""

    def __init__(self, device: torch.device, amp: bool = False):
        self.device, self.amp = device, amp
        self.times: dict[tuple, StepTimes] = {}

    def get(self, spec: RunSpec, preset: str, component: str | None = None) -> StepTimes:
        """Step times of the plain ``preset`` model, or of what ``component`` trains from it when that
        method declares another training model (``Method.training_model``)."""
        method = None
        if component is not None and _method(component).training_model is not Method.training_model:
            method = METHODS.get(component).obj(METHODS.get(component).make_params(spec.method_params.get(component)))
        key = (spec.backbone, preset, spec.dataset, spec.train.batch_size, spec.features,
               None if method is None else (component, repr(method.params)))
        if key not in self.times:
            self.times[key] = time_steps(spec.backbone, preset, size_of(spec.dataset), spec.features,
                                         spec.train.batch_size, self.device, amp=self.amp, method=method)
        return self.times[key]

    def epoch_seconds(self, spec: RunSpec, preset: str, teacher: str | None = None,
                      component: str | None = None) -> float:
        """One training epoch at ``preset`` (of ``component``'s training model; plus the teacher's forward
        passes) and its validation; a final fit trains on the validation speakers too and has none."""
        size, times = size_of(spec.dataset), self.get(spec, preset, component)
        final_fit = spec.train_config(preset).final_fit
        # the validation part: about half of the evaluation utterances (a fifth of the speakers tested,
        # a fifth to a quarter of the rest validated)
        validation = size.evaluate / 2
        steps = math.ceil((size.train + (validation if final_fit else 0)) / spec.train.batch_size)
        seconds = steps * times.train + (0 if final_fit else math.ceil(validation / EVAL_BATCH) * times.forward)
        if teacher is not None:  # distillation: one teacher forward per training batch
            seconds += steps * self.get(spec, teacher).forward * spec.train.batch_size / EVAL_BATCH
        return seconds


def size_of(dataset: str) -> CorpusSize:
    return CORPUS_SIZES.get(dataset, FALLBACK_SIZE)


def _method(component: str):
    return METHODS.get(component).obj


def training_preset(component: str, spec: RunSpec) -> str | None:
    """The preset whose size a method component trains at (None: its training is the cached plain
    model's, counted once for all the runs that share it), as the method declares (``trains_at``)."""
    return {"plain": None, "none": None, "large": spec.teacher_preset}.get(_method(component).trains_at, spec.preset)


def run_seconds(spec: RunSpec, calibration: Calibration, latency: bool = True) -> float:
    """A run's own compute (its methods' trainings, evaluation, in-run latency), without plain models."""
    size = size_of(spec.dataset)
    seconds = math.ceil(size.evaluate / EVAL_BATCH) * calibration.get(spec, spec.preset).forward
    for component in spec.components:
        preset = training_preset(component, spec)
        if preset is not None:
            teacher = spec.teacher_preset if _method(component).teacher_forward_per_step else None
            seconds += spec.train.epochs * calibration.epoch_seconds(spec, preset, teacher, component)
    return seconds + (LATENCY_SECONDS_PER_RUN if latency else 0.0)


def stops_early(spec: RunSpec, preset: str) -> bool:
    """Whether ``spec``'s training at ``preset`` may stop before its last epoch (a patience is set)."""
    return bool(spec.train.resolved(recipe(spec.backbone, preset)).patience)


def describe_plan(grid, store: RecordStore, workspace: Workspace, force: bool = False, device: str = "auto",
                  latency: bool = True, max_listed: int = 40, amp: bool = False) -> str:
    """The dry-run text: runs, shared plain models and the calibrated compute estimate (``workspace``
    reads the corpus listings for the runs' identities; nothing is trained)."""
    device = resolve_device(device)
    check_amp(device, amp)
    workspace.amp = amp  # the runs' identities hold their training precision
    specs = grid.specs(workspace)
    found = plan(specs, store, workspace.cache_dir, force)
    lines = [f"{len(specs)} runs in the grid, {found.recorded} already recorded, {len(found.runs)} to run:"]
    for spec in found.runs[:max_listed]:
        extra = f" teacher {spec.teacher_preset}" if spec.uses_teacher() else ""
        lines.append(f"  {spec.run_id}  {spec.method} {spec.backbone}/{spec.preset}{extra} {spec.dataset} "
                     f"fold {spec.fold} seed {spec.seed}")
    if len(found.runs) > max_listed:
        lines.append(f"  ... and {len(found.runs) - max_listed} more")
    lines.append(f"{len(found.plain_models)} plain models trained once and reused (cached under --cache-dir/models), "
                 f"{len(found.cached)} of them already trained:")
    by_kind = defaultdict(list)  # (backbone, preset, dataset) -> cache names
    for name, (spec, preset) in found.plain_models.items():
        by_kind[(spec.backbone, preset, spec.dataset)].append(name)
    for (backbone, preset, dataset), names in sorted(by_kind.items()):
        cached = sum(name in found.cached for name in names)
        lines.append(f"  {backbone}/{preset} {dataset}: {len(names)} models (fold x seed), used by "
                     f"{sum(found.users[name] for name in names)} runs" + (f"; {cached} cached" if cached else ""))
    calibration = Calibration(device, amp)
    started = time.perf_counter()
    with MachineLoad() as load:
        plain_seconds = sum(spec.train.epochs * calibration.epoch_seconds(spec, preset)
                            for name, (spec, preset) in found.plain_models.items() if name not in found.cached)
        own_seconds = sum(run_seconds(spec, calibration, latency) for spec in found.runs)
    calibrated_in = time.perf_counter() - started
    total = plain_seconds + own_seconds
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                           else f" ({torch.get_num_threads()} threads)") + f", training in {training_precision(amp)}"
    lines.append(f"compute estimate on {where}, timed from {len(calibration.times)} backbone/preset step "
                 f"calibrations ({calibrated_in:.0f} s):")
    for spec, preset in {(s.backbone, p, s.dataset): (s, p) for s, p in found.plain_models.values()}.values():
        times = calibration.get(spec, preset)
        lines.append(f"  {spec.backbone}/{preset} on {spec.dataset}: {times.train * 1000:.0f} ms per training step "
                     f"(batch {spec.train.batch_size}), {calibration.epoch_seconds(spec, preset):.1f} s per epoch")
    for (backbone, preset, dataset, _, _, method), times in calibration.times.items():
        if method is not None:  # a method that trains a wider model than the plain one
            lines.append(f"  {backbone}/{preset} on {dataset}, as {method[0]} trains it: "
                         f"{times.train * 1000:.0f} ms per training step")
    lines.append(load.line())
    lines.append(f"  plain models still to train: {plain_seconds / 3600:.2f} h ({plain_seconds / 60:.2f} min); "
                 f"the runs' own training, evaluation and latency: {own_seconds / 3600:.2f} h")
    early = any(stops_early(s, p) for s, p in found.plain_models.values()) or any(stops_early(s, s.preset)
                                                                                for s in found.runs)
    lines.append(f"  total: {total / 3600:.2f} device-hours on {device.type} ({total / 60:.0f} min for one worker"
                 + ("; an upper bound where early stopping ends trainings sooner)" if early else ")"))
    sizes = sorted({spec.dataset for spec in found.runs})
    lines.append("  nominal corpus sizes per fold: " + "; ".join(
        f"{d} {size_of(d).train} training / {size_of(d).evaluate} evaluation utterances of "
        f"{size_of(d).mean_seconds:g} s" for d in sizes))
    return "\n".join(lines)
