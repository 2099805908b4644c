"""What the summary warns about: a large model not shown better than the lightweight one (beside every
method that starts from it), and a plain model below the classical reference."""

from __future__ import annotations

import pandas as pd

from bench.method import plain_reference
from bench.registry import METHODS
from bench.reporting import stats
from bench.reporting.columns import _is_missing
from bench.reporting.formats import signed_points


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
