"""The summary as text: cells (percent, points, counts, sizes, intervals), and the Markdown, LaTeX and
terminal tables."""

from __future__ import annotations

import pandas as pd

from bench.reporting import stats
from bench.reporting.columns import DELTA_LARGE, DELTA_LIGHT, LABELS, METRICS, MISSING, _is_missing, is_true


def percent(value, std=None) -> str:
    if _is_missing(value):
        return MISSING
    return f"{100 * value:.1f}" + ("" if std is None else f" ± {MISSING if _is_missing(std) else f'{100 * std:.1f}'}")


def signed_points(value) -> str:
    return MISSING if _is_missing(value) else f"{100 * value:+.1f}"


def count(value) -> str:
    """Human-readable count: 31.2k, 1.05M, 3.40G."""
    if _is_missing(value):
        return MISSING
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def size(value) -> str:
    """Bytes as 700 kB, 1.2 MB."""
    if _is_missing(value):
        return MISSING
    for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f} B"


def milliseconds(value) -> str:
    return MISSING if _is_missing(value) else f"{value:.2f}"


def interval(row) -> str:
    if _is_missing(row.get("ci_low")):
        return MISSING
    mark = " *" if is_true(row.get("significant")) else ""
    return f"[{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}]{mark}"


def paired_points(value, pairs) -> str:
    """A paired mean difference in points with the number of folds it rests on: ``+2.0 (2)``."""
    return MISSING if _is_missing(value) else f"{signed_points(value)} ({pairs:.0f})"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as text cells (headline first), for the terminal and the Markdown/LaTeX exports.
    ``failed`` and ``warning`` appear only when some row has one."""
    rows = []
    for _, row in summary.iterrows():
        headline = row["headline_metric"]
        cells = {"method": row["method"], "config": row["config"], "backbone": row["backbone"],
                 "preset": row["preset"], "settings": row["settings"],
                 f"{LABELS.get(headline, headline)} %": percent(row["headline_mean"], row["headline_std"]),
                 DELTA_LIGHT: "ref" if row["role"] == "light" else paired_points(row.get(f"light_{headline}"),
                                                                                 row["pairs"]),
                 "95% CI": interval(row),
                 "p": MISSING if _is_missing(row.get("p_wilcoxon")) else f"{row['p_wilcoxon']:.3f}",
                 DELTA_LARGE: "ref" if row["role"] == "large" else paired_points(row.get(f"large_{headline}"),
                                                                                 row["large_pairs"])}
        cells.update({LABELS[m]: percent(row[f"{m}_mean"]) for m in METRICS if m != headline})
        cells.update({"params": count(row["params"]), "MACs": count(row["macs"]),
                      # the ratio, timed interleaved with the plain model: absolute times drift with the machine
                      "latency ×": ratio(row.get("latency_ratio")),
                      "train ×": multiple(row.get("train_flops_x")), "runs": str(row["runs"]),
                      "failed": str(row["failed"]), "warning": row["warning"]})
        rows.append(cells)
    table = pd.DataFrame(rows)
    for optional in ("config", "settings", "warning"):
        if optional in table and not table[optional].astype(bool).any():
            table = table.drop(columns=optional)
    if "failed" in table and (table["failed"] == "0").all():
        table = table.drop(columns="failed")
    return table


def ratio(value) -> str:
    """A latency ratio to the plain lightweight model: ``0.84×``."""
    return MISSING if _is_missing(value) else f"{value:.2f}×"


def multiple(value) -> str:
    """A cost multiple of the plain lightweight model's: ``2.3×``."""
    return MISSING if _is_missing(value) else f"{value:.2g}×" if value < 10 else f"{value:.0f}×"


def _datasets(summary: pd.DataFrame):
    for dataset, group in summary.groupby("dataset", sort=True):
        headline = group["headline_metric"].iloc[0]
        yield dataset, headline, display_table(group)


def to_markdown(summary: pd.DataFrame) -> str:
    """One pipe table per dataset."""
    parts = []
    for dataset, headline, table in _datasets(summary):
        cells = [[str(c).replace("|", "\\|") for c in row] for row in [list(table.columns), *table.to_numpy().tolist()]]
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
        parts.append(f"## {dataset} (headline: {LABELS.get(headline, headline)})\n\n" + "\n".join(lines) + "\n")
    return "\n".join(parts) if parts else "No runs recorded.\n"


def _latex_escape(text: str) -> str:
    replace = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "±": r"$\pm$", "Δ": r"$\Delta$", "—": "--"}
    return "".join(replace.get(ch, ch) for ch in str(text))


def to_latex(summary: pd.DataFrame) -> str:
    """One booktabs ``tabular`` per dataset (needs ``\\usepackage{booktabs}``)."""
    parts = []
    for dataset, headline, table in _datasets(summary):
        lines = [f"% {dataset} (headline: {LABELS.get(headline, headline)})",
                 r"\begin{tabular}{" + "l" * 4 + "r" * (len(table.columns) - 4) + "}", r"\toprule",
                 " & ".join(_latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in table.to_numpy().tolist()]
        lines += [r"\bottomrule", r"\end{tabular}"]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts) if parts else "% no runs recorded\n"


def to_terminal(summary: pd.DataFrame) -> str:
    """One table per dataset; warnings as lines below it rather than a wide column."""
    parts = []
    for dataset, headline, table in _datasets(summary):
        text = (f"{dataset} (headline {LABELS.get(headline, headline)}; Δ: paired mean difference in points over "
                f"the folds in brackets, seeds averaged within a fold; * = 95% interval over folds excludes 0, from "
                f"{stats.MIN_SIGNIFICANT_PAIRS} folds)\n")
        text += table.drop(columns="warning", errors="ignore").to_string(index=False)
        if "warning" in table:
            for _, row in table[table["warning"].astype(bool)].iterrows():
                config = f" ({row['config']})" if row.get("config") else ""
                text += f"\nwarning: {row['method']}{config} {row['backbone']} @{row['preset']}: {row['warning']}"
        parts.append(text)
    return "\n\n".join(parts)
