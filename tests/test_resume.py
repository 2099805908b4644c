"""Resuming: an interrupted training continues from its epoch checkpoint and ends exactly where an
uninterrupted one ends; a `bench run` killed at any moment (SIGKILL, SIGINT) finishes its grid on
the next start with every run recorded once; `bench report` names a damaged record."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.execution.checkpoint import resumable_fit
from bench.cli.main import main
from bench.execution.grid import make_grid
from bench.reporting.results import RecordStore
from bench.execution.context import RunContext
from bench.execution.spec import RunSpec
from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig
from bench.training.trainer import cross_entropy_loss

CONFIG = TrainConfig(epochs=4, batch_size=16, lr=3e-3, label_smoothing=0.0)  # the loss interrupting_loss wraps


class Interrupt(KeyboardInterrupt):
    """What Ctrl-C raises, here from inside an epoch."""


def interrupting_loss(after_steps: int):
    """Cross-entropy that raises like a SIGINT at training step ``after_steps``."""
    loss, steps = cross_entropy_loss(), [0]

    def interrupted(model, feats, lengths, labels):
        steps[0] += 1
        if steps[0] > after_steps:
            raise Interrupt
        return loss(model, feats, lengths, labels)
    return interrupted


@pytest.fixture
def context(cache_dir) -> RunContext:
    spec = RunSpec("baseline", "convtransformer", "tiny", "toy", 1, seed=0, train=CONFIG)
    workspace = Workspace(cache_dir, progress=False)
    return RunContext(spec, workspace.fold_data(spec), workspace)


def train(context: RunContext, path: Path, **options):
    model = context.new_model()  # dropout 0.1: the global RNG matters
    data = context.data
    result, resumed_from = resumable_fit(model, data.train, data.val, data.num_classes, CONFIG, 0, path,
                                         progress=False, **options)
    return model, result, resumed_from


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "val_seconds")} for h in history]


def test_training_interrupted_mid_epoch_resumes_to_the_uninterrupted_result(context, tmp_path):
    reference, expected, resumed_from = train(context, tmp_path / "reference.pt")
    assert resumed_from == 0
    steps_per_epoch = -(-len(context.data.train) // CONFIG.batch_size)

    path = tmp_path / "interrupted.pt"
    with pytest.raises(Interrupt):
        train(context, path, loss_fn=interrupting_loss(2 * steps_per_epoch + 1))  # dies inside epoch 3
    assert torch.load(path, weights_only=True)["epoch"] == 2

    resumed, result, resumed_from = train(context, path)
    assert resumed_from == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert untimed(result.history) == untimed(expected.history)  # same losses, validation UA and lr every epoch
    # the training time counts the interrupted attempt's epochs as well as the resumed ones
    assert result.train_seconds == pytest.approx(sum(h["seconds"] for h in result.history))
    assert result.train_seconds > sum(h["seconds"] for h in result.history[2:])
    assert result.best_epoch == expected.best_epoch
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name

    # a finished checkpoint is not trained further: starting again only reloads the best weights
    again, repeat, resumed_from = train(context, path)
    assert resumed_from == CONFIG.epochs and untimed(repeat.history) == untimed(expected.history)
    assert all(torch.equal(t, again.state_dict()[n]) for n, t in reference.state_dict().items())


def test_checkpoint_of_other_training_settings_is_not_resumed(context, tmp_path):
    path = tmp_path / "other.pt"
    with pytest.raises(Interrupt):
        train(context, path, loss_fn=interrupting_loss(8))
    saved = torch.load(path, weights_only=True)
    saved["config"]["lr"] = 1.0
    torch.save(saved, path)
    _, result, resumed_from = train(context, path)
    assert resumed_from == 0 and len(result.history) == CONFIG.epochs


def test_checkpoint_that_would_run_code_is_not_unpickled(context, tmp_path, caplog, code_payload):
    (payload, marker), path = code_payload, tmp_path / "planted.pt"
    with pytest.raises(Interrupt):
        train(context, path, loss_fn=interrupting_loss(8))
    torch.save(torch.load(path, weights_only=True) | {"seed": payload}, path)
    _, result, resumed_from = train(context, path)
    assert not marker.exists() and f"ignoring unreadable checkpoint {path}" in caplog.text
    assert resumed_from == 0 and len(result.history) == CONFIG.epochs


# --- real `bench run` processes -----------------------------------------------------------------

GRID = {"methods": ["baseline"], "datasets": ["toy"], "presets": ["tiny"], "folds": [1, 2], "seeds": [0],
        "train": {"epochs": 12}}
ARGS = ["--methods", "baseline", "--datasets", "toy", "--presets", "tiny", "--folds", "1,2", "--seeds", "0",
        "--epochs", "12", "--quiet", "--defer-latency"]


def start_bench(results: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli.main", "run", *ARGS, "--results-dir", str(results)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(checkpoints: Path, process: subprocess.Popen, newer_than: float = 0.0,
                        timeout: float = 120) -> Path:
    """The first epoch checkpoint written after ``newer_than``, polled while ``process`` trains."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        for path in checkpoints.glob("*.pt"):
            try:
                if path.stat().st_mtime > newer_than:
                    return path
            except FileNotFoundError:  # replaced by the next epoch's checkpoint meanwhile
                pass
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"no checkpoint appeared; output:\n{process.communicate()[0]}")


@pytest.mark.slow  # several real processes; still run by default
def test_bench_run_killed_by_sigkill_then_sigint_finishes_every_run_once(tmp_path, cache_dir, bench_env):
    results, checkpoints = tmp_path / "results", cache_dir / "checkpoints"
    expected = {spec.run_id for spec in make_grid(GRID).specs(Workspace(cache_dir, progress=False))}

    first = start_bench(results, bench_env)
    wait_for_checkpoint(checkpoints, first)
    first.send_signal(signal.SIGKILL)  # mid-training: no handler, no cleanup
    first.wait()
    killed_at = max(torch.load(p, weights_only=False)["epoch"] for p in checkpoints.glob("*.pt"))
    assert 1 <= killed_at < 12

    second = start_bench(results, bench_env)
    started = time.time()
    wait_for_checkpoint(checkpoints, second, newer_than=started)
    second.send_signal(signal.SIGINT)  # Ctrl-C
    output = second.communicate(timeout=60)[0]
    assert second.returncode != 0, output

    third = start_bench(results, bench_env)
    output = third.communicate(timeout=300)[0]
    assert third.returncode == 0, output

    records, problems = RecordStore(results).load()
    assert not problems
    assert sorted(r["run_id"] for r in records) == sorted(expected)  # complete, no duplicates
    table = pd.read_csv(results / "runs.csv")
    assert sorted(table["run_id"]) == sorted(expected)
    assert any(r.get("resumed_from_epoch", 0) >= 1 for r in records), "no run resumed from a checkpoint"
    assert not list(checkpoints.glob("*.pt")), "checkpoints of recorded runs must be removed"
    assert not list((results / "claims").glob("*.json")), "claims must be released"
    assert len(list((results / "models").glob("*.pt"))) == len(expected)

    # record integrity: a record edited by hand and a foreign file are named by `bench report`
    damaged = RecordStore(results).path(records[0]["run_id"])
    damaged.write_text(json.dumps(dict(json.loads(damaged.read_text()), ua=records[0]["ua"] / 2 - 0.01)))
    (results / "records" / "foreign.json").write_text(json.dumps({"run_id": "foreign", "schema_version": 99}))
    report = CliRunner().invoke(main, ["report", "--results-dir", str(results), "--reports-dir",
                                       str(tmp_path / "reports"), "--light-preset", "tiny", "--quiet"])
    assert report.exit_code == 0, report.output
    assert f"warning: {damaged}: checksum mismatch" in report.stderr
    assert "foreign.json: foreign record (schema_version 99" in report.stderr


def test_checkpoints_left_by_a_worker_stopped_after_recording_are_removed(tmp_path, monkeypatch):
    """A worker killed between writing a run's record (or caching a plain model) and removing its
    checkpoints leaves them; the next grid over that folder removes them and changes no record."""
    from bench.execution.checkpoint import checkpoint_dir

    cache_dir = tmp_path / "cache"  # its own: the one plain model in it is the one these runs share
    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))
    args = ["run", "--methods", "baseline,hrf", "--datasets", "toy", "--presets", "tiny", "--folds", "1", "--seeds", "0",
            "--epochs", "1", "--quiet", "--results-dir", str(tmp_path / "results")]
    assert CliRunner().invoke(main, args).exit_code == 0
    records = {p.name: p.read_bytes() for p in (tmp_path / "results" / "records").glob("*.json")}
    run_ids = [name.removesuffix(".json") for name in records]
    folder = checkpoint_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    leftovers = [folder / f"run-{rid}-0.pt" for rid in run_ids]
    (plain,) = (cache_dir / "models").glob("*.pt")  # the tiny baseline's
    leftovers.append(folder / f"model-{plain.stem}.pt")
    other = folder / "run-0123456789abcdef-0.pt"  # a run this grid does not hold: not its to remove
    for path in [*leftovers, other]:
        path.write_bytes(b"left behind")
    assert CliRunner().invoke(main, args).exit_code == 0
    assert not [p for p in leftovers[:-1] if p.exists()]  # recorded runs' checkpoints: removed
    assert other.exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "results" / "records").glob("*.json")} == records
    # the plain model's checkpoint goes once a run reuses the cached model
    assert CliRunner().invoke(main, [*args[:2], "baseline,kd", *args[3:], "--teacher-preset", "tiny"]).exit_code == 0
    assert not leftovers[-1].exists()
