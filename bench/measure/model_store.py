"""Deploy models saved as data, not as pickled modules: the backbone builder's name and preset, the
module changes a method made to that build, and the ``state_dict``.

A method's deploy model is the registered builder's model, possibly changed in structure: pruning
shrinks layers (``in_features``, ``num_heads``...), low-rank replaces layers by factor pairs and
attention by ``LowRankAttention``, quantization by int8 modules. The file stores, for every module
that differs from a fresh build (its type, its settings, its parameter shapes or its children), the
module's class name, settings and tensor shapes; loading builds the preset, rebuilds those modules
empty and loads the ``state_dict``. The file holds only tensors and plain values
(``torch.load(weights_only=True)``), so it survives refactoring of everything but the named classes.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from bench.paths import atomic_write
from bench.method import Deployed
from bench.training.models import build_backbone
from bench.registry import BACKBONES, METHODS, BenchError

log = logging.getLogger("bench")
FORMAT = "hrf-bench-deploy-model"
VERSION = 1
LEGACY_GRAPH_SUFFIX = ".int8.onnx"
RUN_ID = re.compile(r"[0-9a-f]{1,16}")  # bench.reporting.results.run_id: 16 hex digits; a prefix names a run too
_BOOKKEEPING = frozenset(vars(nn.Module()))  # what nn.Module.__init__ sets: hooks, _parameters, training...


def _encode(value, where: str):
    """A module setting as plain data (dtypes, classes and functions by name)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, where) for v in value]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return {"object": f"{value.__module__}:{value.__qualname__}"}
    raise BenchError(f"cannot save the deploy model's attribute {where} ({type(value).__name__}) as data: keep "
                     f"tensors in parameters or buffers (register_buffer) and plain values in attributes")


def _decode(value):
    if not isinstance(value, dict):
        return value
    (kind, item), = value.items()
    if kind in ("tuple", "list"):
        items = [_decode(v) for v in item]
        return tuple(items) if kind == "tuple" else items
    if kind == "dtype":
        return getattr(torch, item)
    return _import(item)


def _trusted_packages() -> set[str]:
    """Top-level packages a saved document may name classes and functions from: torch, hrf-bench's own,
    and those of registered plug-ins (a third-party method's modules)."""
    packages = {"torch", "bench", "backbones", "methods"}
    for registry in (METHODS, BACKBONES):
        for name in registry.names():
            packages.add(str(getattr(registry.get(name).obj, "__module__", "")).partition(".")[0])
    return packages


def _import(name: str):
    """The object ``module:qualname`` names, from a trusted package only (see ``_trusted_packages``): a
    document in a shared results folder must not be able to import, and so run, any module."""
    module, _, qualname = str(name).partition(":")
    if module.partition(".")[0] not in _trusted_packages() or not qualname:
        raise BenchError(f"a saved deploy model names {name!r}, which is not from torch or a registered plug-in: "
                         f"not loaded")
    try:
        target = importlib.import_module(module)
    except ImportError:
        raise BenchError(f"a saved deploy model names {name!r}, whose module does not import here") from None
    for part in qualname.split("."):
        target = getattr(target, part, None) if not part.startswith("__") else None
        if target is None:
            raise BenchError(f"a saved deploy model names {name!r}, which does not exist here: re-run its run")
    # a trusted module's attributes include the modules it imported (torch.os): the object itself must be trusted
    if str(getattr(target, "__module__", None)).partition(".")[0] not in _trusted_packages():
        raise BenchError(f"a saved deploy model names {name!r}, which is not from torch or a registered plug-in: "
                         f"not loaded")
    return target


def _settings(module: nn.Module, path: str) -> dict:
    """The module's own attributes; torch script objects (packed int8 weights) come back with the state_dict."""
    return {k: _encode(v, f"{path or 'model'}.{k}") for k, v in vars(module).items()
            if k not in _BOOKKEEPING and not isinstance(v, torch._C.ScriptObject)}


def _describe(module: nn.Module, path: str) -> dict:
    """Everything needed to rebuild ``module`` empty (its children are described on their own)."""
    return {
        "path": path,
        "class": f"{type(module).__module__}:{type(module).__qualname__}",
        "settings": _settings(module, path),
        "parameters": {n: None if p is None else list(p.shape) for n, p in module._parameters.items()},
        "buffers": {n: None if b is None else [list(b.shape), str(b.dtype).removeprefix("torch.")]
                    for n, b in module._buffers.items()},
        "non_persistent": sorted(module._non_persistent_buffers_set),
        "children": {n: c is not None for n, c in module._modules.items()},
    }


def _changes(model: nn.Module, fresh: nn.Module) -> list[dict]:
    """Descriptions of the modules of ``model`` that differ from ``fresh`` (parents before children)."""
    fresh_modules = dict(fresh.named_modules())
    changes = []
    for path, module in model.named_modules():
        described = _describe(module, path)
        counterpart = fresh_modules.get(path)
        if counterpart is None or _describe(counterpart, path) != described:
            changes.append(described)
    return changes


def _rebuild(entry: dict, fresh_modules: dict[str, nn.Module], changed: set[str]) -> nn.Module:
    cls = _import(entry["class"])
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise BenchError(f"a saved deploy model names {entry['class']!r} as a module class, which it is not: not loaded")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    vars(module).update({k: _decode(v) for k, v in entry["settings"].items()})
    for name, shape in entry["parameters"].items():
        module._parameters[name] = None if shape is None else nn.Parameter(torch.empty(shape), requires_grad=False)
    for name, spec in entry["buffers"].items():
        module._buffers[name] = None if spec is None else torch.empty(spec[0], dtype=getattr(torch, spec[1]))
    module._non_persistent_buffers_set = set(entry["non_persistent"])
    for name, present in entry["children"].items():  # in order: nn.Sequential runs its children in this order
        child_path = f"{entry['path']}.{name}" if entry["path"] else name
        unchanged = present and child_path not in changed
        # an unchanged child is the fresh build's module; a changed one is attached in its place later
        module._modules[name] = fresh_modules[child_path] if unchanged else None
    return module


def _attach(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    if not path:
        return module
    parent, _, name = path.rpartition(".")
    model.get_submodule(parent)._modules[name] = module
    return model


def graph_path(path: Path) -> Path:
    """Where the ONNX graph a method ships (:class:`bench.method.Deployed`) is saved beside its module."""
    return Path(path).with_suffix(".onnx")


def saved_graph(path: Path) -> Path | None:
    """The saved graph beside ``path``: ``<run_id>.onnx``, or ``<run_id>.int8.onnx`` as 0.2 named quant's."""
    return next((p for p in (graph_path(path), Path(path).with_suffix(LEGACY_GRAPH_SUFFIX)) if p.is_file()), None)


def save_deploy_model(shipped: Deployed | nn.Module, path: Path, backbone: str, input_dim: int, num_classes: int,
                      presets: list[str] | None = None) -> None:
    """Save what ships (the module, built by ``backbone``'s builder, as data; the method's own ONNX graph,
    if any, beside it), each file atomically; a graph left by an earlier run of the same id is removed. The
    structure is stored as changes to the build of the closest of ``presets`` (default: all of the
    backbone's presets); any preset rebuilds the model exactly, a close one keeps the list of changes short."""
    shipped = Deployed.of(shipped)
    model = shipped.model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (graph_path(path), path.with_suffix(LEGACY_GRAPH_SUFFIX)):
        stale.unlink(missing_ok=True)
    if shipped.graph is not None:  # written first: a module file is only ever beside its own graph
        atomic_write(graph_path(path), lambda tmp: tmp.write_bytes(shipped.graph))
    best = None
    for preset in dict.fromkeys(presets or BACKBONES.get(backbone).extra["presets"]):
        changes = _changes(model, build_backbone(backbone, preset, input_dim, num_classes))
        if best is None or len(changes) < len(best[1]):
            best = (preset, changes)
        if not changes:
            break
    preset, changes = best
    non_persistent = {f"{c['path']}.{n}" if c["path"] else n: model.get_submodule(c["path"])._buffers[n]
                      for c in changes for n in c["non_persistent"] if model.get_submodule(c["path"])._buffers[n] is not None}
    document = {"format": FORMAT, "version": VERSION, "backbone": backbone, "preset": preset, "input_dim": input_dim,
                "num_classes": num_classes, "changes": changes, "state_dict": model.state_dict(),
                "non_persistent_buffers": non_persistent}
    atomic_write(path, lambda tmp: torch.save(document, tmp))


def build_saved(document: dict) -> nn.Module:
    """The deploy model described by a saved document, with its weights, in eval mode."""
    fresh = build_backbone(document["backbone"], document["preset"], document["input_dim"], document["num_classes"])
    fresh_modules = dict(fresh.named_modules())
    changed = {c["path"] for c in document["changes"]}
    model = fresh
    for entry in document["changes"]:
        model = _attach(model, entry["path"], _rebuild(entry, fresh_modules, changed))
    model.load_state_dict(document["state_dict"], strict=True)
    for name, tensor in document["non_persistent_buffers"].items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = tensor
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model.eval()


def load_deploy_model(path: Path) -> Deployed:
    """What a run shipped: the saved module, and the ONNX graph its method shipped (beside it) if any.
    Reading it runs no code from the file: tensors and plain values only, and the classes it names
    come from torch or a registered plug-in's package (``_import``). A whole pickled module (hrf-bench
    before 0.2) is refused, since unpickling it could run anything."""
    damaged = f"{path} is not a deploy model saved by hrf-bench: re-run its run with `bench run --force`"
    try:
        with warnings.catch_warnings():  # int8 tensors unpickle through torch's deprecated TypedStorage
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated", category=UserWarning)
            document = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:  # weights_only refuses what is not data: a pickled module, or a planted object
        raise BenchError(f"{path} holds pickled objects (how hrf-bench before 0.2 saved a model, or a planted file), "
                         f"which loading would run: not loaded; re-run its run with `bench run --force`") from None
    except Exception:  # noqa: BLE001 - a damaged file raises anything from EOFError to RuntimeError
        raise BenchError(damaged) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BenchError(damaged)
    if not isinstance(document.get("version"), int):
        raise BenchError(damaged)
    if document["version"] > VERSION:
        raise BenchError(f"{path} was saved by a newer hrf-bench (format {document['version']}): upgrade hrf-bench")
    try:
        model = build_saved(document)
    except BenchError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):  # an edited document, anywhere in the rebuild
        raise BenchError(damaged) from None
    graph = saved_graph(path)
    return Deployed(model.eval(), graph.read_bytes() if graph is not None else None)


def find_model(run_id: str, results_dir: Path) -> Path:
    """``<results_dir>/models/<run_id>.pt`` for a run id or a unique prefix of one."""
    folder = Path(results_dir) / "models"
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise BenchError(f"{run_id!r} is not a run id: give the 16 hex digits of a run id from runs.csv, "
                         f"or a prefix of them (bench.load_runs)")
    matches = sorted(folder.glob(f"{run_id}*.pt")) if folder.is_dir() else []
    if len(matches) != 1:
        problem = "matches several runs" if matches else f"has no saved deploy model in {folder}"
        raise BenchError(f"run {run_id!r} {problem}: give a run id from runs.csv (bench.load_runs)")
    return matches[0]
