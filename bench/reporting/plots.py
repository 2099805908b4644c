"""Report figures (PNG and SVG, Agg backend, colour-blind-safe palette): accuracy against MACs and
latency with the plain-model frontier and the Pareto front, per-fold points over means with bootstrap
intervals (seaborn ``catplot``/``stripplot``), learning curves (seaborn ``relplot``), and Optuna study
plots.

Every figure is written deterministically (fixed SVG id salt, no dates), so that regenerating a
report from the same records gives the same files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import EngFormatter, MaxNLocator  # noqa: E402

from bench.method import plain_reference  # noqa: E402
from bench.reporting.columns import LABELS  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
COSTS = {"macs": "MACs (5 s input)", "latency_ratio": "latency / plain lightweight (interleaved)",
         "latency_min_ms": "latency ms (5 s input, minimum)"}
CURVES = {"train_loss": "train loss", "val_loss": "val loss", "val_ua": "val UA"}  # history keys drawn
STYLE = {"svg.hashsalt": "hrf-bench", "svg.fonttype": "none", "font.size": 11, "axes.titlesize": 12,
         "axes.labelsize": 11, "legend.fontsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10}


@dataclass(frozen=True)
class Figure:
    """One written figure: ``section`` is ``tradeoff``, ``folds``, ``curves`` or ``tune``."""

    section: str
    title: str
    caption: str
    svg: Path
    png: Path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "unnamed"


def pareto_front(costs, scores) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and score (higher), by
    increasing cost. NaN points are never on the front."""
    points = [(c, -s, i) for i, (c, s) in enumerate(zip(costs, scores)) if not (math.isnan(c) or math.isnan(s))]
    front, best = [], -math.inf
    for cost, negative_score, index in sorted(points):
        if -negative_score > best:
            front.append(index)
            best = -negative_score
    return front


def row_label(row) -> str:
    text = row["method"] + (f" [{row['config']}]" if row["config"] else "") + f" @{row['preset']}"
    return text + (f" ({row['settings']})" if row["settings"] else "")


def _save(fig, folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    svg, png = folder / f"{name}.svg", folder / f"{name}.png"
    fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return svg, png


def _styles(summary: pd.DataFrame) -> tuple[dict, dict]:
    """Colour per method and marker per preset, over the rows with a figure to draw (the same in
    every figure of a report)."""
    drawn = summary[summary["headline_mean"].notna()]
    methods = sorted(set(drawn["method"]))
    presets = sorted(set(drawn["preset"]))
    colours = dict(zip(methods, sns.color_palette("colorblind", max(len(methods), 1))))
    return colours, {p: MARKERS[i % len(MARKERS)] for i, p in enumerate(presets)}


def _legend(fig, colours: dict, markers: dict) -> None:
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colours.items()]
    handles += [Line2D([], [], color="0.4", marker=mk, ls="", label=f"@{p}") for p, mk in markers.items()]
    handles += [Line2D([], [], color="0.1", lw=1.6, label="plain models (baseline per preset)"),
                Line2D([], [], color="0.2", ls="--", lw=1, label="Pareto front")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def plain_frontier(panel: pd.DataFrame, cost: str) -> list[pd.DataFrame]:
    """The plain models of one panel (``baseline`` at every preset, one line per settings), each line
    by increasing cost: a compression method must lie above it to beat training a model of its size
    directly (ShrinkBench's rule), not only above one preset's point."""
    plain = panel[(panel["method"] == plain_reference()) & (panel["config"] == "")]
    return [line.sort_values([cost, "preset"], kind="stable") for _, line in plain.groupby("settings", sort=True)]


def method_curves(panel: pd.DataFrame, cost: str) -> list[tuple[str, pd.DataFrame]]:
    """Per method (its parameters other than the budget ``ratio``, and its settings), its summary rows sorted by
    ``cost`` when it has two or more: the curve of its operating points, at several budgets or presets.
    The plain baseline is left to :func:`plain_frontier`."""
    def without_ratio(config: str) -> str:
        return ", ".join(item for item in str(config or "").split(", ") if not item.split("=")[0].endswith(".ratio"))

    keyed = panel[panel["method"] != plain_reference()]
    keyed = keyed.assign(curve=keyed["method"] + " " + keyed["config"].map(without_ratio) + " | " + keyed["settings"])
    return [(key, group.sort_values(cost)) for key, group in keyed.groupby("curve", sort=True) if len(group) >= 2]


def tradeoff_figure(summary: pd.DataFrame, dataset: str, cost: str, folder: Path) -> Figure | None:
    """Headline metric (mean +- std over runs) against ``cost``, one panel per backbone, with the
    plain-model frontier and the Pareto front of the plotted points. None when no row has the cost."""
    rows = summary[(summary["dataset"] == dataset) & summary[cost].notna() & summary["headline_mean"].notna()]
    if rows.empty:
        return None
    headline = LABELS.get(rows["headline_metric"].iloc[0], rows["headline_metric"].iloc[0])
    backbones = sorted(set(rows["backbone"]))
    colours, markers = _styles(summary)
    fig, axes = plt.subplots(1, len(backbones), figsize=(4.8 * len(backbones), 3.8), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        panel = rows[rows["backbone"] == backbone]
        for _, row in panel.iterrows():
            std = 0.0 if math.isnan(row["headline_std"]) else 100 * row["headline_std"]
            ax.errorbar(row[cost], 100 * row["headline_mean"], yerr=std, marker=markers[row["preset"]], ms=7,
                        color=colours[row["method"]], capsize=3, ls="")
        for _, curve in method_curves(panel, cost):  # a method's operating points (budgets, presets) joined
            ax.plot(curve[cost], 100 * curve["headline_mean"], color=colours[curve["method"].iloc[0]], lw=0.9,
                    alpha=0.7, zorder=1)
        front = pareto_front(panel[cost].tolist(), panel["headline_mean"].tolist())
        xs = [panel[cost].iloc[i] for i in front] + [panel[cost].max()]  # best so far, up to the costliest
        ys = [100 * panel["headline_mean"].iloc[i] for i in front]
        ys.append(ys[-1])
        ax.plot(xs, ys, drawstyle="steps-post", color="0.2", ls="--", lw=1)
        for line in plain_frontier(panel, cost):
            ax.plot(line[cost], 100 * line["headline_mean"], color="0.1", lw=1.6, zorder=1)
        if panel[cost].max() > 20 * max(panel[cost].min(), 1e-12):
            ax.set_xscale("log")
        if cost == "macs":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 5M, 20M rather than an offset exponent
        ax.set(title=backbone, xlabel=COSTS[cost], ylabel=f"{headline} %")
    _legend(fig, colours, markers)
    name = f"tradeoff-{slug(dataset)}-{slug(cost)}"
    svg, png = _save(fig, folder, name)
    return Figure("tradeoff", f"{dataset}: {headline} vs {COSTS[cost]}",
                  "Mean ± std over folds and seeds. Solid line: the plain models (baseline trained directly at each "
                  "preset); thin coloured lines join a method's operating points (budgets, presets); a compression "
                  "method must lie above the solid line, not only above one preset's point, to beat "
                  "training a model of its size (ShrinkBench's rule). Dashed: Pareto front (nothing cheaper is "
                  "better).", svg, png)


def folds_figure(runs: pd.DataFrame, dataset: str, folder: Path, seed: int = 0) -> Figure | None:
    """Per backbone, one row per method x config x preset: each fold's headline (mean over its seeds)
    as a point, over the mean of the folds with its 95 % bootstrap interval (folds resampled, the
    unit the statistics use). None when no run of ``dataset`` has a headline figure."""
    frame = runs[(runs["dataset"] == dataset) & runs["headline"].notna()]
    if frame.empty:
        return None
    label = LABELS.get(frame["headline_metric"].iloc[0], frame["headline_metric"].iloc[0])
    frame = frame.assign(label=[row_label(r) for _, r in frame.iterrows()], fold=frame["fold"].fillna(-1))
    folds = (frame.groupby(["backbone", "label", "fold"], sort=True)["headline"].mean().mul(100)
             .rename("value").reset_index())
    folds["fold"] = [f"fold {f:.0f}" if f >= 0 else "fold ?" for f in folds["fold"]]
    order = sorted(set(folds["label"]))
    fold_order = sorted(set(folds["fold"]), key=lambda f: (len(f), f))
    height = 1.4 + 0.34 * len(order)
    grid = sns.catplot(data=folds, kind="point", x="value", y="label", col="backbone", order=order,
                       col_order=sorted(set(folds["backbone"])), errorbar=("ci", 95), n_boot=2000, seed=seed,
                       color="0.1", markers="D", markersize=6, linestyles="none", capsize=0.25,
                       err_kws={"linewidth": 1.2}, height=height, aspect=4.8 / height)
    grid.map_dataframe(sns.stripplot, x="value", y="label", order=order, hue="fold", hue_order=fold_order,
                       palette=sns.color_palette("colorblind", len(fold_order)), jitter=False, size=6, alpha=0.8,
                       zorder=4)
    grid.add_legend(title="")
    grid.set_titles("{col_name}")
    grid.set_axis_labels(f"{label} %", "")
    svg, png = _save(grid.figure, folder, f"folds-{slug(dataset)}")
    return Figure("folds", f"{dataset}: {label} per fold",
                  "Coloured points: each fold's figure (mean over its seeds). Black diamond: mean over folds, "
                  "with its 95 % bootstrap interval over folds (seaborn, fixed seed).", svg, png)


def forest_figure(forest: pd.DataFrame, folder: Path) -> Figure | None:
    """The paired difference of every method to the plain model of its own deploy preset, one block per
    method x config x preset: each (corpus, backbone) cell as a point with its fold-level interval, the
    pooled random-effects estimate as a diamond with its interval (:func:`bench.reporting.stats.forest`). None
    without any cell."""
    if forest.empty:
        return None
    lines, labels = [], []
    for key, block in forest.groupby(["method", "config", "preset"], sort=True):
        method, config, preset = key
        name = method + (f" [{config}]" if config else "") + f" @{preset}"
        for _, row in block.iterrows():
            if row["row"] == "cell":
                where = f"{row['dataset']} · {row['backbone']}" + (f" ({row['settings']})" if row["settings"] else "")
                labels.append(f"{name}: {where} ({row['folds']} fold{'' if row['folds'] == 1 else 's'})")
            else:
                labels.append(f"{name}: pooled (I² {100 * row['i2']:.0f} %)")
            lines.append(row)
    fig, ax = plt.subplots(figsize=(8.0, 1.0 + 0.32 * len(lines)))
    colours = dict(zip(sorted(set(forest["method"])), sns.color_palette("colorblind", forest["method"].nunique())))
    for y, row in enumerate(lines):
        colour = colours[row["method"]]
        mean, low, high = (100 * row[c] for c in ("diff_mean", "ci_low", "ci_high"))
        if math.isfinite(low) and math.isfinite(high):
            ax.plot([low, high], [y, y], color=colour, lw=1.4)
        if row["row"] == "pooled":
            ax.scatter([mean], [y], marker="D", s=70, color=colour, edgecolor="0.1", zorder=3)
        else:
            ax.scatter([mean], [y], marker="o", s=28, color=colour, zorder=3)
    ax.axvline(0, color="0.3", lw=1, ls="--")
    ax.set_yticks(range(len(lines)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("Δ headline metric vs. the plain model of the same preset (points)")
    svg, png = _save(fig, folder, "forest")
    return Figure("forest", "Each method against the plain model of its deploy budget, across corpora and backbones",
                  "Points: the paired mean difference over a cell's test folds (seeds averaged within a fold) with its "
                  "95 % bootstrap interval over folds (none from 1 fold). Diamonds: the random-effects pooled estimate "
                  "over the cells with at least 2 folds (Paule-Mandel between-cell variance, statsmodels), with its 95 % "
                  "interval; I² is the share of the spread between cells that is heterogeneity.", svg, png)


def curves_figure(runs: pd.DataFrame, histories: dict[str, list], dataset: str, backbone: str,
                  folder: Path) -> Figure | None:
    """Learning curves of one dataset x backbone: one column per method x config x preset, one row per
    recorded quantity (train loss, val loss, val UA), one line per run, coloured by seed. None when no
    run there recorded a history."""
    rows = []
    for _, run in runs[(runs["dataset"] == dataset) & (runs["backbone"] == backbone)].iterrows():
        for epoch in histories.get(run["run_id"], []):
            for key, name in CURVES.items():
                value = epoch.get(key) if isinstance(epoch, dict) else None
                if isinstance(value, (int, float)) and math.isfinite(value) and "epoch" in epoch:
                    rows.append({"panel": row_label(run), "seed": f"seed {_number(run['seed'])}",
                                 "run": run["run_id"], "epoch": epoch["epoch"], "measure": name, "value": value})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    panels = sorted(set(frame["panel"]))
    seeds = sorted(set(frame["seed"]), key=lambda s: (len(s), s))
    grid = sns.relplot(data=frame, kind="line", x="epoch", y="value", hue="seed", hue_order=seeds, units="run",
                       estimator=None, row="measure", row_order=[m for m in CURVES.values() if m in set(frame["measure"])],
                       col="panel", col_order=panels, palette=sns.color_palette("colorblind", len(seeds)),
                       height=1.9, aspect=1.3, marker="o", markersize=3, facet_kws={"sharey": "row", "margin_titles": True})
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set_axis_labels("epoch", "")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    svg, png = _save(grid.figure, folder, curves_name(dataset, backbone))
    return Figure("curves", f"{dataset} / {backbone}: learning curves",
                  "Per method and preset, every run's recorded epochs (the training of its deploy model), seeds "
                  "coloured, folds overlaid.", svg, png)


def curves_name(dataset: str, backbone: str) -> str:
    return f"curves-{slug(dataset)}-{slug(backbone)}"


def _number(value) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0f}"


def tune_figures(frame: pd.DataFrame, study: str, folder: Path) -> list[Figure]:
    """For one Optuna study table (``trial``, ``state``, ``value``, ``params_<name>``...): the
    objective against each parameter (complete trials) and the trial history with the best so far."""
    if "value" not in frame or "trial" not in frame:
        return []
    frame = frame.assign(value=pd.to_numeric(frame["value"], errors="coerce"),
                         trial=pd.to_numeric(frame["trial"], errors="coerce")).sort_values("trial", kind="stable")
    state = frame["state"].astype(str) if "state" in frame else pd.Series("COMPLETE", index=frame.index)
    done = frame[(state == "COMPLETE") & frame["value"].notna()]
    figures = []
    for column in sorted(c for c in frame.columns if c.startswith("params_")):
        name = column[len("params_"):]
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        numeric = pd.to_numeric(done[column], errors="coerce")
        if len(done) and numeric.notna().all():
            ax.scatter(numeric, done["value"], color=sns.color_palette("colorblind")[0])
            if numeric.min() > 0 and numeric.max() > 10 * numeric.min():
                ax.set_xscale("log")
        else:
            categories = sorted(done[column].astype(str).unique())
            ax.scatter([categories.index(v) for v in done[column].astype(str)], done["value"],
                       color=sns.color_palette("colorblind")[0])
            ax.set_xticks(range(len(categories)), categories)
        ax.set(title=f"{study}: objective vs {name}", xlabel=name, ylabel="objective")
        svg, png = _save(fig, folder, f"tune-{slug(study)}-{slug(name)}")
        figures.append(Figure("tune", f"{study}: objective vs {name}", f"{len(done)} complete trials.", svg, png))
    minimize = "direction" in frame and str(frame["direction"].iloc[0]).lower().startswith("min")
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    palette = sns.color_palette("colorblind")
    for number, (label, part) in enumerate(sorted(frame.assign(state=state).groupby("state"))):
        part = part[part["value"].notna()]
        ax.scatter(part["trial"], part["value"], color=palette[number % len(palette)], label=label.lower())
    if len(done):
        best = done["value"].cummin() if minimize else done["value"].cummax()
        ax.plot(done["trial"], best, drawstyle="steps-post", color="0.2", ls="--", label="best so far")
    ax.set(title=f"{study}: trial history", xlabel="trial", ylabel="objective")
    ax.legend(frameon=False)
    svg, png = _save(fig, folder, f"tune-{slug(study)}-history")
    figures.append(Figure("tune", f"{study}: trial history",
                          f"{len(frame)} trials ({'minimized' if minimize else 'maximized'}).", svg, png))
    return figures


def make_plots(summary: pd.DataFrame, runs: pd.DataFrame, histories: dict[str, list],
               studies: dict[str, pd.DataFrame], folder: Path, seed: int = 0,
               forest: pd.DataFrame | None = None, extra=()) -> list[Figure]:
    """All report figures under ``folder``; stale PNG/SVG files of earlier reports are removed.
    ``runs``: the finished runs, with a ``headline`` column; ``histories``: run id -> per-epoch dicts;
    ``extra``: more figure makers, each called with ``folder`` (returning a list of figures) in the
    same style."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    with plt.rc_context(STYLE), sns.axes_style("whitegrid"):
        for dataset in sorted(set(summary["dataset"])):
            for cost in COSTS:
                figures.append(tradeoff_figure(summary, dataset, cost, folder))
            figures.append(folds_figure(runs, dataset, folder, seed))
        for dataset, backbone in sorted(set(zip(runs["dataset"], runs["backbone"]))):
            figures.append(curves_figure(runs, histories, dataset, backbone, folder))
        if forest is not None:
            figures.append(forest_figure(forest, folder))
        for study, frame in sorted(studies.items()):
            figures.extend(tune_figures(frame, study, folder))
        for make in extra:
            figures.extend(make(folder))
    figures = [f for f in figures if f is not None]
    written = {p for f in figures for p in (f.svg, f.png)}
    for stale in sorted(folder.glob("*.svg")) + sorted(folder.glob("*.png")):
        if stale not in written:
            stale.unlink()
    return figures
