"""The matched-compute control: the plain model trained for the training FLOPs of an over-parameterizing
method's run, with the same recipe stretched over more epochs."""

from __future__ import annotations

import pytest

from bench.execution.runner import execute

from bench.execution.spec import RunSpec

from bench.execution.workspace import Workspace
from bench.training.config import TrainConfig


def spec(**params) -> RunSpec:
    return RunSpec(method="matched-compute", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                   train=TrainConfig(epochs=2, batch_size=16, lr=3e-3), method_params={"matched-compute": params})


@pytest.mark.parametrize("matched", ["hrf", "expandnets"])
def test_the_plain_model_trains_as_many_flops_as_the_matched_method(matched, cache_dir):
    workspace = Workspace(cache_dir, progress=False, defer_latency=True)
    control = execute(spec(method=matched), workspace)
    method = execute(RunSpec(method=matched, backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                             train=TrainConfig(epochs=2, batch_size=16, lr=3e-3)), workspace)
    plain = execute(RunSpec(method="baseline", backbone="convtransformer", preset="tiny", dataset="toy", fold=1, seed=0,
                            train=TrainConfig(epochs=2, batch_size=16, lr=3e-3)), workspace)
    assert control["status"] == "ok" and control["matched_compute_ratio"] > 1
    assert control["matched_compute_epochs"] == round(2 * control["matched_compute_ratio"]) > 2
    assert len(control["history"]) == control["matched_compute_epochs"]  # the stretched schedule, every epoch
    assert control["params"] == plain["params"]  # it deploys the plain model
    # its training FLOPs match the method's within one epoch's rounding
    assert abs(control["fit_flops"] - method["fit_flops"]) <= plain["fit_flops"] / 2
    assert control["fit_flops"] > plain["fit_flops"]


def test_a_method_it_cannot_match_is_a_one_line_error_before_anything_runs():
    from bench.api import grid_values
    from bench.execution.grid import make_grid
    from bench.registry import BenchError

    for method, reason in (("kd", "starts from a cached or large model"), ("nonesuch", "not a registered method"),
                           ("matched-compute", "not a registered method")):
        with pytest.raises(BenchError, match=reason):
            make_grid(grid_values(methods=["matched-compute"], datasets=["toy"],
                                  method_params={"matched-compute": {"method": method}}))
