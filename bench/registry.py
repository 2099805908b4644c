"""One small registry mechanism for methods, backbones and datasets.

A plug-in is registered with a decorator under a name, with a one-line description and an
optional parameters dataclass whose fields declare type, default and (searchable) range.
The built-in plug-ins and third-party ones (entry-point groups ``hrf_bench.<kind>``) load on the
first lookup of any registry, so that the API, the CLI and a notebook all see the same plug-ins.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable


# The default grid's backbone: kd, prune and lowrank start from its large model, which must be better than the
# lightweight one for their rows to mean anything. On the embedded corpus's 6-epoch default the
# ConvTransformer's large model trails its lightweight one whatever its recipe or shape (docs/recipes.md);
# the Conformer's does not.
DEFAULT_BACKBONE = "conformer"


class BenchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with status 2."""


@dataclass(frozen=True)
class ParamInfo:
    """What a plug-in declares about one of its parameters."""

    name: str
    type: type
    default: Any
    help: str = ""
    low: float | None = None  # inclusive lower bound of the valid/searchable range
    high: float | None = None
    low_exclusive: bool = False
    choices: tuple | None = None
    log: bool = False  # search on a log scale by default

    def describe(self) -> str:
        text = f"{self.name}: {self.type.__name__} = {self.default!r}"
        if self.choices:
            text += f" in {{{', '.join(map(str, self.choices))}}}"
        elif self.low is not None or self.high is not None:
            left = "(" if self.low_exclusive else "["
            text += f" in {left}{'' if self.low is None else self.low}, {'' if self.high is None else self.high}]"
        return text


def param(default: Any, help: str = "", *, low: float | None = None, high: float | None = None,
          low_exclusive: bool = False, choices: tuple | None = None, log: bool = False) -> Any:
    """A dataclass field that declares its help text and valid range for the registry."""
    meta = dict(help=help, low=low, high=high, low_exclusive=low_exclusive, choices=choices, log=log)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def param_infos(params_cls: type | None) -> list[ParamInfo]:
    """The declared parameters of a parameters dataclass (empty when the plug-in takes none)."""
    if params_cls is None:
        return []
    hints = typing.get_type_hints(params_cls)
    infos = []
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        kind = kind if isinstance(kind, type) else type(default)
        infos.append(ParamInfo(name=f.name, type=kind, default=default, **f.metadata))
    return infos


def _coerce(info: ParamInfo, value: Any) -> Any:
    value = _coerce_type(info, value)
    # -0.0 is the same setting as 0.0 and must give the same run id (json writes "-0.0")
    return 0.0 if isinstance(value, float) and value == 0.0 else value


def _coerce_type(info: ParamInfo, value: Any) -> Any:
    if isinstance(value, str) and info.type is not str:
        try:
            if info.type is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return info.type(value)
        except ValueError:
            raise BenchError(f"parameter {info.name}={value!r} is not a valid {info.type.__name__}") from None
    if info.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if info.type is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a text parameter that also takes numbers, e.g. a budget ratio = 0.5 in a grid file
    if not isinstance(value, info.type) or (info.type is not bool and isinstance(value, bool)):  # e.g. from a grid file
        raise BenchError(f"parameter {info.name}={value!r} is not a valid {info.type.__name__}")
    return value


def validate_params(info: ParamInfo, value: Any) -> None:
    """Raise BenchError when ``value`` lies outside the declared choices or range, or is not finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"parameter {info.name}={value!r} must be a finite number")
    if info.choices is not None and value not in info.choices:
        raise BenchError(f"parameter {info.name}={value!r} must be one of {list(info.choices)}")
    if info.low is not None:
        if value < info.low or (info.low_exclusive and value == info.low):
            op = ">" if info.low_exclusive else ">="
            raise BenchError(f"parameter {info.name}={value!r} must be {op} {info.low}")
    if info.high is not None and value > info.high:
        raise BenchError(f"parameter {info.name}={value!r} must be <= {info.high}")


@dataclass
class Entry:
    """A registered plug-in: the object, its description and its parameters dataclass."""

    name: str
    obj: Any
    description: str
    params_cls: type | None = None
    extra: dict = field(default_factory=dict)  # plug-in specific facts (e.g. a backbone's presets)

    @property
    def params(self) -> list[ParamInfo]:
        return param_infos(self.params_cls)

    def make_params(self, overrides: dict | None = None) -> Any:
        """Build the parameters dataclass from defaults plus (string or typed) overrides, validated."""
        overrides = dict(overrides or {})
        infos = {p.name: p for p in self.params}
        unknown = sorted(set(overrides) - set(infos))
        if unknown:
            valid = ", ".join(infos) or "none"
            raise BenchError(f"{self.name} has no parameter {unknown[0]!r}; its parameters: {valid}")
        values = {}
        for name, info in infos.items():
            value = _coerce(info, overrides[name]) if name in overrides else info.default
            validate_params(info, value)
            values[name] = value
        return self.params_cls(**values) if self.params_cls is not None else None


class Registry:
    """Name -> Entry for one kind of plug-in (``methods``, ``backbones`` or ``datasets``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False

    def register(self, name: str, description: str, params: type | None = None, **extra) -> Callable:
        def decorate(obj):
            existing = self._entries.get(name)
            if existing is not None and existing.obj is not obj:
                raise BenchError(f"{self.kind} {name!r} is already registered by {existing.obj!r}")
            self._entries[name] = Entry(name, obj, description, params, extra)
            return obj

        return decorate

    def _load_plugins(self) -> None:
        load_builtin_plugins()
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=f"hrf_bench.{self.kind}"):
            try:
                ep.load()  # importing the module runs its register decorator
            except Exception as error:  # a broken third-party package must not hide the others
                raise BenchError(f"plug-in {ep.name!r} ({ep.value}, group {ep.group}) failed to load: "
                                 f"{type(error).__name__}: {error}; fix or uninstall that package") from error

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def get(self, name: str) -> Entry:
        self._load_plugins()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BenchError(f"unknown {self.kind[:-1]} {name!r}.{hint} Available: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries


METHODS = Registry("methods")
BACKBONES = Registry("backbones")
DATASETS = Registry("datasets")


_builtins_loaded = False


def load_builtin_plugins() -> None:
    """Import the built-in plug-in packages so that their decorators run (once; every lookup calls this)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: the plug-in modules look names up while they import
    try:
        import backbones  # noqa: F401
        import bench.data.datasets  # noqa: F401
        import methods  # noqa: F401
    except BaseException:
        _builtins_loaded = False
        raise
