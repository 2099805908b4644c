"""Ready-made study grids for the standard protocols, shipped as package data (``<name>.toml``).

``bench run --study NAME --data-root PATH`` runs one; ``bench list`` names them; any flag overrides the
file, as with ``--config``. Each file says in comments which tuning budget the baseline recipe and each
tuned method got.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bench.registry import BenchError


def study_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def study_path(name: str) -> Path:
    """The grid file of study ``name``; a one-line error naming the studies for an unknown one."""
    if name not in study_names():
        raise BenchError(f"unknown study {name!r}. Available: {', '.join(study_names())} (see `bench list`)")
    return Path(str(resources.files(__name__) / f"{name}.toml"))


def study_summary(name: str) -> str:
    """The first comment line of the study's file (its one-line description)."""
    first = study_path(name).read_text().splitlines()[0]
    return first.lstrip("# ").strip()
