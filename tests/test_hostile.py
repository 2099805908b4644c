"""Hostile input to ``bench run``, as a new user would try it (issue 13.4): every case either stops
with a one-line ``error: ...`` and exit status 2, leaving the records, ``runs.csv`` and the caches
byte-identical, or recovers in the documented way and says so.

Every case starts from a copy of one real recorded run (``baseline``, convtransformer ``tiny``,
``toy``, 1 epoch) and its cache."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

from bench.cli.main import main
from bench.reporting.results import RecordStore, checksum

GRID = ["--methods", "baseline", "--datasets", "toy", "--presets", "tiny", "--backbones", "convtransformer"]
RUN = ["--folds", "1", "--seeds", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """``results/`` and ``cache/`` after one real run."""
    root = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HRF_BENCH_CACHE", str(root / "cache"))
        result = CliRunner().invoke(main, ["run", *GRID, *RUN, "--quiet", "--results-dir", str(root / "results")])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def world(recorded, tmp_path, monkeypatch) -> Path:
    """A private copy of the recorded run: ``results/``, ``cache/`` (also HRF_BENCH_CACHE)."""
    for name in ("results", "cache"):
        shutil.copytree(recorded / name, tmp_path / name)
    monkeypatch.setenv("HRF_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def snapshot(world: Path) -> dict[str, bytes]:
    """Every file of the results and the cache, by path (lock files hold nothing)."""
    return {str(p.relative_to(world)): p.read_bytes() for folder in ("results", "cache")
            for p in sorted((world / folder).rglob("*")) if p.is_file() and p.suffix != ".lock"}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def file_in_place(world: Path, folder: str) -> Path:
    """``folder`` under the results replaced by a file of that name."""
    path = world / "results" / folder
    if path.is_dir():
        shutil.rmtree(path)
    path.write_text("not a folder")
    return world


# (case id, extra arguments of `bench run` given the world folder, text of the one-line error)
ERRORS = [
    ("lr-nan", lambda w: [*GRID, *RUN, "--lr", "nan"], "lr=nan must be a finite number"),
    ("lr-inf", lambda w: [*GRID, *RUN, "--lr", "inf"], "lr=inf must be a finite number"),
    ("lr-negative", lambda w: [*GRID, *RUN, "--lr", "-1"], "learning rate must be > 0"),
    ("epochs-word", lambda w: [*GRID, *RUN, "--epochs", "abc"], "'abc' is not a valid integer"),
    ("epochs-negative", lambda w: [*GRID, *RUN, "--epochs", "-3"], "epochs must be >= 1"),
    ("batch-size-zero", lambda w: [*GRID, *RUN, "--batch-size", "0"], "batch size must be >= 1"),
    ("batch-size-fraction", lambda w: [*GRID, *RUN, "--batch-size", "2.5"], "'2.5' is not a valid integer"),
    ("param-nan", lambda w: [*GRID, *RUN, "--methods", "hrf", "-p", "hrf.expansion_ratio=nan"],
     "expansion_ratio=nan must be a finite number"),
    ("config-folds-string", lambda w: [*GRID, "--config", str(write(w / "g.toml", 'folds = "1-2"\nseeds = [0]\n'))],
     "folds must be a list of integers"),
    ("config-folds-float", lambda w: [*GRID, "--config", str(write(w / "g.toml", "folds = [1.0]\n"))],
     "folds must be a list of integers"),
    ("config-batch-size-fraction",
     lambda w: [*GRID, "--config", str(write(w / "g.toml", "folds = [1]\n[train]\nbatch_size = 2.5\n"))],
     "batch_size=2.5 must be an integer"),
    ("config-lr-nan", lambda w: [*GRID, "--config", str(write(w / "g.toml", "[train]\nlr = nan\n"))],
     "lr=nan must be a finite number"),
    ("config-param-list",
     lambda w: [*GRID, "--methods", "hrf", "--config", str(write(w / "g.toml", "[method_params.hrf]\nexpansion_ratio = [2]\n"))],
     "expansion_ratio=[2] is not a valid float"),
    ("config-not-a-table", lambda w: [*GRID, "--config", str(write(w / "g.yaml", "- 1\n- 2\n"))],
     "must be a table of grid settings"),
    ("config-yaml-key-twice", lambda w: [*GRID, "--config", str(write(w / "g.yaml", "folds: [1]\nfolds: [2]\n"))],
     "key 'folds' is given twice"),
    ("config-yaml-nested-key-twice",
     lambda w: [*GRID, "--config", str(write(w / "g.yaml", "train:\n  epochs: 1\n  epochs: 2\n"))],
     "key 'epochs' is given twice"),
    ("folds-reversed", lambda w: [*GRID, *RUN, "--folds", "3-1"], "range '3-1': it is empty"),
    ("cache-dir-file", lambda w: [*GRID, *RUN, "--cache-dir", str(write(w / "cachefile", "x"))], "is a file"),
    ("runs-csv-folder", lambda w: [*GRID, *RUN, "--seeds", "1"], "runs.csv is not a file"),
    ("data-root-other-dataset", lambda w: [*GRID, *RUN, "--data-root", f"emodb={w}"],
     "--data-root given for 'emodb', which is not among the grid's datasets"),
    ("dataset-param-other-dataset", lambda w: [*GRID, *RUN, "--dataset-param", "emodb.protocol=loso"],
     "--dataset-param given for 'emodb'"),
    ("preset-typo", lambda w: [*GRID, *RUN, "--presets", "tinny"], "Did you mean 'tiny'?"),
    ("param-owner-typo", lambda w: [*GRID, *RUN, "--methods", "hrf", "-p", "hfr.expansion_ratio=2"],
     "did you mean 'hrf'?"),
    ("seed-past-32-bits", lambda w: [*GRID, *RUN, "--seeds", str(2 ** 32)], "seeds must be < 2**32"),
    ("fold-twice", lambda w: [*GRID, *RUN, "--folds", "1,1"], "folds: 1 is given twice"),
    ("method-twice", lambda w: [*GRID, *RUN, "--methods", "baseline,baseline"], "methods: 'baseline' is given twice"),
    ("component-twice", lambda w: [*GRID, *RUN, "--methods", "hrf+hrf"], "composes hrf twice"),
    ("epochs-huge", lambda w: [*GRID, *RUN, "--epochs", str(10 ** 30)], "epochs must be >= 1 and at most"),
    ("fold-huge", lambda w: [*GRID, *RUN, "--folds", "100000000"], "past any protocol's folds"),
    ("fold-range-huge", lambda w: [*GRID, *RUN, "--folds", "1-100000000"], "more than 10000 values"),
    ("n-mels-on-arrays", lambda w: [*GRID, *RUN, "--n-mels", "40"],
     "dataset toy ships pre-extracted feature arrays, so n-mels=40 cannot apply"),
    ("features-on-arrays", lambda w: [*GRID, *RUN, "--features", "mfcc"],
     "dataset toy ships pre-extracted feature arrays, so --features mfcc cannot apply"),
    ("fold-past-the-corpus", lambda w: [*GRID, *RUN, "--folds", "4"], "fold 4 does not exist for toy: choose from 1..3"),
    ("n-mels-huge", lambda w: [*GRID, *RUN, "--n-mels", "100000"], "n_mels must be at most 512"),
    ("deltas-three", lambda w: [*GRID, *RUN, "--deltas", "3"], "3 is not in the range 0<=x<=2"),
    ("expansion-below-one-unit", lambda w: [*GRID, *RUN, "--methods", "hrf", "-p", "hrf.expansion_ratio=1e-300"],
     "hrf expansion_ratio 1e-300 gives the expansion of a"),
    ("config-not-utf8", lambda w: [*GRID, "--config", str(write_bytes(w / "g.toml", b"folds = [1]\n# \xff\xfe\n"))],
     "is not UTF-8 text"),
    ("cache-dir-no-such-user", lambda w: [*GRID, *RUN, "--cache-dir", "~nosuchuser-hrf/cache"],
     "~nosuchuser-hrf"),
    ("cache-dir-under-a-file", lambda w: [*GRID, *RUN, "--cache-dir", str(write(w / "cachefile", "x") / "cache")],
     "cachefile is a file"),
    ("seed-with-underscore", lambda w: [*GRID, *RUN[:2], "--seeds", "1_0", *RUN[4:]], "bad --seeds value '1_0'"),
    ("seed-in-another-script", lambda w: [*GRID, *RUN[:2], "--seeds", "\u0661", *RUN[4:]], "bad --seeds value"),
    ("study-empty", lambda w: [*GRID, *RUN, "--study", ""], "unknown study ''"),
    ("config-nested-too-deep", lambda w: [*GRID, "--config", str(write(w / "g.toml", "x = " + "[" * 5000 + "]" * 5000))],
     "does not parse: maximum recursion depth exceeded"),
    ("config-yaml-nested-too-deep", lambda w: [*GRID, "--config", str(write(w / "g.yaml", "folds: " + "[" * 5000))],
     "does not parse: maximum recursion depth exceeded"),
    ("config-5000-digit-number", lambda w: [*GRID, "--config", str(write(w / "g.toml", f"folds = [{'9' * 5000}]"))],
     "does not parse: Exceeds the limit (4300 digits)"),
    *[(f"{folder}-is-a-file", lambda w, folder=folder: [*GRID, *RUN[:2], "--seeds", "1", *RUN[4:]]
       if file_in_place(w, folder) else [], f"{folder} is a file")
      for folder in ("models", "claims", "records", "tables", "latency", "tune")],
]


@pytest.mark.parametrize("args, message", [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, args, message):
    if "runs.csv" in message:  # a folder where the table goes: found before anything trains
        (world / "results" / "runs.csv").unlink()
        (world / "results" / "runs.csv").mkdir()
    full = ["run", *args(world), "--quiet", "--results-dir", str(world / "results")]
    before = snapshot(world)
    result = CliRunner().invoke(main, full)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert snapshot(world) == before


def bench(world: Path, caplog, *args: str) -> tuple[int, str]:
    """``bench run`` into the world's results; its exit status and everything it printed or logged."""
    result = CliRunner().invoke(main, ["run", *args, "--quiet", "--results-dir", str(world / "results")])
    return result.exit_code, result.stdout + result.stderr + caplog.text


def only_changed(before: dict, after: dict, allowed: set[str]) -> None:
    """Nothing disappeared, and no file but the ``allowed`` ones (rebuilt) changed."""
    assert set(before) <= set(after)
    assert {p for p in before if before[p] != after[p]} <= allowed


def record_file(world: Path) -> Path:
    return next((world / "results" / "records").glob("*.json"))


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_damaged_record_is_named_and_its_run_done_again(world, caplog, damage):
    path = record_file(world)
    path.write_text(path.read_text()[:300] if damage == "truncated" else json.dumps({"hello": "world"}))
    before = snapshot(world)
    status, output = bench(world, caplog, *GRID, *RUN)
    assert status == 0, output
    assert f"{path}: " in output and "running" in output  # named, and run again
    records, problems = RecordStore(world / "results").load()
    assert not problems and [f"{r['run_id']}.json" for r in records] == [path.name]
    model = (world / "results" / "models" / path.name).with_suffix(".pt")
    only_changed(before, snapshot(world), {str(p.relative_to(world)) for p in (path, model)} | {"results/runs.csv"})


def test_copied_record_counts_once_with_a_warning(world, caplog):
    path = record_file(world)
    copy = path.with_name(f"{path.stem} (copy).json")
    shutil.copy(path, copy)
    before = snapshot(world)
    status, output = bench(world, caplog, *GRID, *RUN)
    assert status == 0, output
    assert f"{copy}: a second record of run {path.stem} (kept {path.name})" in output
    records, problems = RecordStore(world / "results").load()
    assert len(records) == 1 and len(problems) == 1
    assert snapshot(world) == before  # nothing ran again


def test_unreadable_feature_cache_is_extracted_again(world, caplog):
    cache, = (world / "cache" / "features").glob("toy-*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    before = snapshot(world)
    status, output = bench(world, caplog, *GRID, *RUN[:2], "--seeds", "1", *RUN[4:])  # a new run needs the features
    assert status == 0, output
    assert f"feature cache {cache} is unreadable" in output
    assert set(torch.load(cache)["features"]) == {f"s{s}_{i}" for s in range(6) for i in range(24)}
    assert before[str(cache.relative_to(world))] != cache.read_bytes()  # rebuilt
    only_changed(before, snapshot(world), {str(cache.relative_to(world)), "results/runs.csv"})


@pytest.mark.parametrize("content", ["junk", "code"])
def test_junk_in_a_cached_model_is_trained_again(world, caplog, content, code_payload):
    cached, = (world / "cache" / "models").glob("convtransformer-tiny-*.pt")
    payload, marker = code_payload
    if content == "junk":
        cached.write_bytes(b"junk" * 100)
    else:  # a well-formed entry whose unpickling would run code: read as data, it is refused
        saved = torch.load(cached, weights_only=True)
        torch.save(saved | {"git_commit": payload}, cached)
    before = snapshot(world)
    status, output = bench(world, caplog, "--methods", "quant", *GRID[2:], *RUN)  # quant starts from that model
    assert status == 0, output
    assert not marker.exists()
    assert f"cached model {cached} is unreadable" in output
    assert "state_dict" in torch.load(cached, weights_only=True)
    quant = [r for r in RecordStore(world / "results").load()[0] if r["method"] == "quant"]
    assert quant[0]["tiny_model_cache"] == "miss"
    only_changed(before, snapshot(world), {str(cached.relative_to(world)), "results/runs.csv"})


def write_emodb(folder: Path) -> Path:
    """An EmoDB-named folder: 5 speakers x 7 emotions of 0.3 s, plus one 10 ms file."""
    (folder / "wav").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for speaker in ("03", "08", "09", "10", "11"):
        for k, letter in enumerate("WLEAFTN"):
            tone = np.sin(2 * np.pi * (120 + 40 * k) * np.arange(4800) / 16000)
            soundfile.write(folder / "wav" / f"{speaker}a01{letter}a.wav",
                            (0.3 * tone + 0.01 * rng.normal(size=4800)).astype(np.float32), 16000)
    soundfile.write(folder / "wav" / "03a02Wa.wav", np.zeros(160, np.float32), 16000)
    return folder


def test_wav_shorter_than_the_analysis_window_is_skipped_and_listed(world, caplog):
    root = write_emodb(world / "emodb")
    before = snapshot(world)
    status, output = bench(world, caplog, "--methods", "baseline", "--presets", "tiny", "--datasets", "emodb",
                           "--data-root", str(root), "--dataset-param", "emodb.protocol=loso",
                           "--dataset-param", "emodb.val_speakers=1", *RUN)
    assert status == 0, output
    record = next(r for r in RecordStore(world / "results").load()[0] if r["dataset"] == "emodb")
    assert record["skipped_files"] == 1 and "03a02Wa.wav lasts 10 ms, shorter than" in record["skipped"][0]
    assert "skipped: " in output
    only_changed(before, snapshot(world), {"results/runs.csv"})


def test_a_search_of_no_choices_is_one_line_before_any_trial(world):
    before = snapshot(world)
    result = CliRunner().invoke(main, ["tune", "--method", "hrf", "--dataset", "toy", "--preset", "tiny", "-p", "init=,",
                                       "--trials", "1", "--folds", "1", "--epochs", "1", "--quiet",
                                       "--results-dir", str(world / "results")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--param init=,: no choices given" in lines[0], result.output
    assert snapshot(world) == before and not (world / "results" / "optuna.db").exists()


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "a/b", "..", ".hidden", "x" * 200, ""])
def test_a_study_name_that_is_a_path_is_refused_before_anything_runs(world, name):
    """Its tables and plots are named after the study: a path would write outside results/tune/."""
    before = snapshot(world)
    result = CliRunner().invoke(main, ["tune", "--method", "hrf", "--dataset", "toy", "--preset", "tiny", "-p",
                                       "expansion_ratio=1:4", "--trials", "1", "--folds", "1", "--epochs", "1",
                                       "--study-name", name, "--quiet", "--results-dir", str(world / "results")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "must be a plain name" in lines[0], result.output
    assert snapshot(world) == before and not (world / "results" / "optuna.db").exists()
    assert not any(world.parent.glob("x*")) and not Path("/tmp/elsewhere.csv").exists()


def test_minus_zero_is_the_same_setting_and_run_as_zero():
    from bench.execution.grid import make_grid

    ids = {value: [s.run_id for s in make_grid({"methods": ["kd"], "datasets": ["toy"], "folds": [1], "seeds": [0],
                                                "method_params": {"kd": {"alpha": value}}}).specs()]
           for value in ("-0.0", "0", 0.0, -0.0)}
    assert len({tuple(v) for v in ids.values()}) == 1, ids


def test_a_corpus_of_one_class_is_refused_not_scored_100_percent(tmp_path, monkeypatch):
    import csv

    from dataset_fixtures import make_features

    root = make_features(tmp_path / "features")
    rows = list(csv.DictReader(open(root / "labels.csv")))
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([dict(row, label="calm") for row in rows])
    monkeypatch.setenv("HRF_BENCH_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["run", "--methods", "baseline", "--datasets", "features", "--data-root",
                                       f"features={root}", "--presets", "tiny", *RUN, "--quiet",
                                       "--results-dir", str(tmp_path / "results")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "have 1 class(es) (calm); a classifier needs at least two" in lines[0]
    assert not list((tmp_path / "results").rglob("*.json"))


@pytest.mark.parametrize("damage", ["utterance-missing", "wrong-width", "no-frames"])
def test_a_feature_cache_that_does_not_fit_the_corpus_is_extracted_again(world, caplog, damage):
    cache, = (world / "cache" / "features").glob("toy-*.pt")
    saved = torch.load(cache, weights_only=True)
    first = sorted(saved["features"])[0]
    if damage == "utterance-missing":  # a test utterance gone would shrink the test set without a word
        del saved["features"][first]
    else:
        width = saved["features"][first].shape[1]
        saved["features"][first] = torch.zeros(7, width + 3) if damage == "wrong-width" else torch.zeros(0, width)
    torch.save(saved, cache)
    status, output = bench(world, caplog, *GRID, *RUN[:2], "--seeds", "1", *RUN[4:])  # a new run needs the features
    assert status == 0, output
    assert f"feature cache {cache} " in output and "extracting the features again" in output
    rebuilt = torch.load(cache, weights_only=True)["features"]
    assert first in rebuilt and rebuilt[first].shape[0] > 0 and len({a.shape[1] for a in rebuilt.values()}) == 1
    record = next(r for r in RecordStore(world / "results").load()[0] if r["seed"] == 1)
    original = next(r for r in RecordStore(world / "results").load()[0] if r["seed"] == 0)
    assert (record["n_train"], record["n_val"], record["n_test"]) == (original["n_train"], original["n_val"], original["n_test"])


def wav(path: Path, seconds: float = 1.0, rate: int = 16000, value: float = 0.1, subtype: str = "PCM_16") -> Path:
    soundfile.write(path, np.full(int(seconds * rate), value, np.float32), rate, subtype=subtype)
    return path


def test_audio_that_would_hang_or_exhaust_memory_is_skipped_with_its_reason(tmp_path):
    import os

    from bench.data.corpus import Corpus, Utterance
    from bench.data.features import FeatureConfig, extract

    os.mkfifo(tmp_path / "fifo.wav")  # opening it for reading would block forever
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    wav(tmp_path / "one-hertz.wav", seconds=2.0, rate=1)  # resampled to 16 kHz: 16000 times the samples
    wav(tmp_path / "long.wav", seconds=601.0, rate=8000)
    wav(tmp_path / "nan.wav", value=float("nan"), subtype="FLOAT")
    wav(tmp_path / "good.wav")
    names = ["fifo", "loop", "one-hertz", "long", "nan", "good"]
    corpus = Corpus("hostile-audio", ["a"], [Utterance(n, "a", n, path=tmp_path / f"{n}.wav") for n in names], [])
    features = extract(corpus, FeatureConfig(), tmp_path / "cache", progress=False, fingerprint="x")
    assert list(features) == ["good"]
    reasons = "\n".join(corpus.skipped)
    assert "fifo.wav is not a regular file" in reasons and "loop.wav is not a regular file" in reasons
    assert "sample rate is 1 Hz, under 8000 Hz" in reasons
    assert "long.wav lasts 601 s, more than the 600 s one utterance may" in reasons
    assert "nan.wav holds NaN or infinite samples" in reasons
    assert len(corpus.skipped) == 5


def test_upper_case_wav_suffixes_are_read_like_lower_case_ones(tmp_path):
    from bench.data.datasets.emodb import read_utterances

    (tmp_path / "wav").mkdir()
    wav(tmp_path / "wav" / "03a01Fa.wav")
    wav(tmp_path / "wav" / "03a01Wa.WAV")  # as Windows tools name them
    utterances = read_utterances(tmp_path)
    assert sorted(u.id for u in utterances) == ["03a01Fa", "03a01Wa"]
    assert {u.label for u in utterances} == {"happiness", "anger"}


def test_an_edit_that_keeps_size_and_mtime_changes_the_corpus_fingerprint(tmp_path):
    import os

    from bench.data.corpus import FILE_HASHES, Corpus, Utterance, corpus_fingerprint

    path = wav(tmp_path / "u.wav", value=0.1)
    corpus = Corpus("edited", ["a"], [Utterance("u", "a", "s", path=path)], [])
    cache = tmp_path / "cache"
    before = corpus_fingerprint(corpus, cache)
    stat = os.stat(path)
    wav(path, value=0.2)  # same length, other samples
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as they were
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    edited = corpus_fingerprint(corpus, cache)
    assert edited != before
    for junk in ("[1, 2]", json.dumps({str(path.resolve()): 5}), json.dumps({str(path.resolve()): [1, 2, 3, None]})):
        (cache / FILE_HASHES).write_text(junk)  # a memo of the wrong shape only costs hashing again
        assert corpus_fingerprint(corpus, cache) == edited


@pytest.mark.parametrize("where", ["results/tables", "reports", "reports/plots"])
def test_a_file_where_the_report_writes_a_folder_is_one_line_before_anything_is_written(world, where):
    path = world / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")
    before = snapshot(world)
    result = CliRunner().invoke(main, ["report", "--results-dir", str(world / "results"),
                                       "--reports-dir", str(world / "reports")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and f"{path} is a file where" in lines[0]
    assert snapshot(world) == before


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_one(tmp_path):
    import errno
    import os

    from bench.paths import atomic_write
    from bench.registry import BenchError

    target = write(tmp_path / "model.pt", "the old model")

    def full_disk(tmp: Path) -> None:  # what a full disk does: part of the file, then ENOSPC
        tmp.write_bytes(b"half a mod")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(BenchError, match=r"cannot write .*model.pt: No space left on device"):
        atomic_write(target, full_disk)
    assert target.read_text() == "the old model" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    atomic_write(target, lambda tmp: tmp.write_text("the new model"))
    assert target.read_text() == "the new model" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_folder_where_a_lock_file_belongs_is_one_line_and_nothing_runs(world):
    from bench.execution.grid import make_grid
    from bench.execution.workspace import Workspace
    grid = make_grid({"methods": ["baseline"], "backbones": ["convtransformer"], "datasets": ["toy"],
                      "presets": ["tiny"], "folds": [1], "seeds": [1], "train": {"epochs": 1}})
    (spec,) = grid.specs(Workspace(world / "cache", {}, False))
    lock = world / "results" / "claims" / f"{spec.run_id}.lock"
    lock.mkdir(parents=True)
    before = snapshot(world)
    result = CliRunner().invoke(main, ["run", *GRID, *RUN[:2], "--seeds", "1", *RUN[4:], "--quiet",
                                       "--results-dir", str(world / "results")])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert f"{lock} is a folder where a lock file belongs" in result.output
    assert snapshot(world) == before and lock.is_dir()


def test_a_table_that_cannot_be_replaced_is_one_line_before_anything_runs(world, monkeypatch):
    """An immutable ``runs.csv`` (``chattr +i``: even root's rename over it fails with EPERM) was a traceback
    after the run had trained; a report table that cannot be written was one too."""
    import errno
    import os

    replace = os.replace

    def immutable(src, dst, *args, **kwargs):  # what the kernel answers for an immutable target
        if Path(dst).name in ("runs.csv", "summary.csv"):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", immutable)
    before = snapshot(world)
    result = CliRunner().invoke(main, ["run", *GRID, *RUN[:2], "--seeds", "1", *RUN[4:], "--quiet",
                                       "--results-dir", str(world / "results")])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert "runs.csv cannot be replaced (Operation not permitted)" in result.output
    assert snapshot(world) == before
    report = CliRunner().invoke(main, ["report", "--results-dir", str(world / "results"), "--reports-dir",
                                       str(world / "reports"), "--quiet"])
    assert report.exit_code == 2 and report.output.strip().count("\n") == 0, report.output
    assert "cannot write" in report.output and "tables/runs.csv (Operation not permitted)" in report.output
    assert not [p for p in (world / "results" / "tables").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("cell", ["x", -1, True, 1.5, None], ids=["text", "negative", "bool", "fraction", "null"])
def test_a_confusion_matrix_that_is_not_counts_is_left_out_of_the_per_class_table(world, cell):
    """A record (valid checksum) whose confusion matrix holds something other than counts: `bench report`
    finishes, leaves that run out of the per-class table and changes no record."""
    from bench.reporting.results import checksum

    (path,) = (world / "results" / "records").glob("*.json")
    record = json.loads(path.read_text())
    matrix = [list(row) for row in record["confusion"]]
    matrix[0][0] = cell
    record["confusion"] = matrix
    record["checksum"] = checksum(record)
    path.write_text(json.dumps(record))
    before = snapshot(world)["results/records/" + path.name]
    result = CliRunner().invoke(main, ["report", "--results-dir", str(world / "results"),
                                       "--reports-dir", str(world / "reports"), "--quiet"])
    assert result.exit_code == 0 and result.exception is None, result.output
    table = (world / "results" / "tables" / "per_class.csv").read_text().splitlines()
    assert len(table) == 1  # the header: the only run's matrix is unusable
    assert (world / "results" / "records" / path.name).read_bytes() == before


@pytest.mark.parametrize("field, value", [("ua", "abc"), ("ua", float("nan")), ("wa", 1e308), ("val_ua", -0.5),
                                          ("fold", "x"), ("params", [1, 2]), ("seed", None),
                                          ("history", "zz"), ("backbone", 7)])
def test_a_record_with_a_recomputed_checksum_but_wrong_field_types_is_named_and_left_out(world, field, value):
    """A checksum anyone can recompute proves no origin; such a record crashed the report's sorting."""
    path = record_file(world)
    record = json.loads(path.read_text())
    record[field] = value
    record["checksum"] = checksum(record)
    path.write_text(json.dumps(record))
    before = path.read_text()
    result = CliRunner().invoke(main, ["report", "--results-dir", str(world / "results"),
                                       "--reports-dir", str(world / "reports")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert f"not a record of the declared schema: field '{field}'" in result.stderr
    assert path.read_text() == before  # named, not rewritten


def test_an_export_refuses_a_record_whose_backbone_is_a_path(world):
    """A record's backbone names the export's reference file: a path there is one line, nothing written."""
    path = record_file(world)
    record = json.loads(path.read_text())
    record["backbone"] = "../../escaped"
    record["checksum"] = checksum(record)
    path.write_text(json.dumps(record))
    out = world / "export"
    result = CliRunner().invoke(main, ["export", "--results-dir", str(world / "results"), "--out", str(out)])
    assert result.exit_code == 2 and "names backbone '../../escaped', which is not registered" in result.stderr
    assert not (world / "escaped").exists() and not list(world.parent.glob("escaped*"))


def one_line(result, message: str) -> None:
    """Exit status 2 and one line on stderr, ``error: ...`` holding ``message``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]


def report(world: Path):
    return CliRunner().invoke(main, ["report", "--results-dir", str(world / "results"),
                                     "--reports-dir", str(world / "reports"), "--quiet"])


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"schema_version": ' + "9" * 5000 + "}"],
                         ids=["nested-too-deep", "5000-digit-number"])
def test_a_record_json_cannot_hold_is_named_and_left_out(world, text):
    """JSON's parser raises RecursionError and ValueError (not JSONDecodeError) for these: a traceback."""
    path = write(record_file(world), text)
    result = report(world)
    assert result.exit_code == 0 and result.exception is None, result.output
    assert f"{path}: unreadable JSON" in result.stderr
    assert path.read_text() == text


def test_a_record_whose_run_id_is_a_path_is_left_out_and_nothing_is_written_outside(world):
    """The run id names the deploy model read (models/<run_id>.pt) and the ONNX file an export writes:
    ``../escaped`` read results/escaped.pt and wrote escaped.onnx beside the export folder."""
    path = record_file(world)
    record = json.loads(path.read_text())
    shutil.copy(world / "results" / "models" / f"{record['run_id']}.pt", world / "results" / "escaped.pt")
    record["run_id"] = "../escaped"
    record["checksum"] = checksum(record)
    path.write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["export", "--results-dir", str(world / "results"), "--out", str(world / "export")])
    one_line(result, "no recorded run with a deploy model")
    assert not list(world.rglob("escaped.onnx"))
    assert "run_id '../escaped' is not a run id" in report(world).stderr


def test_a_record_file_name_that_is_not_utf8_is_named_in_the_report(world):
    """The warning naming it went into index.html, whose UTF-8 writer refused the undecodable name."""
    import os
    folder = os.fsencode(world / "results" / "records")
    write_bytes(Path(os.fsdecode(folder + b"/\xff\xfe.json")), b"{}")
    result = report(world)
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "foreign record" in result.stderr and (world / "reports" / "index.html").is_file()


def test_a_records_file_where_the_folder_belongs_is_one_line_not_an_empty_report(world):
    file_in_place(world, "records")
    one_line(report(world), "records is a file where a folder belongs")
    assert not (world / "reports").exists()


def latency_file(world: Path) -> Path:
    """Where ``bench measure --device hostA`` keeps the recorded run's rows."""
    return world / "results" / "latency" / f"hostA-{record_file(world).stem}.json"


@pytest.mark.parametrize("text", ["{not json", '{"schema_version": 1}', '{"schema_version": 1, "rows": [{"runtime": "x"}]}'],
                         ids=["not-json", "no-rows", "row-without-fields"])
@pytest.mark.parametrize("command", ["measure", "import-latency"])
def test_a_damaged_latency_file_is_one_line_and_kept(world, text, command):
    """Stored rows were read unchecked: a traceback (JSONDecodeError, KeyError) before any timing."""
    path = latency_file(world)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    if command == "measure":
        args = ["measure", "--seconds", "2", "--threads", "1", "--runtimes", "torch-eager", "--device", "hostA"]
    else:
        rows = [{"schema": "hrf-bench-latency", "schema_version": 1, "run_id": path.stem[len("hostA-"):],
                 "runtime": "onnxruntime", "threads": 1, "input_seconds": 2.0, "latency_ms": 1.0, "device": "hostA"}]
        probed = write(world / "probed.json", json.dumps({"schema": "hrf-bench-latency", "schema_version": 1,
                                                          "device": "hostA", "rows": rows}))
        args = ["import-latency", str(probed)]
    result = CliRunner().invoke(main, [*args, "--results-dir", str(world / "results")])
    one_line(result, f"{path} ")
    assert "move it away" in result.stderr and path.read_text() == text


def test_a_latency_file_where_the_folder_belongs_is_one_line_before_any_timing(world):
    file_in_place(world, "latency")
    result = CliRunner().invoke(main, ["measure", "--seconds", "2", "--threads", "1", "--runtimes", "torch-eager",
                                       "--results-dir", str(world / "results")])
    one_line(result, "latency is a file where a folder belongs")


def test_an_export_folder_under_a_file_is_one_line(world):
    result = CliRunner().invoke(main, ["export", "--results-dir", str(world / "results"),
                                       "--out", str(world / "results" / "runs.csv" / "export")])
    one_line(result, "runs.csv is a file")


@pytest.mark.parametrize("command, runs", [("measure", ""), ("measure", ","), ("export", "")])
def test_runs_that_name_no_run_are_one_line_not_every_run(world, command, runs):
    """``--runs ""`` (an unset variable) meant every recorded run: measured or exported them all."""
    target = ["--seconds", "2", "--threads", "1"] if command == "measure" else ["--out", str(world / "export")]
    before = snapshot(world)
    result = CliRunner().invoke(main, [command, "--runs", runs, *target, "--results-dir", str(world / "results")])
    one_line(result, "names no run")
    assert snapshot(world) == before


def manifest(folder: Path, **entry) -> Path:
    """An export folder whose manifest holds one model entry (``entry`` over sensible values)."""
    from bench.measure import probe
    folder.mkdir()
    model = {"run_id": "r1", "file": "r1.onnx", "input_dim": 16, "inputs": [{"seconds": 2.0, "frames": 201}]} | entry
    write(folder / "manifest.json", json.dumps({"schema": probe.MANIFEST_SCHEMA, "schema_version": probe.MANIFEST_VERSION,
                                                "models": [model]}))
    return folder


@pytest.mark.parametrize("entry, message", [
    ({"input_dim": "x"}, "has a model r1 with input_dim='x'"),
    ({"input_dim": 10 ** 12}, "has a model r1 with input_dim=1000000000000"),
    ({"inputs": [{"seconds": 2.0, "frames": -1}]}, "r1 without a list of inputs of positive seconds and frames"),
    ({"inputs": "2s"}, "r1 without a list of inputs"),
    ({"run_id": 7}, "has a model with run_id=7"),
], ids=["input-dim-text", "input-dim-huge", "frames-negative", "inputs-text", "run-id-number"])
def test_a_manifest_entry_of_the_wrong_shape_is_one_line_before_any_timing(tmp_path, entry, message):
    """Its sizes build the timed inputs: ``input_dim = "x"`` was a TypeError halfway through the probe."""
    result = CliRunner().invoke(main, ["probe", str(manifest(tmp_path / "export", **entry)), "--threads", "1"])
    one_line(result, message)


def test_a_manifest_nested_too_deep_is_one_line(tmp_path):
    (tmp_path / "export").mkdir()
    write(tmp_path / "export" / "manifest.json", "[" * 100000)
    one_line(CliRunner().invoke(main, ["probe", str(tmp_path / "export")]), "is not readable JSON (maximum recursion")


def test_a_check_input_that_is_a_pickle_is_one_line_and_not_unpickled(tmp_path):
    from bench.measure import probe
    folder = manifest(tmp_path / "export", check={"input": "checks/input.npy", "logits": [[0.0]]})
    (folder / "checks").mkdir()
    np.save(folder / "checks" / "input.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    model = json.loads((folder / "manifest.json").read_text())["models"][0]
    with pytest.raises(probe.ProbeError, match="the check of r1 is unusable .*Object arrays cannot be loaded"):
        probe.check_output(None, model, folder)


def test_a_probe_rows_file_that_is_a_folder_is_one_line_before_any_timing(tmp_path):
    folder = manifest(tmp_path / "export")
    one_line(CliRunner().invoke(main, ["probe", str(folder), "--out", str(folder)]), "is a folder: give the rows file")


@pytest.mark.parametrize("settings, message", [
    ({"methods": 5}, "methods must be a list of names, got [5]"),
    ({"method_params": [1]}, "method_params must be a dict of dicts"),
    ({"method_params": {"hrf": "x"}}, "method_params must be a dict of dicts"),
    ({"data_roots": ["x"]}, "data_roots must be a dict"),
    ({"train": "x"}, "train must be a dict of training settings"),
    ({"features": 5}, "features must be a feature kind"),
], ids=["methods-number", "params-list", "params-text", "roots-list", "train-text", "features-number"])
def test_api_settings_of_the_wrong_type_are_one_line(world, settings, message):
    """bench.run's nested settings were merged unchecked: AttributeError, TypeError or ValueError."""
    import bench
    from bench.registry import BenchError

    with pytest.raises(BenchError, match=re.escape(message)):
        bench.run(**{"methods": "hrf", "datasets": "toy", "presets": "tiny", "folds": 1, "seeds": 1} | settings,
                  results_dir=world / "results", progress=False)


@pytest.mark.parametrize("mem_gb", [float("nan"), float("inf"), 0.0, -4.0])
def test_a_job_memory_that_is_no_amount_is_refused_before_submitting(mem_gb):
    """``--mem-gb nan`` submitted the job array (Slurm would get --mem=nanG)."""
    from bench.execution.executors import SubmititOptions
    from bench.registry import BenchError

    with pytest.raises(BenchError, match="--mem-gb must be a positive number"):
        SubmititOptions(mem_gb=mem_gb)
