"""The ``bench`` command line: a real tiny grid, skipping recorded runs, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from click.testing import CliRunner

from bench.cli.main import main
from bench.data.corpus import FILE_HASHES, Corpus, Utterance, corpus_fingerprint
from bench.reporting.results import RecordStore

TINY = ["--datasets", "toy", "--presets", "tiny", "--folds", "1", "--seeds", "0", "--epochs", "2", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def results(tmp_path, cache_dir, monkeypatch) -> Path:
    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))
    return tmp_path / "results"


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_list_prints_all_registries_with_parameters():
    result = invoke("list")
    assert result.exit_code == 0
    for text in ("methods:", "baseline", "backbones", "convtransformer", "preset lightweight", "MACs", "datasets:",
                 "embedded", "toy", "separation: float = 1.5"):
        assert text in result.output


def test_run_records_rows_then_skips_them_and_force_reruns(results):
    first = invoke("run", "--methods", "baseline", "--results-dir", str(results), *TINY)
    assert first.exit_code == 0, first.output
    table = pd.read_csv(results / "runs.csv")
    assert len(table) == 1 and table.loc[0, "method"] == "baseline" and table.loc[0, "preset"] == "tiny"
    for column in ("wa", "ua", "macro_f1", "params", "macs", "latency_ms", "env_cpu", "env_torch", "env_git_commit"):
        assert column in table.columns and pd.notna(table.loc[0, column])
    assert "UA" in first.output and "baseline" in first.output  # the summary table
    assert "toy: one test fold" in first.output and "not which is more accurate" in first.output
    record_file, = (results / "records").glob("*.json")
    before = record_file.read_bytes()

    again = invoke("run", "--methods", "baseline", "--results-dir", str(results), *TINY)
    assert again.exit_code == 0
    assert record_file.read_bytes() == before  # skipped, not re-run

    # Date the record back (validly): only a real re-run can make it current again.
    RecordStore(results).write({k: v for k, v in json.loads(before).items() if k != "checksum"}
                               | {"finished_at": "2000-01-01T00:00:00+00:00"})
    forced = invoke("run", "--methods", "baseline", "--results-dir", str(results), "--force", *TINY)
    assert forced.exit_code == 0
    assert json.loads(record_file.read_text())["finished_at"] >= json.loads(before)["finished_at"] > "2000"
    assert len(pd.read_csv(results / "runs.csv")) == 1  # still one row per run


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--backbones", "transformerr"], "unknown backbone 'transformerr'"),
    (["--datasets", "imaginary"], "unknown dataset 'imaginary'"),
    (["--folds", "1,x"], "bad --folds value"),
    (["--presets", "huge"], "unknown preset 'huge'"),
    (["-p", "baseline.nothing=1"], "has no parameter 'nothing'"),
    (["--epochs", "0"], "epochs must be >= 1"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_results_alone(results, args, message):
    assert invoke("run", "--methods", "baseline", "--results-dir", str(results), *TINY).exit_code == 0
    before = snapshot(results)
    full = ["run", "--results-dir", str(results), *TINY, *args]
    result = CliRunner().invoke(main, full)
    assert result.exit_code == 2
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert snapshot(results) == before


def test_unwritable_results_folder_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["run", "--methods", "baseline", "--results-dir", str(blocker / "results"), *TINY])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "not writable" in result.stderr


def test_fold_that_does_not_exist_is_reported(results):
    result = CliRunner().invoke(main, ["run", "--methods", "baseline", "--results-dir", str(results),
                                       *TINY[:4], "--folds", "9", *TINY[6:]])
    assert result.exit_code == 2 and "fold 9 does not exist for toy" in result.stderr


def write_features_folder(folder: Path, shift: int) -> Path:
    """6 speakers x 8 arrays with the same names and content in every folder; ``shift`` rotates
    the labels, so two folders differ only in their label CSV."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["name,label,speaker"]
    for speaker in range(6):
        for i in range(8):
            np.save(folder / f"s{speaker}_{i}.npy", rng.normal(size=(40, 16)).astype(np.float32))
            rows.append(f"s{speaker}_{i},{'abcd'[(i + shift) % 4]},s{speaker}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_same_file_names_with_other_labels_are_another_run_with_its_own_model(results, tmp_path):
    args = ["run", "--methods", "baseline", "--datasets", "features", "--dataset-param", "features.folds=3",
            "--results-dir", str(results), *TINY[2:]]
    for shift in (0, 1):
        folder = write_features_folder(tmp_path / f"features{shift}", shift)
        result = invoke(*args, "--data-root", str(folder))
        assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (results / "records").glob("*.json")]
    assert len(records) == 2  # the second folder is not "already recorded"
    assert len({r["run_id"] for r in records}) == len({r["corpus_fingerprint"] for r in records}) == 2
    assert [r["tiny_model_cache"] for r in records] == ["miss", "miss"]  # nor scored with the first's model


def test_fingerprint_follows_content_and_labels_not_location(tmp_path):
    def corpus(folder: Path, label: str = "x") -> Corpus:
        return Corpus("wavs", ["x", "y"], [Utterance(p.stem, label, "s", path=p) for p in sorted(folder.glob("*.wav"))],
                      folds=[])

    folder = tmp_path / "wav"
    folder.mkdir()
    for i in range(20):
        soundfile.write(folder / f"u{i}.wav", np.full(16000, 0.1 * (i % 5), np.float32), 16000)
    cache = tmp_path / "cache"
    original = corpus_fingerprint(corpus(folder), cache)
    assert (cache / FILE_HASHES).exists()  # later processes only stat the files
    shutil.copytree(folder, tmp_path / "copy")
    assert corpus_fingerprint(corpus(tmp_path / "copy"), cache) == original  # same content elsewhere
    assert corpus_fingerprint(corpus(folder, label="y"), cache) != original  # a label changed
    data, rate = soundfile.read(folder / "u3.wav")
    soundfile.write(folder / "u3.wav", data[:8000], rate)  # one wav shortened
    assert corpus_fingerprint(corpus(folder), cache) != original


def test_the_single_fold_caveat_names_only_datasets_with_one_test_fold():
    from bench.reporting.summary import scope_lines
    records = [{"dataset": "toy", "fold": 1, "status": "ok", "n_test": 8},
               {"dataset": "emodb", "fold": 1, "status": "ok", "n_test": 107},
               {"dataset": "emodb", "fold": 2, "status": "ok", "n_test": 99},
               {"dataset": "toy", "fold": 2, "status": "failed"}]  # a failed run shows nothing
    assert scope_lines(records) == [
        "toy: one test fold (8 utterances of held-out speakers) shows that every method runs and what it costs, "
        "not which is more accurate: a paired interval needs >= 2 folds (--folds 1-5)"]
