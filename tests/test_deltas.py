"""``--deltas``: a backbone that computes the frames' deltas itself (its registration says
``computes_deltas``) reads the plain frames and builds its front-end with them as channels; any other
reads each frame with its deltas appended. Real tiny runs on the ``toy`` corpus."""

from __future__ import annotations

from bench.execution.grid import make_grid, run_grid
from bench.measure.model_store import load_deploy_model
from bench.registry import BACKBONES
from bench.reporting.results import RecordStore
from conftest import TOY_DIM

RUN = {"methods": ["baseline"], "presets": ["tiny"], "datasets": ["toy"], "folds": [1], "seeds": [0],
       "train": {"epochs": 1}}


def _record(tmp_path, backbone: str, deltas: int) -> dict:
    store = RecordStore(tmp_path / "results")
    (record,) = run_grid(make_grid(RUN | {"backbones": [backbone], "features": {"deltas": deltas}}), store,
                         tmp_path / "cache", progress=False)
    assert record["status"] == "ok", record.get("error")
    return record


def test_a_conv_front_end_reads_the_deltas_as_channels_and_ships_them(tmp_path):
    assert BACKBONES.get("convtransformer").extra["computes_deltas"]
    plain, dynamic = _record(tmp_path, "convtransformer", 0), _record(tmp_path, "convtransformer", 2)
    assert dynamic["run_id"] != plain["run_id"] and dynamic["features_deltas"] == 2
    assert dynamic["input_dim"] == plain["input_dim"] == TOY_DIM  # the plain frames: no wider input
    model = load_deploy_model(tmp_path / "results" / "models" / f"{dynamic['run_id']}.pt").model
    channels = model.subsampling.conv1.out_channels
    assert model.subsampling.conv1.in_channels == 3 and model.subsampling.deltas == 2
    assert dynamic["params"] - plain["params"] == 2 * channels * 9  # the first convolution's weights only
    assert dynamic["macs"] > plain["macs"]


def test_a_backbone_without_its_own_deltas_reads_them_appended(tmp_path):
    assert not BACKBONES.get("speechformer").extra.get("computes_deltas")
    record = _record(tmp_path, "speechformer", 2)
    assert record["input_dim"] == 3 * TOY_DIM and record["features_deltas"] == 2


def test_the_built_architecture_is_part_of_the_run_id():
    """The same --deltas builds other models on the two kinds of backbone: each record says what was
    built, and a conv front-end's delta channels make another architecture than the preset's."""
    (spec,) = make_grid(RUN | {"backbones": ["convtransformer"], "features": {"deltas": 2}}).specs()
    assert spec.key()["architecture"]["deltas"] == 2
    (plain,) = make_grid(RUN | {"backbones": ["convtransformer"]}).specs()
    assert "deltas" not in plain.key()["architecture"]


def test_an_export_times_each_model_against_a_reference_with_its_own_front_end(tmp_path):
    """Runs with and without delta channels in one export: each entry names a reference built like it (one
    reference per backbone and input width used to serve both, so the device probe timed a model with
    delta channels against the plain front-end)."""
    import json

    import onnx
    from click.testing import CliRunner

    from bench.cli.main import main

    _record(tmp_path, "convtransformer", 0), _record(tmp_path, "convtransformer", 2)
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", "--results-dir", str(tmp_path / "results"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    entries = json.loads((out / "manifest.json").read_text())["models"]
    by_deltas = {}
    for entry in entries:
        graph = onnx.load(out / entry["reference"])
        (weight,) = [i for i in graph.graph.initializer if "conv1.weight" in i.name]
        by_deltas[entry["build_overrides"].get("deltas", 0)] = (entry["reference"], weight.dims[1])
    assert by_deltas[0][1] == 1 and by_deltas[2][1] == 3 and by_deltas[0][0] != by_deltas[2][0]
