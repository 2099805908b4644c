"""The real Berlin EmoDB (../shared/data/emodb, or $HRF_BENCH_EMODB_ROOT): its documented counts, the
speaker-independent protocol, and a short ``bench run``. Skipped when the corpus is absent; it is read
in place, never copied into the repository."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli.main import main
from bench.registry import DATASETS, METHODS

ROOT = Path(os.environ.get("HRF_BENCH_EMODB_ROOT") or Path(__file__).parents[2] / "shared" / "data" / "emodb")
pytestmark = pytest.mark.skipif(not (ROOT / "wav").is_dir(),
                                reason=f"real EmoDB not found at {ROOT} (set HRF_BENCH_EMODB_ROOT to its folder)")

COUNTS = {"anger": 127, "boredom": 81, "disgust": 46, "fear": 69, "happiness": 71, "sadness": 62, "neutral": 79}


def load(cache_dir: Path, **params):
    entry = DATASETS.get("emodb")
    return entry.obj(ROOT, cache_dir, entry.make_params(params))


def test_real_emodb_has_535_utterances_7_classes_10_speakers(cache_dir):
    corpus = load(cache_dir)
    assert len(corpus.utterances) == 535
    assert Counter(u.label for u in corpus.utterances) == COUNTS
    assert sorted({u.speaker for u in corpus.utterances}) == ["03", "08", "09", "10", "11", "12", "13", "14", "15",
                                                              "16"]


@pytest.mark.parametrize("protocol, folds", [("pairs", 5), ("loso", 10)])
def test_real_emodb_folds_are_speaker_independent_and_test_everyone_once(protocol, folds, cache_dir):
    corpus = load(cache_dir, protocol=protocol)
    assert len(corpus.folds) == folds
    tested = sorted(i for fold in corpus.folds for i in fold.test)
    assert tested == list(range(535))
    for fold in corpus.folds:
        speakers = {name: {corpus.utterances[i].speaker for i in getattr(fold, name)}
                    for name in ("train", "val", "test")}
        assert not speakers["train"] & speakers["test"] and not speakers["val"] & speakers["test"]
        assert not speakers["train"] & speakers["val"] and speakers["val"]
        assert len(fold.train) + len(fold.val) + len(fold.test) == 535


def test_bench_run_on_real_emodb_completes(tmp_path, cache_dir):
    methods = ",".join(m for m in ("baseline", "hrf") if m in METHODS)
    results = tmp_path / "results"
    result = CliRunner().invoke(main, [
        "run", "--datasets", "emodb", "--data-root", str(ROOT), "--methods", methods, "--presets", "tiny",
        "--folds", "1", "--epochs", "1", "--results-dir", str(results), "--cache-dir", str(cache_dir), "--quiet"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (results / "records").glob("*.json")]
    assert sorted(r["method"] for r in records) == sorted(methods.split(","))
    for record in records:
        assert record["skipped_files"] == 0 and record["n_test"] == 107  # fold 1 tests speakers 03 and 08
        assert record["n_train"] + record["n_val"] == 428 and 0.0 <= record["ua"] <= 1.0
        assert len(record["history"]) == 1 and record["history"][0]["val_loss"] > 0
        assert record["recipe"]["label_smoothing"] > 0 and record["train_device"] == "cpu"


def test_emodb_study_dry_run_names_its_runs_and_compute(tmp_path):
    result = CliRunner().invoke(main, ["run", "--study", "emodb", "--data-root", str(ROOT), "--backbones",
                                       "convtransformer", "--methods", "baseline", "--seeds", "0", "--dry-run",
                                       "--results-dir", str(tmp_path / "results")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "20 runs in the grid, 0 already recorded, 20 to run" in result.output  # 4 presets x 5 folds
    assert "convtransformer/large emodb: 5 models (fold x seed), used by 5 runs" in result.output
    assert "device-hours on cpu" in result.output and not (tmp_path / "results" / "records").exists()
