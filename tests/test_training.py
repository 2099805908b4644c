"""Real training on tiny data: the trainer learns, picks its epoch on validation, and is reproducible."""

from __future__ import annotations

import torch

from bench.runner import RunSpec, Workspace, execute
from bench.train import Split, TrainConfig, batches, lr_factor


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
    first = execute(spec, Workspace(tmp_path / "a", progress=False))["_deploy_model"].state_dict()
    second = execute(spec, Workspace(tmp_path / "b", progress=False))["_deploy_model"].state_dict()
    other = execute(toy_spec(seed=1, train=spec.train), Workspace(tmp_path / "a", progress=False))["_deploy_model"].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_normalization_uses_training_split_only(cache_dir):
    data = Workspace(cache_dir, progress=False).fold_data(toy_spec())
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
