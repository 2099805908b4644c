"""The search space: ``NAME=LOW:HIGH[:log]`` ranges and ``NAME=A,B,C`` choices over a method's declared
parameters (``SearchParam``)."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from bench.registry import METHODS, BenchError


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter: ``component``'s ``name``, known to Optuna as ``key``."""

    component: str
    name: str
    key: str
    kind: str  # float | int | categorical | fixed (not searched)
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        return suggest(self.key, self.low, self.high, log=self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices)
        kind = optuna.distributions.IntDistribution if self.kind == "int" else optuna.distributions.FloatDistribution
        return kind(self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        return value in self.choices if self.kind == "categorical" else self.low <= value <= self.high


def _typed(component: str, name: str, text: str, where: str):
    """``text`` as the declared type of the parameter, validated against its declared range."""
    try:
        return getattr(METHODS.get(component).make_params({name: text}), name)
    except BenchError as error:
        raise BenchError(f"--param {where}: {error}") from None


def parse_search_param(text: str, components: list[str]) -> SearchParam:
    """``NAME=LOW:HIGH[:log]`` (range), ``NAME=A,B,C`` (choices) or ``NAME=VALUE`` (kind ``fixed``, the
    value as the only choice); NAME may be ``COMPONENT.NAME`` when the method is a composition."""
    target, sep, spec = (part.strip() for part in text.partition("="))
    if not sep or not target or not spec:
        raise BenchError(f"bad --param {text!r}: use NAME=LOW:HIGH[:log], NAME=A,B,C or NAME=VALUE")
    component, _, name = target.rpartition(".")
    owners = [component] if component else [c for c in components if name in {p.name for p in METHODS.get(c).params}]
    if component and component not in components:
        raise BenchError(f"--param {text}: {component!r} is not part of the tuned method {'+'.join(components)!r}")
    if len(owners) != 1 or name not in {p.name for p in METHODS.get(owners[0]).params}:
        declared = ", ".join(f"{c}.{p.name}" for c in components for p in METHODS.get(c).params) or "none"
        problem = "is ambiguous: prefix it with its method" if len(owners) > 1 else "is not a parameter"
        raise BenchError(f"--param {text}: {target!r} {problem}; searchable parameters: {declared}")
    component = owners[0]
    info = {p.name: p for p in METHODS.get(component).params}[name]
    key = name if len(components) == 1 else f"{component}.{name}"
    has_range = info.low is not None or info.high is not None
    if ":" in spec:
        if info.choices is not None or not has_range or info.type not in (int, float):
            raise BenchError(f"--param {text}: {info.describe()} declares no numeric range; give choices "
                             f"({name}=A,B) or one value")
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise BenchError(f"--param {text} does not parse: use {name}=LOW:HIGH or {name}=LOW:HIGH:log")
        try:
            info.type(parts[0]), info.type(parts[1])
        except ValueError:
            raise BenchError(f"--param {text} does not parse: LOW and HIGH must be {info.type.__name__}s") from None
        low, high = (_typed(component, name, part, text) for part in parts[:2])
        log = len(parts) == 3 or info.log
        if low >= high or (log and low <= 0):
            raise BenchError(f"--param {text}: need LOW < HIGH{' and LOW > 0 for a log scale' if log else ''}")
        return SearchParam(component, name, key, info.type.__name__, low, high, log)
    if "," in spec:
        if info.choices is None and not has_range and info.type is not bool:
            raise BenchError(f"--param {text}: {info.describe()} declares no range or choices, so it cannot be searched")
        values = [_typed(component, name, v.strip(), text) for v in spec.split(",") if v.strip()]
        if not values:  # "init=," reached Optuna, whose ValueError came mid-trial
            raise BenchError(f"--param {text}: no choices given: use {name}=A,B or {name}=VALUE")
        return SearchParam(component, name, key, "categorical", choices=tuple(dict.fromkeys(values)))
    return SearchParam(component, name, key, "fixed", choices=(_typed(component, name, spec, text),))
