"""Feature extraction from real audio files, and the on-disk cache (a second run does not recompute)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from bench.data.corpus import Corpus, Utterance
from bench.data.features import FeatureConfig, cache_path, extract, read_audio


def write_corpus(folder, rate=16000, n=4) -> Corpus:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    utterances = []
    for i in range(n):
        t = np.arange(int(rate * (0.5 + 0.25 * i))) / rate
        wave = 0.3 * np.sin(2 * np.pi * (150 + 50 * i) * t) + 0.01 * rng.normal(size=t.shape)
        path = folder / f"u{i}.wav"
        soundfile.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
        utterances.append(Utterance(f"u{i}", "x", "s", path=path))
    return Corpus("wavs", ["x"], utterances, folds=[])


def test_logmel_shape_and_cache_reuse_without_the_audio(tmp_path):
    corpus = write_corpus(tmp_path / "wav")
    config = FeatureConfig(n_mels=40)
    first = extract(corpus, config, tmp_path / "cache", progress=False)
    assert first["u0"].shape == (config.frames(0.5), 40)
    assert cache_path(corpus, config, tmp_path / "cache").exists()
    # the cache key is fixed by the corpus content at creation; remove the audio: the cache must serve it
    corpus.fingerprint = "fixed"
    extract(corpus, config, tmp_path / "cache2", progress=False)
    for u in corpus.utterances:
        u.path.unlink()
    second = extract(corpus, config, tmp_path / "cache2", progress=False)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_other_settings_get_another_cache_entry(tmp_path):
    corpus = write_corpus(tmp_path / "wav")
    paths = {cache_path(corpus, c, tmp_path) for c in (FeatureConfig(), FeatureConfig(n_mels=64),
                                                       FeatureConfig(hop_ms=20), FeatureConfig(kind="mfcc"))}
    assert len(paths) == 4


@pytest.mark.parametrize("kind, dim", [("logmel", 80), ("spectrogram", 201), ("mfcc", 40)])
def test_feature_kinds(tmp_path, kind, dim):
    corpus = write_corpus(tmp_path / "wav", n=1)
    features = extract(corpus, FeatureConfig(kind=kind), tmp_path / "cache", progress=False)
    assert features["u0"].shape[1] == dim == FeatureConfig(kind=kind).dim
    assert torch.isfinite(features["u0"]).all()


def test_other_rates_are_resampled_to_16k(tmp_path):
    corpus = write_corpus(tmp_path / "wav", rate=48000, n=1)
    assert read_audio(corpus.utterances[0]).shape[0] == 8000  # 0.5 s at 16 kHz


def test_deltas_append_the_frames_regression_slope_and_get_their_own_cache_entry(tmp_path):
    corpus = write_corpus(tmp_path / "wav")
    plain = extract(corpus, FeatureConfig(n_mels=40), tmp_path / "cache", progress=False)
    config = FeatureConfig(n_mels=40, deltas=2)
    assert config.dim == 120
    assert cache_path(corpus, config, tmp_path / "cache") != cache_path(corpus, FeatureConfig(n_mels=40), tmp_path / "cache")
    dynamic = extract(corpus, config, tmp_path / "cache", progress=False)
    frames = plain["u1"]
    assert dynamic["u1"].shape == (frames.shape[0], 120)
    torch.testing.assert_close(dynamic["u1"][:, :40], frames)
    # the delta: the 5-frame regression slope (sum_n n (c[t+n] - c[t-n])) / 10, edges replicated
    padded = torch.cat([frames[:1].repeat(2, 1), frames, frames[-1:].repeat(2, 1)])
    slope = sum(n * (padded[2 + n:len(padded) - 2 + n] - padded[2 - n:len(padded) - 2 - n]) for n in (1, 2)) / 10
    torch.testing.assert_close(dynamic["u1"][:, 40:80], slope, rtol=1e-4, atol=1e-4)
    assert dynamic["u1"][:, 80:].abs().sum() > 0  # delta-delta: the slope of the slope


def test_deltas_at_their_default_leave_run_ids_and_cache_keys_as_before():
    assert "deltas" not in FeatureConfig().identity() and "deltas" not in FeatureConfig().extraction
    assert FeatureConfig(deltas=1).identity()["deltas"] == 1
