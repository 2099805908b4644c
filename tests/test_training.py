"""Real training on tiny data: the trainer learns, picks its epoch on validation, and is reproducible."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch

from bench.data.features import FeatureConfig
from bench.training.models import preset_config, recipe
from bench.registry import BenchError
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.augment import MASK_FRACTION, spec_augment
from bench.training.config import TrainConfig
from bench.training.devices import resolve_device
from bench.training.splits import Split, batches
from bench.training.trainer import lr_factor


def toy_spec(**changes) -> RunSpec:
    values = dict(method="baseline", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                  train=TrainConfig(epochs=6, batch_size=16, lr=3e-3))
    return RunSpec(**(values | changes))


def test_tiny_training_beats_chance_on_an_easy_split(cache_dir):
    record = execute(toy_spec(), Workspace(cache_dir, progress=False))
    assert record["ua"] > 0.6  # chance is 0.25 with 4 balanced classes
    assert 1 <= record["best_epoch"] <= 6
    assert record["n_test"] == 48 and record["n_train"] + record["n_val"] == 96
    assert sum(map(sum, record["confusion"])) == record["n_test"]


def test_same_seed_same_result_different_seed_differs(tmp_path):
    spec = toy_spec(train=TrainConfig(epochs=2, batch_size=16))
    # separate caches, so the second run really trains again instead of reusing the cached model
    first = execute(spec, Workspace(tmp_path / "a", progress=False))["_deploy_model"].model.state_dict()
    second = execute(spec, Workspace(tmp_path / "b", progress=False))["_deploy_model"].model.state_dict()
    other = execute(toy_spec(seed=1, train=spec.train), Workspace(tmp_path / "a", progress=False))["_deploy_model"].model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_normalization_uses_training_split_only(cache_dir):
    """Global normalization: the training split's statistics only (speaker normalization: test_classical)."""
    data = Workspace(cache_dir, progress=False).fold_data(toy_spec(features=FeatureConfig(normalize="global")))
    train_frames = torch.cat(data.train.features)
    assert torch.allclose(train_frames.mean(0), torch.zeros(train_frames.shape[1]), atol=1e-4)
    assert not torch.allclose(torch.cat(data.test.features).mean(0), torch.zeros(train_frames.shape[1]), atol=1e-4)


def test_validation_speakers_come_from_training_speakers_only(cache_dir):
    corpus, _ = Workspace(cache_dir, progress=False).corpus("toy", {}, toy_spec().features)
    for fold in corpus.folds:
        speakers = {name: {corpus.utterances[i].speaker for i in getattr(fold, name)} for name in ("train", "val", "test")}
        assert speakers["val"] and not speakers["val"] & speakers["test"] and not speakers["train"] & speakers["test"]
        assert not speakers["train"] & speakers["val"]


def test_warmup_then_cosine_schedule():
    assert lr_factor(0, 100, 10) == 0.1 and lr_factor(9, 100, 10) == 1.0
    assert abs(lr_factor(55, 100, 10) - 0.5) < 1e-9 and lr_factor(100, 100, 10) == 0.0


def test_training_batches_pad_little_yet_change_between_epochs():
    lengths = torch.randint(100, 500, (640,), generator=torch.Generator().manual_seed(0))
    split = Split([torch.zeros(int(n), 2) for n in lengths], torch.zeros(len(lengths), dtype=torch.long))
    generator = torch.Generator().manual_seed(0)
    epochs = [list(batches(split, 32, generator)) for _ in range(2)]
    for epoch in epochs:
        assert sorted(torch.cat([idx for *_, idx in epoch]).tolist()) == list(range(len(split)))  # each once
        padded = sum(feats.shape[0] * feats.shape[1] for feats, *_ in epoch)
        assert padded < 1.06 * lengths.sum()  # length-sorted: shuffled batches would pad ~2x
    memberships = [{frozenset(idx.tolist()) for *_, idx in epoch} for epoch in epochs]
    assert memberships[0] != memberships[1]  # the jitter regroups neighbours from epoch to epoch
    longest = [int(batch_lengths.max()) for _, batch_lengths, *_ in epochs[0]]
    assert longest != sorted(longest)  # batch order shuffled, not shortest first


def test_spec_augment_masks_only_inside_each_utterance_and_changes_it():
    torch.manual_seed(0)
    lengths = torch.tensor([300, 120, 37])
    feats = torch.full((3, 300, 80), 7.0)  # 7 marks padding; frames are never 0 before masking
    for row, n in zip(feats, lengths):
        row[:n] = torch.rand(n, 80) + 1.0
    config = TrainConfig(freq_masks=2, freq_mask_width=12, time_masks=2, time_mask_width=40)
    out = spec_augment(feats, lengths, config)
    assert feats.min() >= 1.0  # the input batch is left alone
    for row, original, n in zip(out, feats, lengths.tolist()):
        assert torch.equal(row[n:], original[n:])  # no mask falls on padding
        masked = row[:n] == 0
        assert masked.any()  # every utterance is changed
        kept = row[:n] != 0
        assert torch.equal(row[:n][kept], original[:n][kept])  # masked cells are zeroed, the rest kept
        frames = masked.all(1).sum().item()  # time-masked frames: every bin zero
        assert frames <= 2 * int(MASK_FRACTION * n)  # each time mask covers at most a fifth of it
        bins = masked.all(0).sum().item()
        assert bins <= 2 * 12 and int(MASK_FRACTION * 80) == 16  # 12 bins fit under the cap of 16
    narrow = spec_augment(torch.rand(4, 50, 16) + 1.0, torch.full((4,), 50), config)  # 16 features (toy)
    assert ((narrow == 0).all(1).sum(1) <= 2 * 3).all()  # frequency masks shrink to a fifth of the bins
    no_masks = TrainConfig(freq_masks=0, time_masks=0, freq_mask_width=12, time_mask_width=40)
    assert torch.equal(spec_augment(feats, lengths, no_masks), feats)


def test_spec_augment_masks_as_much_as_torchaudios_masking_does():
    """The batched masks follow torchaudio's draws: over many utterances the share of masked frames and
    bins matches ``FrequencyMasking`` and ``TimeMasking(p=0.2)`` applied one utterance at a time."""
    from torchaudio.transforms import FrequencyMasking, TimeMasking

    torch.manual_seed(0)
    config = TrainConfig(freq_masks=2, freq_mask_width=12, time_masks=2, time_mask_width=40)
    lengths = torch.randint(60, 400, (3000,))
    feats = torch.ones(len(lengths), 400, 80)
    ours = spec_augment(feats, lengths, config) == 0
    freq, time = FrequencyMasking(12), TimeMasking(40, p=MASK_FRACTION)
    reference_frames, reference_bins, frames, bins = [], [], [], []
    for row, n in zip(ours, lengths.tolist()):
        view = torch.ones(80, n)
        for _ in range(2):
            view = freq(view)
        for _ in range(2):
            view = time(view)
        reference_frames.append((view == 0).all(0).float().mean())
        reference_bins.append((view == 0).all(1).float().mean())
        frames.append(row[:n].all(1).float().mean())
        bins.append(row[:n].all(0).float().mean())
    for mine, theirs in ((frames, reference_frames), (bins, reference_bins)):
        mine, theirs = torch.stack(mine).mean().item(), torch.stack(theirs).mean().item()
        assert theirs > 0.05 and abs(mine - theirs) < 0.05 * theirs, (mine, theirs)


def test_recipe_reaches_the_model_the_trainer_and_the_record(cache_dir):
    spec = toy_spec(method="kd", train=TrainConfig(epochs=2, batch_size=16, lr=3e-3), teacher_preset="lightweight")
    record = execute(spec, Workspace(cache_dir, progress=False))
    tiny = recipe("convtransformer", "tiny")
    assert record["recipe"] == asdict(TrainConfig(epochs=2, batch_size=16, lr=3e-3).resolved(tiny))
    assert record["recipe"]["lr"] == 3e-3 and record["train_lr"] == 3e-3  # an explicit flag overrides
    assert record["recipe"]["label_smoothing"] == tiny["label_smoothing"] > 0
    assert record["train_label_smoothing"] is None  # as asked: the recipe decides
    teacher = recipe("convtransformer", "lightweight")
    assert record["teacher_recipe"]["weight_decay"] == teacher["weight_decay"]
    assert record["teacher_recipe"]["dropout"] == teacher["dropout"]
    assert record["train_device"] == "cpu"
    assert record["teacher_architecture"] == preset_config("convtransformer", "lightweight")
    assert record["architecture"] == preset_config("convtransformer", "tiny")
    # the teacher is cached under its own preset's resolved recipe (what trained it)
    ran = replace(spec, corpus_fingerprint=record["corpus_fingerprint"])  # execute fills in the corpus read
    assert (cache_dir / "models" / f"{ran.plain_model_name('lightweight')}.pt").exists()


def test_recipe_dropout_is_built_into_the_model(cache_dir):
    record = execute(toy_spec(train=TrainConfig(epochs=1, batch_size=16, dropout=0.3)), Workspace(cache_dir, progress=False))
    rates = {m.p for m in record["_deploy_model"].model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3} and record["recipe"]["dropout"] == 0.3


def test_history_has_every_epoch_and_early_stopping_shortens_it(cache_dir):
    record = execute(toy_spec(train=TrainConfig(epochs=4, batch_size=16, patience=0)), Workspace(cache_dir, progress=False))
    history = record["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert set(h) == {"epoch", "train_loss", "val_loss", "val_ua", "lr", "seconds", "val_seconds"}
        assert h["train_loss"] > 0 and h["val_loss"] > 0 and 0 <= h["val_ua"] <= 1 and h["seconds"] > 0
    assert history[-1]["lr"] < history[1]["lr"]  # cosine decay
    assert max(h["val_ua"] for h in history) == history[record["best_epoch"] - 1]["val_ua"]
    assert record["deployed_epoch"] == 4  # the recipe keeps the final epoch's weights
    # patience 1: stops one epoch after the best; a perfectly separable toy peaks early
    stopped = execute(toy_spec(train=TrainConfig(epochs=30, batch_size=16, patience=1, lr=3e-3, keep_weights="best")),
                      Workspace(cache_dir, progress=False))
    assert len(stopped["history"]) == stopped["best_epoch"] + 1 < 30
    assert stopped["deployed_epoch"] == stopped["best_epoch"]


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_kept_weights_are_the_best_validation_epochs_or_the_last_epochs(keep):
    from bench.training.models import build_backbone
    from bench.training.trainer import fit

    generator = torch.Generator().manual_seed(0)
    def split(n):  # noisy labels: validation UA wanders, so the best epoch is not the last
        return Split([torch.randn(40, 16, generator=generator) for _ in range(n)],
                     torch.randint(0, 3, (n,), generator=generator))
    train, val = split(48), split(24)
    model = build_backbone("convtransformer", "tiny", 16, 3)
    snapshots = {}
    result = fit(model, train, val, 3, TrainConfig(epochs=6, batch_size=16, patience=0, keep_weights=keep), seed=0,
                 progress=False, on_epoch_end=lambda epoch, m, _: snapshots.update(
                     {epoch: {k: v.clone() for k, v in m.state_dict().items()}}))
    assert result.best_epoch < 6 and result.epochs_run == 6
    assert result.deployed_epoch == (result.best_epoch if keep == "best" else 6)
    kept = snapshots[result.deployed_epoch]
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    other = snapshots[6 if keep == "best" else result.best_epoch]
    assert not all(torch.equal(v, other[k]) for k, v in model.state_dict().items())


def test_early_stopping_with_the_last_epochs_weights_is_a_one_line_error():
    with pytest.raises(BenchError, match="--keep-weights best"):
        TrainConfig(patience=5).resolved(recipe("convtransformer", "lightweight"))
    with pytest.raises(BenchError, match="keep weights must be one of best, last"):
        TrainConfig(keep_weights="worst")
    assert TrainConfig(patience=5, keep_weights="best").resolved(recipe("convtransformer", "large")).patience == 5


def test_device_errors_are_one_line():
    with pytest.raises(BenchError, match="use auto, cpu"):
        resolve_device("tpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from bench.training.devices import native_bf16_cpu

    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert native_bf16_cpu(with_bf16) and not native_bf16_cpu(without)
    assert not native_bf16_cpu(tmp_path / "absent")  # not Linux: say absent, never guess


def test_bf16_training_on_a_cpu_without_native_bf16_is_a_one_line_error(cache_dir, monkeypatch):
    monkeypatch.setattr("bench.training.devices.native_bf16_cpu", lambda: False)
    with pytest.raises(BenchError, match="no native bf16.*drop --amp"):
        Workspace(cache_dir, progress=False, device="cpu", amp=True)
    Workspace(cache_dir, progress=False, device="cpu")  # float32 training is unaffected


def test_bf16_cpu_training_runs_matmuls_in_bf16_keeps_float_weights_and_is_its_own_cached_model(cache_dir, monkeypatch):
    """``--amp`` on the CPU: the model's linear layers compute in bf16 while training, its weights and the
    deploy model stay float32, the test score is a float32 one, the record says the precision, and the
    plain model trained this way is cached apart from the float32 one (a run never reuses the other)."""
    monkeypatch.setattr("bench.training.devices.native_bf16_cpu", lambda: True)  # emulated where the CPU lacks it: still correct
    dtypes = set()
    original = torch.nn.Linear.forward

    def recording(self, x):
        out = original(self, x)
        if self.training:
            dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    spec = toy_spec()
    bf16 = execute(spec, Workspace(cache_dir, progress=False, device="cpu", amp=True))
    assert dtypes == {torch.bfloat16}
    assert bf16["train_precision"] == "bf16-autocast" and bf16["train_amp"] is True
    assert bf16["ua"] > 0.6 and bf16["tiny_model_cache"] == "miss"
    assert all(p.dtype == torch.float32 for p in bf16["_deploy_model"].model.parameters())
    dtypes.clear()
    fp32 = execute(spec, Workspace(cache_dir, progress=False, device="cpu"))
    assert dtypes == {torch.float32} and fp32["train_precision"] == "fp32"
    assert fp32["tiny_model_cache"] == "miss"  # trained afresh, not the bf16 model under the same settings
    bf16_spec = replace(spec, precision="bf16-autocast")
    assert spec.plain_model_name("tiny") != bf16_spec.plain_model_name("tiny")
    # the precision is part of the run's identity: a results folder holds both runs, neither "already recorded"
    filled = replace(bf16_spec, corpus_fingerprint=bf16["corpus_fingerprint"])
    assert bf16["run_id"] == filled.run_id != fp32["run_id"] == replace(filled, precision="fp32").run_id
    with pytest.raises(BenchError, match="planned at bf16-autocast training, but this process trains at fp32"):
        execute(bf16_spec, Workspace(cache_dir, progress=False, device="cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (the CPU path is tested above)")
def test_cuda_training_matches_cpu_within_noise(tmp_path):
    spec = toy_spec(train=TrainConfig(epochs=6, batch_size=16, lr=3e-3))
    cpu = execute(spec, Workspace(tmp_path / "cpu", progress=False, device="cpu"))
    cuda = execute(spec, Workspace(tmp_path / "cuda", progress=False, device="cuda", amp=True))
    assert cuda["train_device"].startswith("cuda") and cuda["train_amp"] is True
    assert abs(cuda["ua"] - cpu["ua"]) <= 0.1
    assert next(cuda["_deploy_model"].model.parameters()).device.type == "cpu"  # latency is measured on the CPU


def test_a_presets_architecture_is_part_of_the_run_identity(cache_dir, monkeypatch):
    from bench.registry import BACKBONES

    spec = toy_spec(method="kd", train=TrainConfig(epochs=1, batch_size=16), teacher_preset="lightweight")
    presets = BACKBONES.get("convtransformer").extra["presets"]
    ids = [spec.run_id]
    monkeypatch.setitem(presets, "lightweight", presets["lightweight"] | {"num_layers": 1})  # the teacher's
    ids.append(spec.run_id)
    monkeypatch.setitem(presets, "tiny", presets["tiny"] | {"d_model": 48})  # the deployed model's
    ids.append(spec.run_id)
    assert len(set(ids)) == 3  # an edited preset is a new run, not a skip over the old record
    record = execute(replace(spec, method="baseline"), Workspace(cache_dir, progress=False))
    assert record["architecture"] == presets["tiny"] and record["architecture"]["d_model"] == 48
    assert record["teacher_architecture"] is None
    assert record["_deploy_model"].model.final_norm.normalized_shape == (48,)  # built from the edited preset


def test_a_records_wall_time_is_split_into_its_phases(cache_dir):
    """Every second of a run is accounted for: the phases add up to ``wall_seconds``, each measured where
    it happens (a fresh plain model trains here, so training and validation are this run's)."""
    from bench.execution.context import PHASES

    record = execute(toy_spec(train=TrainConfig(epochs=2, batch_size=16)), Workspace(cache_dir / "fresh", progress=False))
    phases = {name: record[f"seconds_{name}"] for name in PHASES}
    assert abs(sum(phases.values()) + record["seconds_other"] - record["wall_seconds"]) < 1e-6
    workspace_checks_onnx = Workspace(cache_dir, progress=False).onnx_check  # the tests turn the check off
    assert (phases.pop("onnx") > 0) == workspace_checks_onnx
    assert all(value > 0 for value in phases.values()), phases  # every other phase ran in this run
    assert record["seconds_other"] < 0.2 * record["wall_seconds"]
    validation = sum(entry["val_seconds"] for entry in record["history"])
    assert phases["validation"] == pytest.approx(validation, rel=1e-6)
    assert phases["training"] + phases["validation"] == pytest.approx(record["fit_seconds"], rel=0.05, abs=0.05)
    deferred = execute(toy_spec(train=TrainConfig(epochs=2, batch_size=16)),
                       Workspace(cache_dir / "fresh", progress=False, defer_latency=True))
    assert deferred["seconds_latency"] == 0 and deferred["seconds_training"] == 0  # the cached model: nothing trains
    assert deferred["seconds_methods"] > 0  # loading it


def test_peak_training_memory_is_measured_and_grows_with_the_model(cache_dir):
    """The record's peak training memory is the training's own (a wider model at the same batch needs
    more for its weights, gradients, optimizer state and activations)."""
    train = TrainConfig(epochs=1, batch_size=32)
    small = execute(toy_spec(train=train), Workspace(cache_dir / "memory", progress=False, defer_latency=True))
    large = execute(toy_spec(preset="large", train=train), Workspace(cache_dir / "memory", progress=False,
                                                                     defer_latency=True))
    for record in (small, large):
        assert record["train_peak_memory_how"] == "process peak RSS above its start"
        assert record["train_peak_memory_bytes"] > 0
    assert large["train_peak_memory_bytes"] > small["train_peak_memory_bytes"] + 4 * large["params"] * 3


def test_a_diverging_training_is_a_failed_run_with_the_reason(cache_dir):
    record = execute(toy_spec(train=TrainConfig(epochs=2, batch_size=16, lr=1e30)),
                     Workspace(cache_dir / "diverge", progress=False, defer_latency=True))
    assert record["status"] == "failed" and "the training loss became nan" in record["status_reason"]
