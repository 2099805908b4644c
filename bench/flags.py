"""Flag values as text (the command line's, and the string arguments ``bench.tune`` takes like it) ->
typed values; bad text is a one-line :class:`~bench.registry.BenchError` naming the flag."""

from __future__ import annotations

from bench import api
from bench.registry import BenchError


def parse_list(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BenchError(f"--{what} is empty: give a comma-separated list")
    return items


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """``1,2`` or ``1-5`` -> list of ints; anything else is a one-line error."""
    if text is None:
        return None
    parse_list(text, what)
    return api.parse_ints(text, f"--{what}")


def parse_assignments(items: tuple[str, ...], what: str) -> dict[str, dict[str, str]]:
    """``("hrf.expansion_ratio=4",)`` -> ``{"hrf": {"expansion_ratio": "4"}}``."""
    result: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        owner, dot, name = target.partition(".")
        if not sep or not dot or not owner or not name:
            raise BenchError(f"bad --{what} {item!r}: use NAME.PARAM=VALUE, e.g. hrf.expansion_ratio=4")
        result.setdefault(owner, {})[name] = value
    return result


def parse_data_roots(items: tuple[str, ...], datasets: list[str]) -> dict[str, str]:
    roots = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            if len(datasets) != 1:
                raise BenchError("--data-root PATH needs exactly one dataset; use --data-root NAME=PATH")
            name, path = datasets[0], item
        roots[name] = path
    return roots
