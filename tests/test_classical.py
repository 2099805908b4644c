"""The classical reference (``svm``) and per-speaker normalization, with real scikit-learn, ONNX Runtime
and openSMILE on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from bench.data.corpus import Corpus, Utterance
from bench.data.features import FeatureConfig, extract
from bench.registry import BenchError
from bench.execution.runner import execute
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace, normalize
from bench.training.config import TrainConfig
from bench.data.features import utterance_functionals


def toy_spec(**changes) -> RunSpec:
    values = dict(method="svm", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                  train=TrainConfig(epochs=1))
    return RunSpec(**(values | changes))


def test_functionals_are_statistics_of_the_valid_frames_only():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3)
    lengths = torch.tensor([9, 5])
    padded = x.clone()
    padded[1, 5:] = 1e6  # whatever the padding holds, the second utterance's functionals ignore it
    out = utterance_functionals(padded, lengths)
    valid = x[1, :5]
    delta = valid[1:] - valid[:-1]
    expected = torch.cat([valid.mean(0), valid.std(0, unbiased=False), valid.amin(0), valid.amax(0),
                          delta.mean(0), delta.std(0, unbiased=False), delta.amin(0), delta.amax(0)])
    assert out.shape == (2, 24)
    assert torch.allclose(out[1], expected, atol=1e-4)
    alone = utterance_functionals(x[1:, :5], lengths[1:])  # the same utterance in a batch of its own
    assert torch.allclose(out[1], alone[0], atol=1e-4)


def test_svm_run_is_recorded_like_a_model_and_decides_as_scikit_learn(cache_dir):
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    workspace = Workspace(cache_dir, progress=False)
    workspace.onnx_check = True  # the shipped ONNX graph is evaluated in ONNX Runtime
    record = execute(toy_spec(), workspace)
    assert record["status"] == "ok" and record["ua"] > 0.6  # 4 balanced classes: chance is 0.25
    assert record["onnx_status"] == "ok" and abs(record["ua_onnx"] - record["ua"]) < 1e-9
    # fitted on every training speaker (train + validation parts), C by grouped cross-validation
    assert record["svm_c"] in (0.1, 1.0, 10.0, 100.0) and 0 < record["svm_cv_ua"] <= 1
    data = workspace.fold_data(toy_spec())
    support, dim = record["svm_support_vectors"], record["svm_feature_dim"]
    assert dim == 8 * 16 and 0 < support <= record["n_train"] + record["n_val"]
    assert record["n_fit"] == record["n_train"] + record["n_val"] and record["val_ua"] is None
    assert record["params"] >= support * dim  # support vectors, dual coefficients and the scaler
    assert record["macs"] >= support * dim  # the kernel evaluations at least

    # The same fit done by hand with scikit-learn predicts the same test labels as the shipped module.
    def vectors(split):
        return torch.cat([utterance_functionals(f[None], torch.tensor([len(f)])) for f in split.features]).double().numpy()
    x = np.concatenate([vectors(data.train), vectors(data.val)])
    y = np.concatenate([data.train.labels.numpy(), data.val.labels.numpy()])
    scaler = StandardScaler().fit(x)
    svc = SVC(C=record["svm_c"], gamma="scale", class_weight="balanced").fit(scaler.transform(x), y)
    expected = svc.predict(scaler.transform(vectors(data.test)))
    model = record["_deploy_model"].model
    with torch.inference_mode():
        ours = torch.cat([model(f[None], torch.tensor([len(f)])).argmax(1) for f in data.test.features]).numpy()
    assert (ours == expected).mean() >= 0.98  # float32 module against float64 libsvm: ties may differ


def test_svm_cannot_take_another_methods_model(cache_dir):
    record = execute(toy_spec(method="baseline+svm"), Workspace(cache_dir, progress=False))
    assert record["status"] == "failed" and "cannot take another method's model" in record["status_reason"]


def test_speaker_normalization_standardizes_each_speaker_with_its_own_frames(cache_dir):
    spec = toy_spec(method="baseline", features=FeatureConfig(normalize="speaker"))
    workspace = Workspace(cache_dir, progress=False)
    data = workspace.fold_data(spec)
    for split, speakers in ((data.train, data.speakers["train"]), (data.test, data.speakers["test"])):
        for speaker in set(speakers):
            frames = torch.cat([f for f, s in zip(split.features, speakers) if s == speaker])
            assert torch.allclose(frames.mean(0), torch.zeros(16), atol=1e-4)
            assert torch.allclose(frames.std(0), torch.ones(16), atol=1e-3)
    # global normalization leaves the test speakers' means off zero: the two settings differ
    plain = workspace.fold_data(toy_spec(method="baseline", features=FeatureConfig(normalize="global")))
    assert not torch.allclose(torch.cat(plain.test.features).mean(0), torch.zeros(16), atol=1e-2)
    assert spec.run_id != toy_spec(method="baseline", features=FeatureConfig(normalize="global")).run_id
    assert spec.run_id == toy_spec(method="baseline").run_id  # per-speaker is the default


def test_log_mel_functionals_are_utterance_features_that_speaker_normalization_standardizes(cache_dir):
    workspace = Workspace(cache_dir, progress=False)
    config = FeatureConfig(kind="logmel-stats", normalize="speaker")
    spec = toy_spec(features=config)
    data = workspace.fold_data(spec)
    assert config.utterance_level and config.frames(5.0) == 1 and config.dim == 8 * 80
    assert all(f.shape == (1, 8 * 16) for f in data.train.features)  # 8 functionals of each of the 16 dims
    for split, speakers in ((data.train, data.speakers["train"]), (data.test, data.speakers["test"])):
        for speaker in set(speakers):  # each speaker's functionals standardized with that speaker's own
            vectors = torch.cat([f for f, s in zip(split.features, speakers) if s == speaker])
            assert torch.allclose(vectors.mean(0), torch.zeros(8 * 16), atol=1e-4)
    # frame-level normalization cannot standardize a speaker's spread and extremes; the functional
    # features can: globally normalized, a test speaker's functionals keep an offset
    plain = workspace.fold_data(toy_spec(features=FeatureConfig(kind="logmel-stats", normalize="global")))
    speaker = plain.speakers["test"][0]
    vectors = torch.cat([f for f, s in zip(plain.test.features, plain.speakers["test"]) if s == speaker])
    assert vectors.mean(0).abs().max() > 0.1
    record = execute(spec, workspace)
    assert record["status"] == "ok" and record["svm_feature_dim"] == 8 * 16 and record["ua"] > 0.6
    assert record["input_frames"] == 1 and record["features_kind"] == "logmel-stats"
    assert spec.run_id != toy_spec().run_id


def test_speaker_normalization_needs_speakers(tmp_path):
    utterances = [Utterance(f"u{i}", "a", f"u{i}", features=tmp_path / f"u{i}.npy") for i in range(3)]
    corpus = Corpus("nospeakers", ["a"], utterances, [])
    features = {u.id: torch.randn(4, 2) for u in utterances}
    with pytest.raises(BenchError, match="needs speaker labels"):
        normalize(corpus, features, {"train": [0, 1], "val": [], "test": [2]}, "speaker")
    with pytest.raises(BenchError, match="unknown feature normalization"):
        FeatureConfig(normalize="utterance")


def test_opensmile_functionals_are_extracted_and_cached(tmp_path):
    pytest.importorskip("opensmile", reason="the [opensmile] extra is not installed")
    rate = 16000
    t = np.arange(rate) / rate
    utterances = []
    for i, pitch in enumerate((120.0, 220.0)):
        path = tmp_path / f"tone{i}.wav"
        soundfile.write(path, (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32), rate)
        utterances.append(Utterance(f"tone{i}", "a", "s", path=path))
    corpus = Corpus("tones", ["a"], utterances, [])
    config = FeatureConfig(kind="egemaps")
    features = extract(corpus, config, tmp_path / "cache", progress=False, fingerprint="tones")
    assert features["tone0"].shape == (1, 88) == (config.frames(5.0), config.dim)
    assert not torch.allclose(features["tone0"], features["tone1"])  # the pitch functionals differ
    again = extract(corpus, config, tmp_path / "cache", progress=False, fingerprint="tones")  # from the cache
    assert torch.equal(again["tone0"], features["tone0"])


def test_plain_models_below_the_classical_reference_are_flagged_with_what_is_built_on_them(tmp_path):
    from bench.execution.grid import make_grid, run_grid
    from bench.reporting.results import RecordStore
    from bench.reporting.summary import runs_frame, summary_table

    store = RecordStore(tmp_path / "results")
    grid = make_grid({"methods": ["baseline", "hrf", "svm"], "presets": ["tiny"], "datasets": ["toy"],
                      "folds": [1, 2], "seeds": [0], "train": {"epochs": 1}})
    records = run_grid(grid, store, tmp_path / "cache", progress=False)
    by_method = {m: [r for r in records if r["method"] == m] for m in ("baseline", "hrf", "svm")}
    assert min(r["ua"] for r in by_method["svm"]) > max(r["ua"] for r in by_method["baseline"])  # one epoch
    table = summary_table(runs_frame(records), light_preset="tiny").set_index("method")
    assert "this plain model is below the classical reference svm" in table.loc["baseline", "warning"]
    assert "the plain model it is built on (baseline @tiny) is below the classical reference svm" in table.loc["hrf", "warning"]
    assert table.loc["svm", "warning"] == ""
    # the same runs with a reference that the plain model beats: no warning
    weak = [r | {"ua": 0.0} if r["method"] == "svm" else r for r in records]
    assert not summary_table(runs_frame(weak), light_preset="tiny")["warning"].astype(bool).any()
