"""Tidy tables from run records: ``runs`` (one row per run, failed runs included) and ``summary``
(mean, std and count over the finished runs' folds and seeds per method x method parameters x backbone x
preset x dataset, with the paired difference over folds to the plain lightweight and large baselines),
and the summary printed at the end of ``bench run``.

Records from older versions or other plug-ins may lack columns: a missing figure stays missing (NaN)
in every table and is never filled in or averaged over the runs that happen to have it.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields

import click
import numpy as np
import pandas as pd

from bench.reporting import stats
from bench.data.features import FeatureConfig
from bench.method import plain_reference
from bench.registry import METHODS
from bench.training.config import TrainConfig

KEYS = ["dataset", "backbone", "method", "config", "preset", "settings"]  # one summary row per value
METRICS = ["wa", "ua", "macro_f1", "weighted_f1"]  # fractions in [0, 1]
COSTS = ["params", "train_params", "macs", "flops", "size_bytes", "latency_ms", "latency_p90_ms"]
LABELS = {"wa": "WA", "ua": "UA", "macro_f1": "F1", "weighted_f1": "wF1", "params": "params",
          "train_params": "train params", "macs": "MACs", "flops": "FLOPs", "size_bytes": "size",
          "latency_ms": "latency ms", "latency_p90_ms": "p90 ms"}
# Training cost per run (means in the summary), and as multiples of the plain lightweight model's own training
TRAINING_COSTS = ["fit_flops", "reused_fit_flops", "fit_seconds", "reused_fit_seconds", "train_peak_memory_bytes"]
TRAINING_MULTIPLES = ["train_flops_x", "train_seconds_x", "train_memory_x"]
NESTED = ("method_params", "dataset_params", "confusion", "classes", "skipped")
MISSING = "—"
OK = "ok"
DELTA_LIGHT, DELTA_LARGE = "Δ light (folds)", "Δ large (folds)"
UNKNOWN_FINGERPRINT = "unknown"


def _text(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_true(value) -> bool:
    """A flag cell that may be missing (NaN after a merge)."""
    return not _is_missing(value) and bool(value)


def _varying_label(rows: list[dict]) -> list[str]:
    """Per row, ``key=value`` for the keys whose values differ between ``rows`` (sorted, joined)."""
    keys = sorted({k for row in rows for k in row})
    varying = [k for k in keys if len({_text(row.get(k)) for row in rows}) > 1]
    return [", ".join(f"{k}={row.get(k)}" for k in varying) for row in rows]


def _mapping(value) -> dict:
    """A nested record field that should be a dict; anything else (absent, foreign) counts as empty."""
    return value if isinstance(value, dict) else {}


def _config_items(record: dict) -> dict:
    """A run's method configuration flattened: ``{"hrf.expansion_ratio": 4.0, "teacher": "large"}``."""
    method_params = record.get("method_params")
    items = {f"{name}.{key}": value for name, params in sorted(_mapping(method_params).items())
             for key, value in sorted(_mapping(params).items())}
    if record.get("teacher_preset"):
        items["teacher"] = record["teacher_preset"]
    return items


def _setting_items(record: dict) -> dict:
    """Training, feature and dataset settings: ``{"train.epochs": 8, "features.n_mels": 80, ...}``."""
    items = {f"{prefix}.{f.name}": record.get(f"{prefix}_{f.name}")
             for prefix, config in (("train", TrainConfig), ("features", FeatureConfig)) for f in fields(config)}
    items.update({f"dataset.{k}": v for k, v in sorted(_mapping(record.get("dataset_params")).items())})
    return items


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run: scalar fields as they are, nested fields as JSON text, plus ``config`` (the
    method parameters that vary between runs of that method) and ``settings`` (the training, feature
    and dataset settings that vary between all runs). Columns the tables need exist even when no record
    has them."""
    rows = []
    for record in records:
        row = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
        row.update({k: _text(record[k]) for k in NESTED if k in record})
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ["run_id", "dataset", "backbone", "method", "preset", "headline_metric"]:
        if column not in frame:
            frame[column] = None
    for column in ["fold", "seed", *METRICS, *COSTS, *TRAINING_COSTS]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    frame[["dataset", "backbone", "method", "preset"]] = frame[["dataset", "backbone", "method", "preset"]].fillna(MISSING)
    frame["status"] = frame["status"].fillna(OK) if "status" in frame else OK
    frame["status_reason"] = frame["status_reason"].fillna("") if "status_reason" in frame else ""
    frame["dataset"] = _dataset_labels(frame)
    frame["config"] = ""
    for method in sorted(set(frame["method"])):
        at = [i for i, r in enumerate(records) if frame.loc[i, "method"] == method]
        frame.loc[at, "config"] = _varying_label([_config_items(records[i]) for i in at])
    frame["settings"] = _varying_label([_setting_items(r) for r in records]) if records else []
    frame["headline_metric"] = frame.groupby("dataset")["headline_metric"].transform(_common_headline) \
        if records else frame["headline_metric"]
    for column in metric_columns(frame)[len(METRICS):]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    first = ["run_id", *KEYS, "fold", "seed", "status", "status_reason", "headline_metric", *metric_columns(frame),
             *COSTS]
    frame = frame[first + sorted(c for c in frame.columns if c not in first)]
    return frame.sort_values(KEYS + ["fold", "seed", "run_id"], kind="stable").reset_index(drop=True)


def _dataset_labels(frame: pd.DataFrame) -> pd.Series:
    """The dataset name, or ``name@<first 8 characters of corpus_fingerprint>`` for every run of a name
    whose runs read more than one corpus (records without a fingerprint count as one ``unknown``), so
    runs of different data are never averaged or paired together."""
    fingerprint = (frame["corpus_fingerprint"].fillna(UNKNOWN_FINGERPRINT).astype(str)
                   if "corpus_fingerprint" in frame else pd.Series(UNKNOWN_FINGERPRINT, index=frame.index))
    corpora = fingerprint.groupby(frame["dataset"]).transform("nunique")
    return frame["dataset"].where(corpora <= 1, frame["dataset"] + "@" + fingerprint.str[:8])


def _common_headline(values: pd.Series):
    """A dataset's headline metric: what its records say (most common), ``ua`` when none says."""
    known = values.dropna()
    return known.mode().sort_values().iloc[0] if len(known) else "ua"


def _complete_mean(values: pd.Series) -> float:
    """Mean over runs, or NaN when any run lacks the figure (never a mean of a subset)."""
    return float(values.mean()) if len(values) and values.notna().all() else math.nan


def _complete_std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 and values.notna().all() else math.nan


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The standard metrics plus any other headline metric a dataset declares (e.g. ``f1_depressed``)."""
    extra = sorted(set(runs["headline_metric"].dropna()) - set(METRICS)) if "headline_metric" in runs else []
    return METRICS + extra


def summary_table(runs: pd.DataFrame, light_preset: str = "lightweight", large_preset: str = "large",
                  seed: int = 0) -> pd.DataFrame:
    """One row per ``KEYS`` group, over its finished runs (failed runs are only counted, in
    ``failed``): ``<metric>_mean``, ``<metric>_std``, ``<cost>`` (mean), ``runs``, ``folds``, ``seeds``;
    ``light_<metric>`` / ``large_<metric>``: the paired mean difference to the ``baseline`` at
    ``light_preset`` / ``large_preset`` of the same dataset, backbone and settings, over the folds both
    ran (seeds averaged within each fold first; ``pairs`` / ``large_pairs`` folds for the headline
    metric; 0 for the reference itself); for the headline metric the paired statistics of
    ``bench.reporting.stats.compare`` (``pairs``, ``ci_low``, ``ci_high``, ``p_wilcoxon``, ``significant``); and
    ``warning`` (see ``large_model_warnings``). Sorted by dataset, then headline mean, best first."""
    metrics = metric_columns(runs)
    columns = [*KEYS, "role", "headline_metric", *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), *COSTS,
               *TRAINING_COSTS, *TRAINING_MULTIPLES,
               "runs", "folds", "seeds", "failed", *(f"{r}_{m}" for r in ("light", "large") for m in metrics),
               *stats.COMPARISON_COLUMNS, "large_pairs", "warning", "headline_mean", "headline_std", "run_ids"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in runs.groupby(KEYS, sort=True):
        done = stats.finished(group)
        teacher = group["teacher_preset"].dropna() if "teacher_preset" in group else pd.Series(dtype=object)
        row = dict(zip(KEYS, key), headline_metric=group["headline_metric"].iloc[0],
                   teacher_preset=teacher.iloc[0] if len(teacher) else None)
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _complete_mean(done[metric]), _complete_std(done[metric])
        row.update({cost: _complete_mean(done[cost]) for cost in COSTS + TRAINING_COSTS})
        row.update(runs=len(done), folds=done["fold"].nunique(), seeds=done["seed"].nunique(),
                   failed=len(group) - len(done), run_ids=" ".join(done["run_id"].astype(str)))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["role"] = ""
    for role, preset in (("light", light_preset), ("large", large_preset)):
        is_reference = ((table["method"] == plain_reference()) & (table["preset"] == preset)).to_numpy()
        table.loc[is_reference, "role"] = role
        paired = table[KEYS].merge(stats.mean_differences(runs, metrics, preset), on=KEYS, how="left")
        table[f"{role}_pairs"] = paired["pairs"].to_numpy()
        for metric in metrics:
            table[f"{role}_{metric}"] = np.where(is_reference & table[f"{metric}_mean"].notna(), 0.0,
                                                 paired[metric].to_numpy(dtype=float))
    table = table.drop(columns="light_pairs")  # the headline's light pairs are ``pairs`` of the comparison
    table = table.assign(**training_multiples(table, light_preset))
    comparison = stats.compare(runs, light_preset, seed=seed)
    table = table.merge(comparison, on=KEYS, how="left") if len(comparison) else \
        table.assign(**{c: np.nan for c in stats.COMPARISON_COLUMNS})
    table["warning"] = ["; ".join(filter(None, texts)) for texts in
                        zip(large_model_warnings(table, large_preset), classical_warnings(table, runs, seed))]
    table["headline_mean"] = [row[f"{row['headline_metric']}_mean"] for _, row in table.iterrows()]
    table["headline_std"] = [row[f"{row['headline_metric']}_std"] for _, row in table.iterrows()]
    table = table.sort_values(["dataset", "headline_mean", *KEYS[1:]], ascending=[True, False] + [True] * 5,
                              na_position="last", kind="stable")
    return table[columns].reset_index(drop=True)


def training_multiples(table: pd.DataFrame, light_preset: str = "lightweight") -> dict[str, np.ndarray]:
    """Per summary row, its training cost as a multiple of the plain ``light_preset`` baseline's own
    training on the same dataset, backbone and settings: FLOPs and seconds of everything trained for the
    run (the method's own training plus the cached models it built on, e.g. kd's teacher), and its own
    training's peak memory. NaN where either side lacks the figure."""
    light = table[(table["method"] == plain_reference()) & (table["preset"] == light_preset)]
    light = light.drop_duplicates(["dataset", "backbone", "settings"]).set_index(["dataset", "backbone", "settings"])
    where = pd.MultiIndex.from_frame(table[["dataset", "backbone", "settings"]])

    def reference(column: str) -> np.ndarray:
        values = light[column].reindex(where).to_numpy(dtype=float)
        return np.where(values > 0, values, np.nan)

    own_flops, own_seconds = table["fit_flops"].to_numpy(dtype=float), table["fit_seconds"].to_numpy(dtype=float)
    return {"train_flops_x": (own_flops + table["reused_fit_flops"].to_numpy(dtype=float)) / reference("fit_flops"),
            "train_seconds_x": (own_seconds + table["reused_fit_seconds"].to_numpy(dtype=float))
            / reference("fit_seconds"),
            "train_memory_x": table["train_peak_memory_bytes"].to_numpy(dtype=float)
            / reference("train_peak_memory_bytes")}


def starts_from_large_model(method: str, teacher_preset) -> bool:
    """Whether a method distils from or cuts down a larger trained model (``kd``, ``prune``, ``lowrank``,
    ``prune-unstructured``, or a composition with one): its record names a teacher preset, or one of
    its components declares ``uses_large_model``."""
    if not _is_missing(teacher_preset) and teacher_preset:
        return True
    return any(name in METHODS and METHODS.get(name).obj.uses_large_model
               for name in str(method).split("+"))


def large_model_warnings(table: pd.DataFrame, large_preset: str = "large") -> list[str]:
    """Per summary row, a warning for methods that start from the large model when, on the same
    dataset, backbone and settings, the plain ``baseline`` at that model's preset (the record's teacher
    preset, else ``large_preset``) is not better than the plain lightweight baseline: its paired mean
    difference over folds (headline metric, ``diff_mean``) is <= 0. The method then distils from, or
    cuts down, a model that is no better than training the small one directly, so its comparison with
    the lightweight baseline says nothing about the method. A milder warning when the mean is > 0 but
    the paired interval includes 0 (the lead is not established). Empty otherwise, and when there is
    no such pair to judge by."""
    reference = plain_reference()
    baselines = table[table["method"] == reference].set_index(["dataset", "backbone", "settings", "preset"])
    texts = []
    for _, row in table.iterrows():
        named = not _is_missing(row["teacher_preset"]) and row["teacher_preset"]
        source = row["teacher_preset"] if named else large_preset
        where = (row["dataset"], row["backbone"], row["settings"], source)
        text = ""
        if row["method"] != reference and starts_from_large_model(row["method"], row["teacher_preset"]) \
                and where in baselines.index:
            large = baselines.loc[where]
            large = large.iloc[0] if isinstance(large, pd.DataFrame) else large
            if not _is_missing(large["diff_mean"]) and large["diff_mean"] <= 0:
                text = (f"{reference} @{source} is not better than the lightweight {reference} "
                        f"({signed_points(large['diff_mean'])} points over {large['pairs']:.0f} folds): "
                        f"this method starts from it, so its comparison is uninterpretable")
            elif not _is_missing(large["ci_low"]) and large["ci_low"] <= 0:
                text = (f"{reference} @{source} is not shown better than the lightweight {reference} "
                        f"({signed_points(large['diff_mean'])} points over {large['pairs']:.0f} folds, interval "
                        f"[{signed_points(large['ci_low'])}, {signed_points(large['ci_high'])}] includes 0): "
                        f"this method starts from it, so read its comparison with care")
        texts.append(text)
    return texts


def classical_references(methods) -> list[str]:
    """The methods among ``methods`` that declare ``classical_reference`` (e.g. ``svm``)."""
    return sorted(m for m in set(methods) if m in METHODS and METHODS.get(m).obj.classical_reference)


def classical_warnings(table: pd.DataFrame, runs: pd.DataFrame, seed: int = 0) -> list[str]:
    """Per summary row, a warning when the plain ``baseline`` the row's model is built on (the row's own
    preset, and for methods that start from the large model also that model's preset) is not better
    than a classical reference (``classical_reference`` methods, e.g. ``svm``) of the same dataset,
    backbone and settings: its paired mean difference over folds is <= 0. Shrinking a model that a
    functionals-into-an-SVM baseline beats shows nothing. Empty otherwise and without such a pair."""
    texts, plain_method = [""] * len(table), plain_reference()
    for reference in classical_references(table["method"]):
        comparison = stats.compare(runs, None, seed=seed, reference_method=reference)
        plain = comparison[comparison["method"] == plain_method].set_index(["dataset", "backbone", "settings", "preset"])
        for position, (_, row) in enumerate(table.iterrows()):
            if row["method"] == reference:
                continue
            named = not _is_missing(row["teacher_preset"]) and row["teacher_preset"]
            sources = [row["preset"]]
            if starts_from_large_model(row["method"], row["teacher_preset"]):
                sources.append(row["teacher_preset"] if named else "large")
            for source in sources:
                where = (row["dataset"], row["backbone"], row["settings"], source)
                if where not in plain.index:
                    continue
                found = plain.loc[where]
                found = found.iloc[0] if isinstance(found, pd.DataFrame) else found
                if _is_missing(found["diff_mean"]) or found["diff_mean"] > 0:
                    continue
                whose = "this plain model is" if row["method"] == plain_method and source == row["preset"] else \
                    f"the plain model it is built on ({plain_method} @{source}) is"
                texts[position] = "; ".join(filter(None, [texts[position], (
                    f"{whose} below the classical reference {reference} ({signed_points(found['diff_mean'])} "
                    f"points over {found['pairs']:.0f} folds): not a competent model to shrink")]))
                break
    return texts


# ---- formatting shared by the terminal, Markdown, LaTeX and HTML views ----

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
                      "latency ms": milliseconds(row["latency_ms"]),
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


def failed_lines(runs: pd.DataFrame) -> list[str]:
    """One line per failed run: what it was and why it failed."""
    failed = runs[runs["status"] == stats.FAILED]
    return [f"{row['run_id']}: {row['method']} {row['backbone']} @{row['preset']} {row['dataset']} fold "
            f"{_whole(row['fold'])} seed {_whole(row['seed'])}: {row['status_reason'] or 'no reason recorded'}"
            for _, row in failed.iterrows()]


def _whole(value) -> str:
    return "?" if _is_missing(value) else f"{value:.0f}"


def scope_lines(records: list[dict]) -> list[str]:
    """What a grid of a single test fold (per dataset) can and cannot show, one line per such dataset."""
    lines = []
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    for dataset in sorted({r["dataset"] for r in ok}):
        folds = {r["fold"] for r in ok if r["dataset"] == dataset}
        if len(folds) == 1:
            tests = max((r.get("n_test") or 0) for r in ok if r["dataset"] == dataset)
            lines.append(f"{dataset}: one test fold ({tests} utterances of held-out speakers) shows that every method "
                         "runs and what it costs, not which is more accurate: a paired interval needs >= 2 folds "
                         "(--folds 1-5)")
    return lines


def print_summary(records: list[dict], light_preset: str = "lightweight", large_preset: str = "large") -> None:
    """The table printed at the end of ``bench run`` and ``bench report``, then the failed runs."""
    if not records:
        click.echo("no runs recorded")
        return
    runs = runs_frame(records)
    click.echo(to_terminal(summary_table(runs, light_preset, large_preset)))
    for line in scope_lines(records):
        click.echo(line)
    failed = failed_lines(runs)
    if failed:
        click.echo(f"\n{len(failed)} failed run{'s' if len(failed) != 1 else ''} (not in the means or pairs):")
        click.echo("\n".join(f"  {line}" for line in failed))
