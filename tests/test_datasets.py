"""Dataset plug-ins on tiny fixtures in each corpus's exact on-disk layout: class mapping, counts,
protocol folds without speaker/series/participant leakage, participant-level decisions, clear
errors for broken input, and end-to-end ``bench run`` with broken files recorded as skipped."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import dataset_fixtures as fx
from bench.cli.main import main
from bench.data.corpus import Corpus, Utterance
from bench.data.features import FeatureConfig, _Frontend, read_audio
from bench.execution.grid import load_config, make_grid
from bench.training.metrics import declared_scores, scores
from bench.registry import DATASETS, BenchError
from bench.execution.workspace import Workspace
from bench.training.evaluate import evaluate
from bench.training.splits import Split

TINY = ["--methods", "baseline", "--presets", "tiny", "--folds", "1", "--seeds", "0", "--epochs", "1", "--quiet"]


def load(name: str, root: Path | None, cache_dir: Path, **params) -> Corpus:
    entry = DATASETS.get(name)
    return entry.obj(root, cache_dir, entry.make_params(params))


def parts(corpus: Corpus, fold, unit=lambda u: u.speaker) -> dict[str, set[str]]:
    return {name: {unit(corpus.utterances[i]) for i in getattr(fold, name)} for name in ("train", "val", "test")}


def assert_independent(corpus: Corpus, unit=lambda u: u.speaker) -> None:
    """Every fold has train, val and test, with no unit in two of them."""
    for fold in corpus.folds:
        split = parts(corpus, fold, unit)
        assert all(split.values()), fold.name
        assert not split["train"] & split["test"] and not split["val"] & split["test"], fold.name
        assert not split["train"] & split["val"], fold.name


def run_cli(*args: str):
    return CliRunner().invoke(main, ["run", *args], catch_exceptions=False)


def only_record(results: Path) -> dict:
    record_file, = (results / "records").glob("*.json")
    return json.loads(record_file.read_text())


@pytest.fixture(scope="module")
def emodb_root(tmp_path_factory) -> Path:
    return fx.make_emodb(tmp_path_factory.mktemp("emodb"))


def test_emodb_classes_counts_and_speaker_pair_folds(emodb_root, cache_dir):
    corpus = load("emodb", emodb_root, cache_dir)
    assert corpus.classes == ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]
    assert len(corpus.utterances) == 10 * 7 * 2  # the ._ resource fork is not an utterance
    by_id = {u.id: u for u in corpus.utterances}
    assert (by_id["03a01Wa"].label, by_id["16b02Na"].label, by_id["08a01Ea"].label) == ("anger", "neutral", "disgust")
    assert by_id["14a01Ta"].speaker == "14"
    assert len(corpus.folds) == 5
    assert [sorted(parts(corpus, f)["test"]) for f in corpus.folds] == [
        ["03", "08"], ["09", "10"], ["11", "13"], ["12", "14"], ["15", "16"]]
    assert_independent(corpus)
    assert all(len(parts(corpus, f)["val"]) == 2 for f in corpus.folds)
    assert corpus.headline_metric == "ua" and set(corpus.metrics) >= {"wa", "ua"}


def test_emodb_loso_gives_ten_single_speaker_folds(emodb_root, cache_dir):
    corpus = load("emodb", emodb_root, cache_dir, protocol="loso")
    assert [parts(corpus, f)["test"] for f in corpus.folds] == [{s} for s in fx.EMODB_SPEAKERS]
    assert_independent(corpus)


def test_ravdess_speech_only_actor_folds_and_48k_stereo_read_as_16k_mono(tmp_path, cache_dir):
    corpus = load("ravdess", fx.make_ravdess(tmp_path), cache_dir, folds=3, val_speakers=1)
    assert corpus.classes == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert len(corpus.utterances) == 6 * 8  # the song file (vocal channel 02) is left out
    assert Counter(u.label for u in corpus.utterances) == {c: 6 for c in corpus.classes}
    assert {u.speaker for u in corpus.utterances} == {f"{a:02d}" for a in range(1, 7)}
    assert [sorted(parts(corpus, f)["test"]) for f in corpus.folds] == [["01", "02"], ["03", "04"], ["05", "06"]]
    assert_independent(corpus)
    stereo = next(u for u in corpus.utterances if u.speaker == "02")
    wave = read_audio(stereo)
    assert wave.shape == (int(0.3 * 16000),)  # 48 kHz stereo -> 16 kHz mono


def test_cremad_classes_and_actor_folds(tmp_path, cache_dir):
    corpus = load("cremad", fx.make_cremad(tmp_path), cache_dir, folds=5, val_speakers=2)
    assert corpus.classes == ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    assert len(corpus.utterances) == 10 * 6
    assert {u.id: u.label for u in corpus.utterances}["1003_DFA_FEA_XX"] == "fear"
    assert [sorted(parts(corpus, f)["test"]) for f in corpus.folds][0] == ["1001", "1002"]
    assert_independent(corpus)


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return fx.make_iemocap(tmp_path_factory.mktemp("iemocap"))


def test_iemocap_four_classes_exc_merged_and_session_folds(iemocap, cache_dir):
    root, expected = iemocap
    corpus = load("iemocap", root, cache_dir)
    assert corpus.classes == ["neutral", "happy", "angry", "sad"]
    assert {u.id: u.label for u in corpus.utterances} == expected  # fru, xxx, sur dropped; exc -> happy
    assert len(corpus.utterances) == 5 * 2 * 7
    u = next(u for u in corpus.utterances if u.id == "Ses02M_script01_1_F001")
    assert (u.label, u.speaker) == ("happy", "Ses02F")
    assert u.path == root / "IEMOCAP_full_release/Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F001.wav"
    assert [f.name for f in corpus.folds] == [f"Session{n}" for n in range(1, 6)]
    for n, fold in enumerate(corpus.folds, 1):
        split = parts(corpus, fold)
        assert split["test"] == {f"Ses0{n}F", f"Ses0{n}M"}
        assert not any(s.startswith(f"Ses0{n}") for s in split["train"] | split["val"])
    assert_independent(corpus)


def test_iemocap_speaker_protocol_and_improvised_only(iemocap, cache_dir):
    root, expected = iemocap
    release = root / "IEMOCAP_full_release"  # the release folder itself is accepted too
    corpus = load("iemocap", release, cache_dir, protocol="speaker")
    assert len(corpus.folds) == 10 and [len(parts(corpus, f)["test"]) for f in corpus.folds] == [1] * 10
    assert_independent(corpus)
    improvised = load("iemocap", root, cache_dir, improvised_only=True)
    assert {u.id for u in improvised.utterances} == {i for i in expected if "_impro" in i}


def test_m3ed_official_series_split(tmp_path, cache_dir):
    root, series_of = fx.make_m3ed(tmp_path)
    corpus = load("m3ed", root, cache_dir)
    assert corpus.classes == ["happy", "neutral", "sad", "disgust", "anger", "fear", "surprise"]
    assert len(corpus.utterances) == 7 * 2 * 7 and not corpus.skipped
    assert {u.id: u.label for u in corpus.utterances}["guoer_2_5"] == "anger"
    assert len(corpus.folds) == 1
    split = parts(corpus, corpus.folds[0], unit=lambda u: series_of[u.id])
    assert split == {name: set(series) for name, series in fx.M3ED_SPLITS.items()}
    assert corpus.headline_metric == "weighted_f1"


def test_m3ed_missing_speech_file_is_recorded_not_dropped_silently(tmp_path, cache_dir):
    root, _ = fx.make_m3ed(tmp_path)
    (root / "wav" / "anjia" / "B_anjia_1_2.wav").unlink()
    corpus = load("m3ed", root, cache_dir)
    assert len(corpus.utterances) == 7 * 2 * 7 - 1
    assert len(corpus.skipped) == 1 and "B_anjia_1_2.wav" in corpus.skipped[0]


@pytest.fixture(scope="module")
def daic_root(tmp_path_factory) -> Path:
    return fx.make_daicwoz(tmp_path_factory.mktemp("daic"))


def test_daicwoz_participant_segments_and_train_dev_fold(daic_root, cache_dir):
    corpus = load("daicwoz", daic_root, cache_dir)
    assert corpus.classes == ["not_depressed", "depressed"]
    participants = fx.DAIC_TRAIN | fx.DAIC_DEV
    assert len(corpus.utterances) == len(participants) * fx.DAIC_SEGMENTS
    first = [u for u in corpus.utterances if u.speaker == "300"]
    assert [(u.start, u.end) for u in first] == [(1.0, 1.8), (2.5, 3.4), (4.7, 5.6)]  # Participant rows >= 0.5 s
    assert all(u.group == u.speaker and u.path.name == f"{u.speaker}_AUDIO.wav" for u in corpus.utterances)
    assert {u.speaker: u.label for u in corpus.utterances}["301"] == "depressed"
    fold, = corpus.folds
    split = parts(corpus, fold)
    assert split["test"] == {str(p) for p in fx.DAIC_DEV}
    assert split["train"] | split["val"] == {str(p) for p in fx.DAIC_TRAIN}
    assert_independent(corpus)
    val_labels = {fx.DAIC_TRAIN[int(p)] for p in split["val"]}
    assert val_labels == {0, 1}  # stratified: both classes among the validation participants
    assert corpus.headline_metric == "macro_f1" and "f1_depressed" in corpus.metrics
    audio = read_audio(first[1])
    assert audio.shape == (int(3.4 * 16000) - int(2.5 * 16000),)


class FirstFeatureScorer(nn.Module):
    """Logits ``(B, 2)`` = ``[0, mean over frames of feature 0]``: a real model with known outputs."""

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        score = features[:, :, 0].sum(1) / lengths
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_participant_level_decision_averages_segment_probabilities():
    # Participant "a" (depressed): one confident depressed segment outweighs two weak non-depressed ones;
    # participant "b" (not depressed): mostly weak depressed segments, one strongly not depressed.
    logits = {"a": [4.0, -0.5, -0.5], "b": [0.3, 0.3, -4.0]}
    features, labels, groups = [], [], []
    for group, label in (("a", 1), ("b", 0)):
        for value in logits[group]:
            features.append(torch.full((5, 3), value))
            labels.append(label)
            groups.append(group)
    split = Split(features, torch.tensor(labels), groups)
    by_participant = evaluate(FirstFeatureScorer(), split, 2)
    assert np.sum(by_participant["confusion"]) == 2 and by_participant["wa"] == 1.0
    by_segment = evaluate(FirstFeatureScorer(), Split(features, torch.tensor(labels)), 2)
    assert np.sum(by_segment["confusion"]) == 6 and by_segment["wa"] == pytest.approx(2 / 6)


def test_declared_metrics_include_the_depressed_class_f1():
    result = scores([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 2)
    values = declared_scores(result, ("macro_f1", "f1_depressed", "recall_depressed"), ["not_depressed", "depressed"])
    assert values["f1_depressed"] == pytest.approx(2 / 3) and values["recall_depressed"] == pytest.approx(2 / 3)
    assert values["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="unknown metric 'f1_happy'"):
        declared_scores(result, ("f1_happy",), ["not_depressed", "depressed"])


def test_features_split_column_mat_files_and_dimension_check(tmp_path, cache_dir):
    root = fx.make_features(tmp_path, split=True, mat_every=5)
    corpus = load("features", root, cache_dir)
    assert corpus.classes == ["calm", "excited", "low"] and len(corpus.utterances) == 48
    assert {u.features.suffix for u in corpus.utterances} == {".npy", ".mat"}
    fold, = corpus.folds
    assert parts(corpus, fold) == {"train": {f"spk{s}" for s in range(4)}, "val": {"spk4"}, "test": {"spk5"}}
    np.save(root / "spk0_utt1.npy", np.zeros((30, 7), dtype=np.float32))
    with pytest.raises(BenchError, match="differ in dimension: .* has 12, .*spk0_utt1.npy has 7"):
        load("features", root, cache_dir)


def test_features_speaker_folds_and_stratified_folds(tmp_path, cache_dir):
    by_speaker = load("features", fx.make_features(tmp_path / "a"), cache_dir, folds=3)
    assert len(by_speaker.folds) == 3
    assert_independent(by_speaker)
    anonymous = load("features", fx.make_features(tmp_path / "b", with_speaker=False), cache_dir, folds=4)
    tests = [set(f.test) for f in anonymous.folds]
    assert sorted(i for t in tests for i in t) == list(range(48))  # every utterance tested exactly once
    assert [len(t) for t in tests] == [12] * 4
    for label in anonymous.classes:  # stratified: each fold tests its share of every class, +-1
        counts = [sum(anonymous.utterances[i].label == label for i in t) for t in tests]
        assert max(counts) - min(counts) <= 1
    for fold in anonymous.folds:
        assert not set(fold.train) & set(fold.val) and not (set(fold.train) | set(fold.val)) & set(fold.test)


@pytest.mark.parametrize("kind, n_mels, dim", [("logmel", 64, 64), ("spectrogram", 80, 201), ("mfcc", 80, 40)])
def test_front_end_features_have_their_declared_dimension(kind, n_mels, dim):
    config = FeatureConfig(kind=kind, n_mels=n_mels)
    features = _Frontend(config)(torch.randn(16000))
    assert config.dim == dim and features.shape == (config.frames(1.0), dim)
    assert torch.isfinite(features).all()
    with pytest.raises(BenchError, match="n_mfcc <= n_mels"):
        FeatureConfig(kind="mfcc", n_mels=20)


def test_grid_file_data_roots_reach_the_loader(emodb_root, tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv("HRF_BENCH_EMODB_ROOT", raising=False)
    config = tmp_path / "grid.toml"
    config.write_text(f'datasets = ["emodb"]\n[data_roots]\nemodb = "{emodb_root}"\n')
    grid = make_grid(load_config(config))
    workspace = Workspace(cache_dir, grid.data_roots)
    assert workspace.root_for("emodb") == emodb_root
    corpus = load("emodb", workspace.root_for("emodb"), cache_dir)
    assert len(corpus.utterances) == 140


# ---- broken input: each case names the file or folder and the fix ----

@pytest.mark.parametrize("name", ["iemocap", "m3ed", "daicwoz", "emodb", "ravdess", "cremad", "features"])
def test_missing_root_says_how_to_give_it(name, cache_dir, monkeypatch):
    monkeypatch.delenv(f"HRF_BENCH_{name.upper()}_ROOT", raising=False)
    with pytest.raises(BenchError) as error:
        load(name, None, cache_dir)
    assert str(error.value) == (f"dataset {name} needs its folder: pass --data-root {name}=PATH "
                                f"or set HRF_BENCH_{name.upper()}_ROOT")
    with pytest.raises(BenchError, match=f"folder {cache_dir / 'nowhere'} given for dataset {name} does not exist"):
        load(name, cache_dir / "nowhere", cache_dir)


@pytest.mark.parametrize("name, expected", [
    ("iemocap", "does not look like iemocap: expected Session1..Session5"),
    ("m3ed", "M3ED label file annotation.json is missing"),
    ("daicwoz", "does not look like daicwoz: expected session folders XXX_P/"),
    ("emodb", "does not look like emodb: expected a wav/ folder"),
    ("ravdess", "does not look like ravdess: expected Actor_NN/"),
    ("cremad", "does not look like cremad: expected an AudioWAV/ folder"),
    ("features", "has no .csv"),
])
def test_a_folder_that_is_not_the_corpus_is_named(name, expected, tmp_path, cache_dir):
    (tmp_path / "notes.txt").write_text("some other folder\n")
    with pytest.raises(BenchError, match=expected) as error:
        load(name, tmp_path, cache_dir)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_emodb_folder_given_as_iemocap_is_rejected(emodb_root, cache_dir):
    with pytest.raises(BenchError, match=f"folder {emodb_root} does not look like iemocap"):
        load("iemocap", emodb_root, cache_dir)


def test_missing_label_files_are_named(tmp_path, cache_dir):
    root, _ = fx.make_iemocap(tmp_path / "iemocap")
    labels = root / "IEMOCAP_full_release/Session3/dialog/EmoEvaluation"
    shutil.rmtree(labels)
    with pytest.raises(BenchError, match=f"IEMOCAP label folder {labels} is missing"):
        load("iemocap", root, cache_dir)
    daic = fx.make_daicwoz(tmp_path / "daic")
    (daic / "dev_split_Depression_AVEC2017.csv").unlink()
    with pytest.raises(BenchError, match="dev_split_Depression_AVEC2017.csv is missing under"):
        load("daicwoz", daic, cache_dir)
    with pytest.raises(BenchError, match="full_test_split.csv is missing under"):
        load("daicwoz", daic, cache_dir, evaluate_on="test")
    m3ed, _ = fx.make_m3ed(tmp_path / "m3ed")
    (m3ed / "splitInfo/movie_list_val.txt").unlink()
    with pytest.raises(BenchError, match="splitInfo/movie_list_val.txt is missing"):
        load("m3ed", m3ed, cache_dir)
    features = fx.make_features(tmp_path / "features")
    with pytest.raises(BenchError, match=f"label file {features / 'other.csv'} is missing"):
        load("features", features, cache_dir, labels="other.csv")


def test_unknown_labels_name_the_file(tmp_path, cache_dir):
    emodb = fx.make_emodb(tmp_path / "emodb", texts=("a01",))
    fx.write_wav(emodb / "wav" / "03a02Xa.wav")
    with pytest.raises(BenchError, match=f"unknown emotion letter 'X' in {emodb / 'wav' / '03a02Xa.wav'}"):
        load("emodb", emodb, cache_dir)
    cremad = fx.make_cremad(tmp_path / "cremad", actors=range(1001, 1004))
    fx.write_wav(cremad / "AudioWAV" / "1001_DFA_JOY_XX.wav")
    with pytest.raises(BenchError, match="unknown emotion 'JOY' in .*1001_DFA_JOY_XX.wav"):
        load("cremad", cremad, cache_dir)
    ravdess = fx.make_ravdess(tmp_path / "ravdess", actors=range(1, 3))
    fx.write_wav(ravdess / "Audio_Speech_Actors_01-24/Actor_01/03-01-09-01-01-01-01.wav")
    with pytest.raises(BenchError, match="unknown emotion code '09' in .*03-01-09-01-01-01-01.wav"):
        load("ravdess", ravdess, cache_dir)
    iemocap, _ = fx.make_iemocap(tmp_path / "iemocap")
    label_file = iemocap / "IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    label_file.write_text(label_file.read_text().replace("\tang\t", "\tjoy\t"))
    with pytest.raises(BenchError, match=f"unknown IEMOCAP category 'joy' for Ses01F_impro01_M001 in {label_file}:"):
        load("iemocap", iemocap, cache_dir)
    m3ed, _ = fx.make_m3ed(tmp_path / "m3ed")
    annotation = m3ed / "annotation.json"
    annotation.write_text(annotation.read_text(encoding="utf-8").replace('"final_main_emo": "Fear"',
                                                                         '"final_main_emo": "Joy"'), encoding="utf-8")
    with pytest.raises(BenchError, match=f"unknown M3ED emotion 'joy' for anjia_1_6 in {annotation}"):
        load("m3ed", m3ed, cache_dir)
    daic = fx.make_daicwoz(tmp_path / "daic")
    split = daic / "train_split_Depression_AVEC2017.csv"
    split.write_text(split.read_text().replace("\n301,1,", "\n301,2,"))
    with pytest.raises(BenchError, match=f"unknown PHQ8_Binary value '2' in {split}:3"):
        load("daicwoz", daic, cache_dir)


def test_unreadable_and_empty_audio_name_the_file(tmp_path):
    corrupt = fx.write_corrupt(tmp_path / "broken.wav")
    with pytest.raises(BenchError, match=f"cannot read audio {corrupt}"):
        read_audio(Utterance("broken", "anger", "03", path=corrupt))
    empty = fx.write_header_only(tmp_path / "empty.wav")
    with pytest.raises(BenchError, match=f"audio file {empty} is empty"):
        read_audio(Utterance("empty", "anger", "03", path=empty))


# ---- end to end through ``bench run`` ----

def test_bench_run_on_emodb_layout_records_two_corrupt_files_as_skipped(tmp_path, cache_dir):
    root = fx.make_emodb(tmp_path / "emodb")
    broken = [fx.write_corrupt(root / "wav" / "03a01Wa.wav"), fx.write_header_only(root / "wav" / "10b02Ta.wav")]
    results = tmp_path / "results"
    result = run_cli("--datasets", "emodb", "--data-root", str(root), "--results-dir", str(results),
                     "--cache-dir", str(cache_dir), "--features", "mfcc", "--n-mels", "48", *TINY)
    assert result.exit_code == 0, result.output
    record = only_record(results)
    assert record["skipped_files"] == 2
    assert all(any(str(path) in message for message in record["skipped"]) for path in broken)
    assert result.output.count("skipped: ") == 2
    assert record["n_train"] + record["n_val"] + record["n_test"] == 140 - 2
    assert (record["features_kind"], record["features_n_mels"], record["dataset"]) == ("mfcc", 48, "emodb")
    assert record["classes"][0] == "anger" and 0.0 <= record["ua"] <= 1.0


def test_bench_run_on_daicwoz_decides_per_participant_with_class_weighting(daic_root, tmp_path, cache_dir):
    results = tmp_path / "results"
    result = run_cli("--datasets", "daicwoz", "--data-root", f"daicwoz={daic_root}", "--results-dir", str(results),
                     "--cache-dir", str(cache_dir), "--class-weighting", *TINY)
    assert result.exit_code == 0, result.output
    record = only_record(results)
    assert np.sum(record["confusion"]) == len(fx.DAIC_DEV)  # one decision per dev participant
    assert record["n_test"] == len(fx.DAIC_DEV) * fx.DAIC_SEGMENTS
    assert record["train_class_weighting"] is True and record["headline_metric"] == "macro_f1"
    table = pd.read_csv(results / "runs.csv")
    assert {"f1_depressed", "macro_f1"} <= set(table.columns) and 0.0 <= table.loc[0, "f1_depressed"] <= 1.0


def test_bench_run_on_a_features_folder_trains_end_to_end(tmp_path, cache_dir, monkeypatch):
    root = fx.make_features(tmp_path / "features", speakers=5, per_speaker=12, mat_every=7)
    monkeypatch.setenv("HRF_BENCH_FEATURES_ROOT", str(root))
    results = tmp_path / "results"
    result = run_cli("--datasets", "features", "--results-dir", str(results), "--cache-dir", str(cache_dir),
                     "--dataset-param", "features.folds=5", *TINY[:-3], "--epochs", "3", "--batch-size", "8", "--quiet")
    assert result.exit_code == 0, result.output
    record = only_record(results)
    assert record["classes"] == ["calm", "excited", "low"] and record["skipped_files"] == 0
    assert record["n_test"] == 12 and record["ua"] > 1 / 3  # separable arrays: better than chance
