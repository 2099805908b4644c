"""Summary statistics against hand computations on small fixed tables; the seeded bootstrap interval;
the Wilcoxon p-value; pairing; records lacking columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import stats
from bench.summary import runs_frame, summary_table, to_latex, to_markdown, to_terminal


def record(method: str, preset: str, fold: int, seed: int, ua: float, **extra) -> dict:
    params = {"baseline": {}, "hrf": {"expansion_ratio": 2.0}}.get(method, {})
    return {"run_id": f"{method}-{preset}-{fold}-{seed}-{extra.get('train_epochs', 8)}", "method": method,
            "method_params": {method: params}, "backbone": "convtransformer", "preset": preset, "dataset": "toy",
            "fold": fold, "seed": seed, "wa": ua + 0.01, "ua": ua, "macro_f1": ua - 0.01, "weighted_f1": ua,
            "headline_metric": "ua", "params": 1000 if preset == "lightweight" else 8000, "macs": 5e6,
            "latency_ms": 2.0, "train_epochs": 8, "confusion": [[1, 0], [0, 1]], "classes": ["a", "b"]} | extra


# ua per (fold, seed) = (1, 0), (2, 0), (1, 1), (2, 1)
FIXED = {("baseline", "lightweight"): [0.50, 0.60, 0.55, 0.65],
         ("baseline", "large"): [0.70, 0.80, 0.75, 0.85],
         ("hrf", "lightweight"): [0.55, 0.70, 0.55, 0.70]}
CELLS = [(1, 0), (2, 0), (1, 1), (2, 1)]


def fixed_records() -> list[dict]:
    return [record(m, p, fold, seed, ua) for (m, p), values in FIXED.items() for (fold, seed), ua in zip(CELLS, values)]


def test_summary_matches_a_hand_computation():
    table = summary_table(runs_frame(fixed_records())).set_index(["method", "preset"])
    hrf = table.loc[("hrf", "lightweight")]
    assert hrf["ua_mean"] == pytest.approx(0.625)
    # sample std of 0.55, 0.70, 0.55, 0.70: sqrt(4 * 0.075^2 / 3)
    assert hrf["ua_std"] == pytest.approx(math.sqrt(4 * 0.075 ** 2 / 3))
    assert (hrf["runs"], hrf["folds"], hrf["seeds"]) == (4, 2, 2)
    assert hrf["light_ua"] == pytest.approx(0.625 - 0.575)  # a complete grid: paired = difference of means
    assert hrf["large_ua"] == pytest.approx(0.625 - 0.775) and hrf["large_pairs"] == 2
    assert hrf["wa_mean"] == pytest.approx(0.635) and hrf["light_wa"] == pytest.approx(0.05)
    # paired differences: fold 1 +0.05, 0.00 (mean +0.025), fold 2 +0.10, +0.05 (mean +0.075); the unit
    # is the fold: 2 pairs, mean +0.05, and the bootstrap means of 2 folds are 0.025, 0.05 or 0.075
    assert hrf["pairs"] == 2 and hrf["diff_mean"] == pytest.approx(0.05)
    assert (hrf["ci_low"], hrf["ci_high"]) == pytest.approx((0.025, 0.075))
    assert math.isnan(hrf["p_wilcoxon"])  # 2 folds
    light, large = table.loc[("baseline", "lightweight")], table.loc[("baseline", "large")]
    assert light["role"] == "light" and large["role"] == "large" and hrf["role"] == ""
    assert light["light_ua"] == 0.0 and math.isnan(light["pairs"])  # the reference is not compared to itself
    assert large["diff_mean"] == pytest.approx(0.20) and large["ci_low"] == pytest.approx(0.20)  # all pairs +0.20
    assert not large["significant"]  # 2 folds: too few to mark
    assert list(table.reset_index()["method"] + "@" + table.reset_index()["preset"]) == [
        "baseline@large", "hrf@lightweight", "baseline@lightweight"]  # best headline first


def test_bootstrap_interval_by_hand_and_reproducible():
    # two values: the resampled mean is 0.05, 0.075 or 0.10 with probabilities 1/4, 1/2, 1/4
    assert stats.bootstrap_ci([0.05, 0.10], seed=3) == pytest.approx((0.05, 0.10))
    values = np.random.default_rng(7).normal(1.0, 1.0, size=30)
    first, again, other = stats.bootstrap_ci(values, seed=0), stats.bootstrap_ci(values, seed=0), stats.bootstrap_ci(values, seed=1)
    assert first == again and first != other
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))  # the normal-theory interval
    assert first[0] < values.mean() < first[1]
    assert (first[1] - first[0]) / 2 == pytest.approx(half_width, rel=0.2)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.3]))  # one pair: no interval


def test_significance_needs_five_folds_and_an_interval_excluding_zero():
    folds = [1, 2, 3, 4, 5, 6]
    light = [0.50, 0.52, 0.55, 0.60, 0.58, 0.61]
    gains = [0.02, 0.03, 0.01, 0.04, 0.025, 0.05]
    records = [record("baseline", "lightweight", f, 0, ua) for f, ua in zip(folds, light)]
    records += [record("hrf", "lightweight", f, 0, ua + gain) for f, ua, gain in zip(folds, light, gains)]
    six = stats.compare(runs_frame(records)).iloc[0]
    assert six["pairs"] == 6 and six["significant"] and six["p_wilcoxon"] == pytest.approx(2 / 64)
    assert six["diff_mean"] == pytest.approx(sum(gains) / 6) and 0 < six["ci_low"] < six["diff_mean"] < six["ci_high"]
    four = stats.compare(runs_frame([r for r in records if r["fold"] <= 4])).iloc[0]
    assert four["pairs"] == 4 and four["ci_low"] > 0 and not four["significant"]
    mixed = [dict(r, ua=r["ua"] - 0.06) if r["method"] == "hrf" and r["fold"] % 2 else r for r in records]
    assert not stats.compare(runs_frame(mixed)).iloc[0]["significant"]  # the interval straddles zero


def test_wilcoxon_needs_five_nonzero_differences():
    # 5 positive differences: exact two-sided p = 2 / 2^5
    assert stats.wilcoxon_p([0, 0, 0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(2 / 32)
    assert math.isnan(stats.wilcoxon_p([0, 0.01, 0.02, 0.03, 0.04]))


def test_pairs_need_the_same_fold_seed_and_settings():
    records = fixed_records()[:2] + [record("hrf", "lightweight", 1, 0, 0.58), record("hrf", "lightweight", 3, 0, 0.9),
                                     record("hrf", "lightweight", 1, 0, 0.4, train_epochs=2)]
    differences = stats.paired_differences(runs_frame(records))
    assert differences[["fold", "seed"]].values.tolist() == [[1, 0]]  # fold 3 and epochs=2 have no partner
    assert differences["diff"].iloc[0] == pytest.approx(0.08)
    assert set(differences["settings"]) == {"train.epochs=8"}


def test_settings_and_method_parameters_that_vary_split_rows():
    records = fixed_records() + [record("hrf", "lightweight", 1, 0, 0.6, method_params={"hrf": {"expansion_ratio": 4.0}},
                                        run_id="r4")]
    table = summary_table(runs_frame(records))
    assert set(table["config"]) == {"", "hrf.expansion_ratio=2.0", "hrf.expansion_ratio=4.0"}
    records.append(record("baseline", "lightweight", 1, 0, 0.1, train_epochs=2))
    table = summary_table(runs_frame(records))
    assert set(table["settings"]) == {"train.epochs=8", "train.epochs=2"}
    lone = table[table["settings"] == "train.epochs=2"].iloc[0]
    assert lone["ua_mean"] == pytest.approx(0.1) and math.isnan(lone["ua_std"])


def test_records_lacking_columns_leave_cells_missing():
    records = fixed_records()
    for r in records:
        if r["method"] == "hrf":
            del r["macs"], r["latency_ms"]
    del records[0]["weighted_f1"]  # an older baseline run
    del records[5]["headline_metric"], records[5]["confusion"]
    table = summary_table(runs_frame(records)).set_index(["method", "preset"])
    assert math.isnan(table.loc[("hrf", "lightweight"), "macs"])
    assert table.loc[("baseline", "large"), "macs"] == 5e6
    assert math.isnan(table.loc[("baseline", "lightweight"), "weighted_f1_mean"])  # not a mean of 3 of 4 runs
    assert table.loc[("baseline", "lightweight"), "ua_mean"] == pytest.approx(0.575)
    assert (table["headline_metric"] == "ua").all()
    for text in (to_markdown(table.reset_index()), to_terminal(table.reset_index())):
        assert "—" in text and "hrf" in text


def test_markdown_and_latex_exports_carry_the_figures():
    table = summary_table(runs_frame(fixed_records()))
    markdown, latex = to_markdown(table), to_latex(table)
    assert "## toy (headline: UA)" in markdown and "| hrf | convtransformer | lightweight | 62.5 ± 8.7 | +5.0 (2) |" in markdown
    assert r"\begin{tabular}" in latex and r"62.5 $\pm$ 8.7 & +5.0 (2)" in latex and r"\midrule" in latex
    assert markdown.count("\n| ") == 4  # header + 3 rows
    empty = summary_table(runs_frame([]))
    assert empty.empty and to_markdown(empty) == "No runs recorded.\n" and isinstance(to_latex(empty), str)
    assert {"ua_mean", "light_ua", "ci_low", "p_wilcoxon"} <= set(empty.columns)


def test_a_headline_metric_beyond_the_standard_four_is_summarized():
    records = [dict(r, dataset="daic", headline_metric="f1_depressed", f1_depressed=r["ua"] / 2) for r in fixed_records()]
    table = summary_table(runs_frame(records)).set_index(["method", "preset"])
    hrf = table.loc[("hrf", "lightweight")]
    assert hrf["headline_mean"] == pytest.approx(0.3125) and hrf["light_f1_depressed"] == pytest.approx(0.025)
    assert hrf["diff_mean"] == pytest.approx(0.025)  # the paired statistics follow the headline metric
    assert "f1_depressed %" in to_terminal(table.reset_index())


def test_pareto_front_keeps_the_points_nothing_cheaper_beats():
    from bench.plots import pareto_front

    costs = [1.0, 2.0, 3.0, 4.0, 2.0, math.nan, 0.5]
    scores = [0.50, 0.40, 0.70, 0.60, 0.55, 0.90, math.nan]
    assert pareto_front(costs, scores) == [0, 4, 2]  # by cost; equal cost keeps the better; NaN never
