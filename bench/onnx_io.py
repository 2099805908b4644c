"""ONNX export of deploy models for one utterance (batch 1) of any length, checked against PyTorch.

torch 2.14's TorchScript exporter bakes the time length into ``nn.MultiheadAttention``'s reshapes, so
the export goes through ``torch.export`` (the dynamo exporter, with onnxscript), with a symbolic time
axis. The batch stays 1, as on a device classifying one utterance: a symbolic batch doubles the
export time (every shape expression gains a symbol). Exports take seconds to minutes per model, so
graphs are cached per architecture: a model whose module tree, tensor names, shapes and
dtypes match an earlier export reuses its graph with its own weights bound in (the graph is exported
unoptimized, so every weight is an initializer named after its state-dict entry; ONNX Runtime folds
constants when it loads it). The cache lives in this process and, given ``graph_cache``, on disk,
keyed also by the source code of the model's modules and of this exporter, and the torch version. Every exported file is
checked against PyTorch at two lengths; a reused graph that failed the check is exported afresh.
"""

from __future__ import annotations

import hashlib
import io
import inspect
import logging
import os
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.measure import example_input, is_quantized
from bench.probe import CHECK_ATOL, ProbeError, ort_session
from bench.registry import BenchError

log = logging.getLogger("bench")
INPUT_NAMES, OUTPUT_NAMES = ["features", "lengths"], ["logits"]
# The traced example: prime frame count and (padded) length, so that no length-dependent branch
# (padding to a window multiple, say) is traced in its special case.
EXPORT_FRAMES, EXPORT_LENGTH = 227, 163
_graphs: dict[str, bytes] = {}  # architecture fingerprint -> serialized ModelProto (this process)


def architecture(model: nn.Module, input_dim: int) -> str:
    """Fingerprint of what the exported graph depends on besides weight values."""
    tensors = [(n, tuple(t.shape), str(t.dtype)) for n, t in (*model.named_parameters(), *model.named_buffers())]
    digest = hashlib.sha1(repr((repr(model), tensors, input_dim, torch.__version__)).encode())
    for source in [__file__, *sorted({inspect.getsourcefile(type(m)) or "" for m in model.modules()})]:
        digest.update(Path(source).read_bytes() if source else b"")
    return digest.hexdigest()


def _cached_graph(key: str, graph_cache: Path | None) -> bytes | None:
    if key not in _graphs and graph_cache is not None and (graph_cache / f"{key}.onnx").exists():
        _graphs[key] = (graph_cache / f"{key}.onnx").read_bytes()
    return _graphs.get(key)


def _store_graph(key: str, graph: bytes, graph_cache: Path | None) -> None:
    _graphs[key] = graph
    if graph_cache is not None:
        graph_cache.mkdir(parents=True, exist_ok=True)
        tmp = graph_cache / f".{key}.tmp{os.getpid()}"
        tmp.write_bytes(graph)
        os.replace(tmp, graph_cache / f"{key}.onnx")


def _torch_export(model: nn.Module, input_dim: int):
    """The ONNX ModelProto of ``model`` with symbolic frames (raises on unsupported models)."""
    features, _ = example_input(input_dim, EXPORT_FRAMES)
    lengths = torch.tensor([EXPORT_LENGTH])  # shorter than the input: padding masks are traced
    frames = torch.export.Dim("frames", min=16, max=1_000_000)
    with _quiet_exporter():
        program = torch.onnx.export(model, (features, lengths), dynamo=True, optimize=False, verbose=False,
                                    input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                    dynamic_shapes=({1: frames}, None))
    return program.model_proto


@contextmanager
def _quiet_exporter():
    """The exporter logs and prints its steps and warns about optional packages: keep output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):  # its passes print() their progress
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _bind_weights(graph: bytes, model: nn.Module):
    """The cached graph with ``model``'s tensors as initializers (None if a shape differs)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(graph)
    tensors = {n: t.detach().cpu() for n, t in (*model.named_parameters(), *model.named_buffers())}
    for initializer in proto.graph.initializer:
        tensor = tensors.get(initializer.name)
        if tensor is None:  # a constant of the graph, not a weight (the round-trip check has the last word)
            continue
        if tuple(initializer.dims) != tuple(tensor.shape):
            return None
        initializer.CopyFrom(numpy_helper.from_array(tensor.numpy(), initializer.name))
    return proto


def _write(proto, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)


def export_onnx(model: nn.Module, input_dim: int, path: Path, check_frames: tuple[int, int] = (201, 501),
                what: str = "the deploy model", graph_cache: Path | None = None) -> float:
    """Write ``model`` as ONNX to ``path`` and return the largest |ONNX Runtime - PyTorch| difference
    over ``check_frames`` (at least 1e-4 apart is an error). Unsupported models raise a one-line
    BenchError naming ``what``."""
    model = model.eval()
    if is_quantized(model):
        raise BenchError(f"cannot export {what} to ONNX: it is dynamically quantized (torch.ao packed int8 "
                         f"weights have no ONNX export); measure it with --runtimes torch-eager")
    key = architecture(model, input_dim)
    graph = _cached_graph(key, graph_cache)
    if graph is not None:
        proto = _bind_weights(graph, model)
        if proto is not None:
            _write(proto, path)
            difference = round_trip_difference(model, path, input_dim, check_frames)
            if difference <= CHECK_ATOL:
                return difference
            log.debug("reused graph differs by %.2g for %s; exporting afresh", difference, what)
    try:
        proto = _torch_export(model, input_dim)
    except Exception as error:  # torch.export raises many types; the user needs the first line
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise BenchError(f"cannot export {what} to ONNX ({type(error).__name__}: {reason[:200]}); "
                         f"measure it with --runtimes torch-eager") from None
    _write(proto, path)
    difference = round_trip_difference(model, path, input_dim, check_frames)
    if difference > CHECK_ATOL:
        path.unlink()
        raise BenchError(f"ONNX export of {what} differs from PyTorch by {difference:.2g} (> {CHECK_ATOL}); "
                         f"measure it with --runtimes torch-eager")
    _store_graph(key, proto.SerializeToString(), graph_cache)
    return difference


def check_inputs(input_dim: int, check_frames: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An utterance of the first length, and one padded to the second (valid for two thirds of it)."""
    short, long = check_frames
    return [example_input(input_dim, short), (example_input(input_dim, long)[0], torch.tensor([long * 2 // 3]))]


def round_trip_difference(model: nn.Module, path: Path, input_dim: int, check_frames: tuple[int, int]) -> float:
    """Largest |ONNX Runtime - PyTorch| logit difference over :func:`check_inputs`."""
    try:
        session = ort_session(path, threads=1)
    except ProbeError as error:
        raise BenchError(str(error)) from None
    worst = 0.0
    with torch.inference_mode():
        for features, lengths in check_inputs(input_dim, check_frames):
            expected = model(features, lengths).numpy()
            actual = session.run(None, {"features": features.numpy(), "lengths": lengths.numpy()})[0]
            worst = max(worst, float(np.max(np.abs(actual - expected))))
    return worst
