"""What 0.2 wrote stays valid: run ids (recorded runs are not run again) and saved deploy models.

``tests/data/v0.2`` was written by the code before the harness was grouped by stage: run ids of a few
grids and a deploy model saved as changes to another preset (so loading rebuilds modules by class name).
"""

import json
from pathlib import Path

import torch

from bench.execution.grid import make_grid
from bench.measure.model_store import load_deploy_model

DATA = Path(__file__).parent / "data" / "v0.2"


def test_run_ids_of_0_2_grids_are_unchanged():
    pinned = json.loads((DATA / "pinned.json").read_text())["run_ids"]
    assert len(pinned) == 4
    for entry in pinned:
        (spec,) = make_grid(entry["settings"]).specs()
        assert (spec.method, spec.run_id) == (entry["method"], entry["run_id"]), entry["settings"]


def test_a_deploy_model_saved_by_0_2_loads_and_gives_the_same_logits():
    pinned = json.loads((DATA / "pinned.json").read_text())
    model = load_deploy_model(DATA / "convtransformer-tiny.pt").model.eval()
    x = torch.randn(*pinned["input_shape"], generator=torch.Generator().manual_seed(pinned["input_seed"]))
    with torch.inference_mode():
        logits = model(x, torch.tensor([x.shape[1]]))
    torch.testing.assert_close(logits, torch.tensor(pinned["logits"]), rtol=1e-5, atol=1e-5)
