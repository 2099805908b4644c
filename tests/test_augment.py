"""Training levers for small corpora: mixup, speed perturbation and noise on the feature frames, and a
final fit on training + validation speakers. Each is checked on its own batch, then in real tiny
trainings: reproducible from the seed, resumable, recorded, and refused with one line when invalid."""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import pytest
import torch
from click.testing import CliRunner
from torch.nn.functional import interpolate
from torch.nn.utils.rnn import pad_sequence

from bench.execution.checkpoint import resumable_fit
from bench.cli.main import main
from bench.training.models import build_backbone, recipe
from bench.registry import BenchError
from bench.execution.context import RunContext
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.augment import add_noise, augment_generator, mixup, speed_perturb
from bench.training.config import TrainConfig
from bench.training.splits import Split
from bench.training.trainer import cross_entropy_loss, fit, mixed_loss, takes_mix

ALL_ON = dict(mixup_alpha=0.4, speed_perturb=0.2, noise_std=0.3)


def padded_batch(lengths: list[int], dims: int = 8,
                 seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    utterances = [torch.randn(n, dims, generator=generator) + 1.0 for n in lengths]
    return utterances, pad_sequence(utterances, batch_first=True), torch.tensor(lengths)


def toy_split(n: int, generator: torch.Generator, classes: int = 3) -> Split:
    labels = torch.randint(0, classes, (n,), generator=generator)
    frames = torch.randint(30, 60, (n,), generator=generator).tolist()
    features = [torch.randn(t, 16, generator=generator) for t in frames]
    for f, y in zip(features, labels):
        f[:, 4 * y: 4 * y + 4] += 1.0
    return Split(features, labels)


@pytest.fixture(scope="module")
def splits() -> tuple[Split, Split]:
    generator = torch.Generator().manual_seed(0)
    return toy_split(40, generator), toy_split(24, generator)


def trained(splits, config: TrainConfig, seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_backbone("convtransformer", "tiny", 16, 3, dropout=0.1)
    result = fit(model, *splits, 3, config, seed=seed, progress=False, **options)
    return model, result


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    other = b.state_dict()
    return all(torch.equal(v, other[k]) for k, v in a.state_dict().items())


# --- each lever on one batch -------------------------------------------------------------------

def test_mixup_is_a_convex_combination_of_each_utterance_and_its_partner():
    _, feats, lengths = padded_batch([50, 42, 30, 12, 7])
    mixed, mixed_lengths, perm, lam = mixup(feats, lengths, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(5)) and perm.tolist() != list(range(5))
    assert torch.allclose(mixed, lam * feats + (1 - lam) * feats[perm])
    assert torch.equal(mixed_lengths, torch.maximum(lengths, lengths[perm]))  # the longer of the pair
    for row, length in zip(mixed, mixed_lengths.tolist()):
        assert torch.equal(row[length:], torch.zeros_like(row[length:]))  # padding of both stays zero
        assert (row[:length].abs().sum(1) > 0).all()  # every frame of the longer one is carried
    again = mixup(feats, lengths, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mixed) and again[3] == lam  # the generator decides everything
    # lambda ~ Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1))
    generator = torch.Generator().manual_seed(0)
    for alpha in (0.2, 4.0):
        draws = torch.tensor([mixup(feats, lengths, alpha, generator)[3] for _ in range(3000)])
        assert draws.min() >= 0 and draws.max() <= 1
        assert abs(draws.mean() - 0.5) < 0.03
        assert abs(draws.var() - 1 / (4 * (2 * alpha + 1))) < 0.02


def test_default_loss_mixes_both_label_sets_from_one_forward_pass():
    _, feats, lengths = padded_batch([20, 18, 15, 9])
    labels, perm, lam = torch.tensor([0, 1, 2, 1]), torch.tensor([2, 0, 3, 1]), 0.3
    torch.manual_seed(0)
    model = build_backbone("convtransformer", "tiny", 8, 3, dropout=0.0).eval()
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    loss = cross_entropy_loss(label_smoothing=0.1)
    assert takes_mix(loss)
    value = mixed_loss(loss, takes_mix(loss), model, feats, lengths, labels, (perm, lam))
    assert len(calls) == 1  # one forward
    logits = model(feats, lengths)
    ce = torch.nn.functional.cross_entropy
    expected = lam * ce(logits, labels, label_smoothing=0.1) + (1 - lam) * ce(logits, labels[perm], label_smoothing=0.1)
    assert torch.allclose(value, expected)
    unmixed = mixed_loss(loss, True, model, feats, lengths, labels, None)
    assert torch.allclose(unmixed, ce(logits, labels, label_smoothing=0.1))

    def plain(model, feats, lengths, labels):  # a loss that knows nothing of mixup: called with each label set
        return ce(model(feats, lengths), labels, label_smoothing=0.1)
    assert not takes_mix(plain)
    assert torch.allclose(mixed_loss(plain, takes_mix(plain), model, feats, lengths, labels, (perm, lam)), expected)


def test_speed_perturbation_resamples_each_utterance_within_the_declared_range():
    utterances, feats, lengths = padded_batch([300, 120, 37, 5, 1], dims=6)
    config = TrainConfig(speed_perturb=0.1)
    out, new_lengths = speed_perturb(feats, lengths, config, torch.Generator().manual_seed(0))
    assert out.shape == (5, int(new_lengths.max()), 6) and feats.min() > -10  # input left alone
    low, high = torch.round(lengths / 1.1), torch.round(lengths / 0.9)
    assert ((new_lengths >= low) & (new_lengths <= high)).all()
    assert (new_lengths != lengths).any() and new_lengths[-1] == 1
    for utterance, row, n in zip(utterances, out, new_lengths.tolist()):
        # exactly linear interpolation along time (F.interpolate per utterance), zero padding after it
        reference = interpolate(utterance.T[None], size=n, mode="linear", align_corners=False)[0].T
        assert torch.allclose(row[:n], reference, atol=1e-4)
        assert torch.equal(row[n:], torch.zeros_like(row[n:]))
        assert row[:n].min() >= utterance.min() - 1e-5 and row[:n].max() <= utterance.max() + 1e-5
    factors = [speed_perturb(feats[:1], lengths[:1], config, torch.Generator().manual_seed(s))[1].item() / 300
               for s in range(200)]
    assert 1 / 1.1 - 0.01 <= min(factors) < 0.93 and 1.07 < max(factors) <= 1 / 0.9 + 0.01  # the whole range
    off = TrainConfig(speed_perturb=0.0)
    assert speed_perturb(feats, lengths, off, torch.Generator())[0] is feats  # off: the batch itself


def test_noise_falls_on_valid_frames_only():
    _, feats, lengths = padded_batch([400, 250, 60])
    noisy = add_noise(feats, lengths, TrainConfig(noise_std=0.5), torch.Generator().manual_seed(0))
    for row, original, n in zip(noisy, feats, lengths.tolist()):
        assert torch.equal(row[n:], original[n:])
        assert (row[:n] != original[:n]).all()
    difference = torch.cat([(noisy - feats)[i, :n] for i, n in enumerate(lengths.tolist())])
    assert abs(difference.std().item() - 0.5) < 0.02 and abs(difference.mean().item()) < 0.02
    assert add_noise(feats, lengths, TrainConfig(noise_std=0.0), torch.Generator()) is feats


def test_the_augmentation_stream_follows_the_run_seed_apart_from_the_batch_order():
    draws = [torch.rand(4, generator=augment_generator(seed)) for seed in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(0)))


# --- in real training --------------------------------------------------------------------------

def test_levers_act_in_training_only_and_evaluation_sees_the_features_unchanged(splits):
    train, val = splits
    seen = {"train": [], "eval": []}

    def record(module, args):
        seen["train" if module.training else "eval"].append((args[0].clone(), args[1].clone()))
    torch.manual_seed(0)
    model = build_backbone("convtransformer", "tiny", 16, 3)
    model.register_forward_pre_hook(record)
    fit(model, train, val, 3, TrainConfig(epochs=1, batch_size=8, keep_weights="last", **ALL_ON), seed=0,
        progress=False)
    batches = seen["train"]
    assert len(batches) == math.ceil(len(train) / 8)  # one forward per batch, mixup included
    trained_lengths = torch.cat([lengths for _, lengths in batches]).tolist()
    assert sorted(trained_lengths) != sorted(f.shape[0] for f in train.features)  # speed-perturbed (and mixed)
    assert all(feats.shape[1] == int(lengths.max()) for feats, lengths in batches)  # re-padded
    # evaluation: the validation features exactly, no noise, no resampling
    evaluated = {}
    for feats, lengths in seen["eval"]:
        for row, n in zip(feats, lengths.tolist()):
            evaluated.setdefault(n, []).append(row[:n])
    for f in val.features:
        assert any(torch.equal(f, row) for row in evaluated[f.shape[0]])


def test_same_seed_same_weights_with_every_lever_on_and_each_lever_changes_them(splits):
    config = TrainConfig(epochs=2, batch_size=16, keep_weights="last", **ALL_ON)
    first, _ = trained(splits, config)
    second, _ = trained(splits, config)
    assert same_weights(first, second)
    assert not same_weights(first, trained(splits, config, seed=1)[0])
    for name in ALL_ON:  # each lever, turned off alone, gives other weights: it really acted
        assert not same_weights(first, trained(splits, replace(config, **{name: 0.0}))[0]), name


def test_final_fit_trains_on_training_and_validation_and_keeps_the_last_epoch(splits):
    train, val = splits
    utterances = []
    loss = cross_entropy_loss()

    def counting(model, feats, lengths, labels):
        utterances.append(len(labels))
        return loss(model, feats, lengths, labels)
    config = TrainConfig(epochs=2, batch_size=16, keep_weights="last", final_fit=True)
    model, result = trained(splits, config, loss_fn=counting)
    assert sum(utterances) == 2 * (len(train) + len(val))  # both splits, every epoch
    assert result.best_val_ua is None and result.best_epoch == result.deployed_epoch == result.epochs_run == 2
    assert [(h["val_loss"], h["val_ua"]) for h in result.history] == [(None, None)] * 2
    assert all(h["train_loss"] > 0 for h in result.history)
    assert not same_weights(model, trained(splits, replace(config, final_fit=False), loss_fn=counting)[0])


def test_a_final_fit_run_is_recorded_without_validation_epochs(cache_dir):
    train = TrainConfig(epochs=2, batch_size=16, final_fit=True, mixup_alpha=0.2)
    spec = RunSpec("baseline", "convtransformer", "tiny", "toy", 1, seed=0, train=train)
    workspace = Workspace(cache_dir, progress=False)
    record = execute(spec, workspace)
    assert [h["val_ua"] for h in record["history"]] == [None, None]
    # the validation speakers were trained on: no validation score, and n_fit counts them
    assert record["val_ua"] is None and record["val_wa"] is None
    assert record["n_fit"] == record["n_train"] + record["n_val"]
    assert record["best_epoch"] == record["deployed_epoch"] == 2
    assert record["recipe"] == asdict(train.resolved(recipe("convtransformer", "tiny")))
    assert record["recipe"]["final_fit"] is True and record["recipe"]["mixup_alpha"] == 0.2
    assert record["recipe"]["speed_perturb"] == record["recipe"]["noise_std"] == 0.0  # the recipe: off
    plain = execute(replace(spec, train=TrainConfig(epochs=2, batch_size=16)), workspace)
    assert plain["run_id"] != record["run_id"]
    assert plain["n_fit"] == plain["n_train"] and 0 <= plain["val_ua"] <= 1
    assert not same_weights(plain["_deploy_model"].model, record["_deploy_model"].model)


class Interrupt(KeyboardInterrupt):
    """What Ctrl-C raises, here from inside an epoch."""


def test_training_with_every_lever_on_resumes_to_the_uninterrupted_result(cache_dir, tmp_path):
    config = TrainConfig(epochs=3, batch_size=16, lr=3e-3, label_smoothing=0.0, keep_weights="last", final_fit=True,
                         **ALL_ON)
    spec = RunSpec("baseline", "convtransformer", "tiny", "toy", 1, seed=0, train=config)
    workspace = Workspace(cache_dir, progress=False)
    context = RunContext(spec, workspace.fold_data(spec), workspace)
    data = context.data

    def train(path, **options):
        model = context.new_model()
        result, resumed_from = resumable_fit(model, data.train, data.val, data.num_classes, config, 0, path,
                                             progress=False, **options)
        return model, result, resumed_from

    reference, expected, _ = train(tmp_path / "reference.pt")
    steps_per_epoch = math.ceil((len(data.train) + len(data.val)) / config.batch_size)
    loss, steps = cross_entropy_loss(), [0]

    def interrupting(model, feats, lengths, labels, mix=None):  # the default loss, until step 2 epochs + 1
        steps[0] += 1
        if steps[0] > steps_per_epoch + 1:
            raise Interrupt
        return loss(model, feats, lengths, labels, mix=mix)
    path = tmp_path / "interrupted.pt"
    with pytest.raises(Interrupt):
        train(path, loss_fn=interrupting)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    resumed, result, resumed_from = train(path)
    assert resumed_from == 1

    def untimed(history):
        return [{k: v for k, v in h.items() if k not in ("seconds", "val_seconds")} for h in history]
    assert untimed(result.history) == untimed(expected.history)
    assert same_weights(reference, resumed)


# --- invalid values ----------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"mixup_alpha": -0.1}, "mixup alpha must be a finite number >= 0"),
    ({"mixup_alpha": math.nan}, "mixup alpha must be a finite number >= 0"),
    ({"noise_std": math.inf}, "noise std must be a finite number >= 0"),
    ({"noise_std": -1.0}, "noise std must be a finite number >= 0"),
    ({"speed_perturb": -0.1}, "speed perturb must be a finite number >= 0"),
    ({"speed_perturb": 1.0}, r"speed perturb must lie in \[0, 1\)"),
    ({"final_fit": True, "keep_weights": "best"}, "--keep-weights last"),
    ({"final_fit": True, "patience": 3, "keep_weights": "best"}, "--patience 0"),
])
def test_invalid_values_are_one_line_errors(values, message):
    with pytest.raises(BenchError, match=message):
        TrainConfig(**values)


def test_final_fit_with_a_recipe_that_keeps_the_best_epoch_is_refused():
    best = recipe("convtransformer", "tiny") | {"keep_weights": "best"}
    with pytest.raises(BenchError, match="--keep-weights last"):
        TrainConfig(final_fit=True).resolved(best)
    resolved = TrainConfig(final_fit=True).resolved(recipe("convtransformer", "tiny"))
    assert resolved.keep_weights == "last" and resolved.mixup_alpha == resolved.speed_perturb == resolved.noise_std == 0


def test_run_flags_reach_the_training_settings(tmp_path):
    for flags, message in ((["--speed-perturb", "1.5"], "speed perturb must lie in [0, 1)"),
                           (["--mixup-alpha", "-1"], "mixup alpha must be a finite number >= 0"),
                           (["--noise-std", "nan"], "noise_std=nan must be a finite number"),
                           (["--final-fit", "--keep-weights", "best"], "--keep-weights last")):
        result = CliRunner().invoke(main, ["run", "--dry-run", "--datasets", "toy", "--results-dir", str(tmp_path),
                                           *flags])
        assert result.exit_code == 2 and message in result.output, result.output
