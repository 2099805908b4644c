"""Cost figures (FLOPs = 2 x MACs, size, peak memory), the adaptive timing rule, and ``bench measure``
re-measuring a real recorded run across runtimes and thread counts without retraining."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.measure import costs

from bench.measure import probe
from bench.cli.main import main
from bench.data.features import FeatureConfig
from bench.training.models import build_backbone

FEATURES = FeatureConfig()


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def results(recorded_run, tmp_path, cache_dir, monkeypatch) -> Path:
    monkeypatch.setenv("HRF_BENCH_CACHE", str(cache_dir))
    return Path(shutil.copytree(recorded_run, tmp_path / "results"))


def test_costs_flops_are_twice_macs_and_size_and_peak_memory_are_sensible():
    model = build_backbone("convtransformer", "tiny", FEATURES.dim, 4)
    short, long = (costs.cost_figures(model, FEATURES.dim, FEATURES.frames(s)) for s in (2.0, 10.0))
    for figures in (short, long):
        assert figures["flops"] == 2 * figures["macs"] > 0
        assert figures["params"] == sum(p.numel() for p in model.parameters())
        # float32 weights plus a little pickle framing per tensor
        assert 4 * figures["params"] < figures["size_bytes"] < 4 * figures["params"] + 400 * len(model.state_dict())
        assert figures["size_format"] == "float32"
    assert long["macs"] > 4 * short["macs"]  # 5x the audio: more than 4x the work (attention is quadratic)
    # The first convolution's output (channels x T/2 x F/2 floats) must be alive at some point.
    conv_out = 8 * (FEATURES.frames(10.0) // 2) * (FEATURES.dim // 2) * 4
    assert conv_out <= long["peak_memory_bytes"] < 50 * conv_out
    assert short["peak_memory_bytes"] < long["peak_memory_bytes"]


@pytest.fixture(scope="module")
def quant_results(tmp_path_factory) -> Path:
    """A results folder holding one real ``quant`` run (static int8 through ONNX Runtime, toy, tiny)."""
    results, cache = tmp_path_factory.mktemp("quant") / "results", tmp_path_factory.mktemp("quant-cache")
    done = invoke("run", "--methods", "quant", "--backbones", "convtransformer", "--datasets", "toy", "--presets",
                  "tiny", "--folds", "1", "--seeds", "0", "--epochs", "1", "--quiet", "--defer-latency", "--results-dir", str(results),
                  "--cache-dir", str(cache))
    assert done.exit_code == 0, done.output
    return results


def test_quantized_model_is_sized_and_costed_from_its_int8_graph_and_measured_in_onnxruntime(quant_results, tmp_path):
    results = Path(shutil.copytree(quant_results, tmp_path / "results"))
    record, = (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))
    model = build_backbone("convtransformer", "tiny", 16, 4)
    # costed on the quantized graph's nodes, and equal to an independent count of the float model's shapes
    assert record["int8_macs"] == record["macs"] == costs.count_macs(model, 16, record["input_frames"])
    assert record["float_macs"] == 0 and record["flops"] == 2 * record["macs"]
    assert record["size_format"] == "int8 onnx" and record["size_bytes"] < record["size_float32_bytes"]
    done = invoke("measure", "--results-dir", str(results), "--threads", "1", "--seconds", "2", "--max-seconds", "0.3")
    assert done.exit_code == 0, done.output
    row, = pd.read_csv(results / "latency.csv").to_dict("records")  # no eager row: there is no eager int8 model
    assert row["runtime"] == "onnxruntime" and row["size_format"] == "int8 onnx"
    assert row["int8_macs"] == row["macs"] > 0 and row["float_macs"] == 0 and row["flops"] == 2 * row["macs"]
    assert row["latency_ratio_ci_low"] <= row["latency_ratio"] <= row["latency_ratio_ci_high"]
    assert row["roofline_ratio"] > 1 and row["peak_gflops"] == pytest.approx(row["peak_gflops_int8"])


def test_interleaved_timing_recovers_a_known_ratio():
    def spin(milliseconds):
        def run():
            end = time.perf_counter() + milliseconds / 1000
            while time.perf_counter() < end:
                pass
        return lambda: probe.clocked(run)

    rule = probe.TimingRule(warmup_runs=1, warmup_seconds=0.02, min_samples=8, min_seconds=0.4, max_seconds=1.0)
    timed = probe.time_interleaved(spin(2.0), spin(1.0), rule)
    figures = probe.ratio_figures(timed, 2.0, rule)
    assert 1.8 < figures["latency_ratio"] < 2.1, figures
    assert figures["latency_ratio_ci_low"] <= figures["latency_ratio"] <= figures["latency_ratio_ci_high"]
    assert figures["latency_ratio_pairs"] >= 8 and figures["latency_min_ms"] <= figures["latency_p5_ms"] <= figures["latency_ms"]
    assert 0.9 < figures["reference_latency_ms"] < 1.5


def test_peak_gemm_rates_and_the_roofline_bound():
    from bench.measure.onnx_io import peak_graphs
    peaks = probe.peak_gflops(peak_graphs(), 1)
    assert set(peaks) == {"fp32", "int8"} and all(rate > 0.5 for rate in peaks.values())
    # 1 GFLOP float at 100 GFLOP/s and 2 GFLOP int8 at 400 GFLOP/s take 15 ms at best: measured 30 ms is 2x
    bound = probe.roofline(30.0, 0.5e9, 1e9, {"fp32": 100.0, "int8": 400.0})
    assert bound["roofline_ratio"] == pytest.approx(2.0) and bound["peak_gflops"] == pytest.approx(200.0)


def test_timing_rule_stops_on_a_stable_median_and_respects_its_caps():
    steady = probe.time_adaptively(lambda: (10.0, 9.0), probe.TimingRule(warmup_seconds=0, min_samples=12,
                                                                          min_seconds=0))
    assert len(steady) == 12  # interval of zero width: stable at the first check
    started = time.perf_counter()
    spanned = probe.time_adaptively(lambda: probe.clocked(lambda: time.sleep(0.001)), probe.TimingRule(
        warmup_seconds=0, min_samples=12, min_seconds=0.2, target_rel_ci=0.5))
    assert time.perf_counter() - started >= 0.2 and len(spanned) > 12  # stable early, but kept on for min_seconds

    noise = iter(range(10**6))
    noisy = probe.time_adaptively(lambda: (float(next(noise) % 97 + 1), None), probe.TimingRule(
        warmup_seconds=0, min_samples=10, max_samples=300, max_seconds=60, target_rel_ci=1e-6))
    assert len(noisy) == 300

    slow = probe.time_adaptively(lambda: probe.clocked(lambda: time.sleep(0.02)), probe.TimingRule(
        warmup_runs=1, warmup_seconds=0, min_samples=10, max_seconds=0.1, target_rel_ci=1e-9))
    assert 3 <= len(slow) <= 6  # the time cap wins over min_samples, but never fewer than 3
    assert all(wall >= 20 and cpu < 10 for wall, cpu in slow)  # sleeping costs no CPU time

    samples = [(1.0, 0.5), (2.0, 1.0), (3.0, 1.5), (4.0, 2.0), (100.0, 2.5)]
    stats = probe.summarize(samples, audio_seconds=2.0, rule=probe.TimingRule())
    assert stats["latency_ms"] == 3.0 and stats["latency_iqr_ms"] == 2.0 and stats["latency_samples"] == 5
    assert stats["rtf"] == 3.0 / 1000 / 2.0 and stats["latency_min_ms"] == 1.0 and stats["latency_cpu_ms"] == 1.5
    assert 1.0 < stats["latency_p5_ms"] < 2.0


FAULTS_PER_PASS = """
import json, resource, torch
from bench.measure import costs
from bench.measure import probe
from bench.training.models import build_backbone
from bench.registry import load_builtin_plugins

load_builtin_plugins()
torch.set_num_threads(1)
model = build_backbone("speechformer", "lightweight", 80, 4).eval()
features, lengths = costs.example_input(80, 1001)

def faults_per_pass(passes=40):
    with torch.inference_mode():
        for _ in range(10):
            model(features, lengths)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(passes):
            model(features, lengths)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / passes

default = faults_per_pass()
setting = probe.steady_allocator()
print(json.dumps({"default": default, "steady": faults_per_pass(), "setting": setting}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's mallopt")
def test_steady_allocator_stops_page_faults_on_every_inference():
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_PASS], capture_output=True, text=True, check=True)
    faults = json.loads(done.stdout.splitlines()[-1])
    if faults["default"] < 100:
        pytest.skip(f"glibc's defaults do not page-fault here ({faults['default']:.1f} per pass): nothing to fix")
    assert faults["setting"].startswith("glibc mmap_threshold=")
    # 900-1,400 faults per 10 s SpeechFormer pass with glibc's defaults; 0-7 left with the setting
    # (an occasional heap growth while fragments settle)
    assert faults["steady"] < faults["default"] / 50, faults


def test_run_records_costs_and_latency_against_the_lightweight_reference(recorded_run):
    record, = (json.loads(p.read_text()) for p in (recorded_run / "records").glob("*.json"))
    assert record["flops"] == 2 * record["macs"] > 0 and record["float_macs"] == record["macs"]
    assert record["int8_macs"] == 0 and record["onnx_status"] == "not exported"
    assert record["size_bytes"] > 4 * record["params"] and record["peak_memory_bytes"] > 0
    assert record["latency_ms"] > 0 and record["latency_threads"] == 1 and record["input_seconds"] == 5.0
    assert record["latency_runtime"] == "torch-eager" and record["latency_min_ms"] <= record["latency_p5_ms"]
    assert record["rtf"] == pytest.approx(record["latency_ms"] / 1000 / 5.0)
    # the tiny model against the plain lightweight one: clearly faster, with an interval around the ratio
    assert record["latency_ratio_ci_low"] <= record["latency_ratio"] <= record["latency_ratio_ci_high"] < 1
    assert record["roofline_ratio"] > 1 and record["peak_gflops"] == pytest.approx(record["peak_gflops_fp32"])
    assert record["env_allocator"] == probe.steady_allocator()


def test_measure_rows_per_runtime_threads_and_duration_then_skips_and_keeps_devices_apart(results):
    args = ["measure", "--results-dir", str(results), "--seconds", "2,5", "--max-seconds", "0.2"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    table = pd.read_csv(results / "latency.csv")
    cores = probe.usable_cores()
    expected = {(runtime, threads, seconds) for runtime in ("torch-eager", "onnxruntime")
                for threads in {1, cores} for seconds in (2.0, 5.0)}
    assert set(zip(table.runtime, table.threads, table.input_seconds)) == expected and len(table) == len(expected)
    assert (table.device == probe.device_tag(None)).all() and table.env_cpu.notna().all()
    assert (table.flops == 2 * table.macs).all() and (table.latency_samples >= 3).all()
    assert (table.rtf - table.latency_ms / 1000 / table.input_seconds).abs().max() < 1e-9
    assert (table.latency_p90_ms >= table.latency_ms).all() and (table.latency_iqr_ms >= 0).all()
    onnx_rows = table[table.runtime == "onnxruntime"]
    assert onnx_rows.check_ok.all() and (onnx_rows.check_max_abs_diff <= 1e-4).all()
    assert (table.latency_ratio_ci_low <= table.latency_ratio).all() and (table.reference_latency_ms > 0).all()
    assert (table.latency_ratio <= table.latency_ratio_ci_high).all()
    assert (table[table.threads == 1].latency_ratio < 1).all()  # tiny against the plain lightweight model
    assert table[table.threads == 1].roofline_ratio.gt(1).all()  # the roofline is a 1-thread figure
    if cores > 1:
        assert table[table.threads == cores].roofline_ratio.isna().all()
    assert (table.groupby("input_seconds").macs.nunique() == 1).all()  # costs belong to the duration

    stored, = (results / "latency").glob("*.json")
    before = stored.read_bytes()
    again = invoke(*args)
    assert "already measured" in again.output and stored.read_bytes() == before

    other = invoke(*args, "--device", "other-box", "--runtimes", "torch-eager", "--threads", "1")
    assert other.exit_code == 0, other.output
    table = pd.read_csv(results / "latency.csv")
    assert len(table[table.device == "other-box"]) == 2 and len(table) == len(expected) + 2
    assert stored.read_bytes() == before  # rows of this machine untouched


@pytest.mark.parametrize("args, message", [
    (["--runtimes", "tensorrt"], "unknown runtime 'tensorrt'"),
    (["--threads", "0"], "bad threads '0'"),
    (["--seconds", "two"], "bad seconds 'two'"),
    (["--seconds", "1e9"], "at most 600"),  # a terabyte input
    (["--seconds", "nan"], "bad seconds 'nan'"),
    (["--threads", "100000"], "bad threads '100000': at most 256"),  # a session per thread count
    (["--max-seconds", "nan"], "--max-seconds must be in"),
    (["--max-seconds", "1e30"], "--max-seconds must be in"),
    (["--device", "my box"], "bad device tag 'my box'"),
    (["--runs", "ffffffff"], "no recorded run 'ffffffff'"),
])
def test_measure_bad_input_is_one_line_and_exit_2(results, args, message):
    result = invoke("measure", "--results-dir", str(results), *args)
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and message in result.output


def test_measure_without_runs_says_what_to_do(tmp_path):
    result = invoke("measure", "--results-dir", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "run `bench run` first" in result.output


@pytest.mark.parametrize("damaged", [".pt", ".onnx", ".int8.onnx"])  # .int8.onnx: how 0.2 saved quant's graph
def test_measure_names_a_damaged_saved_model_and_writes_nothing(results, damaged):
    model, = (results / "models").glob("*.pt")
    path = model.with_suffix(damaged)
    path.write_bytes(b"not a model")
    result = invoke("measure", "--results-dir", str(results), "--threads", "1", "--seconds", "2")
    assert result.exit_code == 2
    line, = [l for l in result.output.splitlines() if l.strip()]
    assert line.startswith("error: ") and str(path) in line
    assert not (results / "latency").exists() and not (results / "latency.csv").exists()


def test_import_latency_validates_every_row_before_replacing_a_stored_one(results, tmp_path):
    assert invoke("measure", "--results-dir", str(results), "--runtimes", "torch-eager", "--threads", "1",
                  "--seconds", "2", "--max-seconds", "0.2", "--device", "box").exit_code == 0
    stored, = (results / "latency").glob("box-*.json")
    before, table = stored.read_bytes(), (results / "latency.csv").read_bytes()
    good = json.loads(before)["rows"][0]
    for bad in ({"latency_ms": "fast"}, {"latency_ms": None}, {"latency_ms": float("nan")}, {"threads": 0},
                {"run_id": "../../escape"}):
        rows = [{**good, "input_seconds": 5.0}, {**good, **bad}]  # a valid new row, then a bad replacement
        if bad == {"latency_ms": None}:
            del rows[1]["latency_ms"]
        file = tmp_path / "latency-box.json"
        file.write_text(json.dumps({"schema": probe.SCHEMA, "schema_version": probe.SCHEMA_VERSION, "device": "box",
                                    "rows": rows}))
        result = invoke("import-latency", str(file), "--results-dir", str(results))
        assert result.exit_code == 2, (bad, result.output)
        line, = [l for l in result.output.splitlines() if l.strip()]
        assert line.startswith("error: ") and "row 2" in line and "nothing was imported" in line
        assert stored.read_bytes() == before and (results / "latency.csv").read_bytes() == table
        assert sorted(p.name for p in (results / "latency").iterdir()) == [stored.name]
