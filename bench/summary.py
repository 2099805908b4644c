"""The table printed at the end of ``bench run``: mean over folds and seeds per grid cell."""

from __future__ import annotations

import click
import pandas as pd

COLUMNS = ["dataset", "backbone", "method", "preset"]
FIGURES = {"wa": "WA", "ua": "UA", "macro_f1": "F1", "params": "params", "macs": "MACs", "latency_ms": "latency_ms"}


def summary_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([{k: r.get(k) for k in COLUMNS + list(FIGURES) + ["fold", "seed"]} for r in records])
    grouped = frame.groupby(COLUMNS, sort=True)
    table = grouped[list(FIGURES)].mean(numeric_only=False)
    table["runs"] = grouped.size()
    return table.rename(columns=FIGURES).reset_index()


def print_summary(records: list[dict]) -> None:
    if not records:
        click.echo("no runs recorded")
        return
    table = summary_frame(records)
    for col in ("WA", "UA", "F1"):
        table[col] = table[col].map(lambda v: f"{100 * v:.1f}")
    table["params"] = table["params"].map(lambda v: f"{v / 1e6:.3f}M")
    table["MACs"] = table["MACs"].map(lambda v: "n/a" if pd.isna(v) else f"{v / 1e6:.1f}M")
    table["latency_ms"] = table["latency_ms"].map(lambda v: f"{v:.2f}")
    click.echo(table.to_string(index=False))
