"""Summary statistics against hand computations on small fixed tables; the seeded bootstrap interval;
the Wilcoxon p-value; pairing; records lacking columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.reporting import stats
from bench.reporting.formats import to_latex, to_markdown, to_terminal
from bench.reporting.summary import runs_frame, summary_table


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
    assert "## toy (headline: UA)" in markdown
    assert "| hrf | convtransformer | lightweight | 62.5 ± 8.7 | +5.0 (2) |" in markdown
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
    from bench.reporting.plots import pareto_front

    costs = [1.0, 2.0, 3.0, 4.0, 2.0, math.nan, 0.5]
    scores = [0.50, 0.40, 0.70, 0.60, 0.55, 0.90, math.nan]
    assert pareto_front(costs, scores) == [0, 4, 2]  # by cost; equal cost keeps the better; NaN never


# ---- issue 13 section 3 and the summary side of issues 13 and 16 ----

def test_delta_is_the_paired_mean_over_the_folds_both_ran():
    # baseline (light and large) on folds 1-5, hrf on folds 1-2 only, 2 points above the light baseline
    # on each: the unpaired difference of means was -13.0 next to a paired interval of [+2.0, +2.0]
    light = {1: 0.40, 2: 0.45, 3: 0.70, 4: 0.75, 5: 0.80}
    records = [record("baseline", "lightweight", f, 0, ua) for f, ua in light.items()]
    records += [record("baseline", "large", f, 0, ua + 0.05) for f, ua in light.items()]
    records += [record("hrf", "lightweight", f, 0, light[f] + 0.02) for f in (1, 2)]
    table = summary_table(runs_frame(records)).set_index(["method", "preset"])
    hrf = table.loc[("hrf", "lightweight")]
    assert hrf["light_ua"] == pytest.approx(0.02) == hrf["diff_mean"] and hrf["pairs"] == 2
    assert hrf["large_ua"] == pytest.approx(-0.03) and hrf["large_pairs"] == 2
    assert hrf["light_wa"] == pytest.approx(0.02)  # every metric's Δ is paired
    row = to_markdown(table.reset_index()).splitlines()
    hrf_line = next(line for line in row if line.startswith("| hrf"))
    assert "| +2.0 (2) | [+2.0, +2.0] |" in hrf_line and "| -3.0 (2) |" in hrf_line


def test_seeds_of_one_fold_are_one_unit_of_the_interval():
    # 1 fold x 5 seeds, hrf 1-5 points better: the seeds share the test speakers, so this is one pair
    records = [record("baseline", "lightweight", 1, s, 0.5 + 0.01 * s) for s in range(5)]
    records += [record("hrf", "lightweight", 1, s, 0.5 + 0.02 * s + 0.01) for s in range(5)]
    one_fold = stats.compare(runs_frame(records)).iloc[0]
    assert one_fold["pairs"] == 1 and one_fold["diff_mean"] == pytest.approx(0.03)
    assert math.isnan(one_fold["ci_low"]) and math.isnan(one_fold["p_wilcoxon"]) and not one_fold["significant"]
    # 5 folds x 2 seeds: the interval is the bootstrap of the 5 fold means of the paired differences
    gains = {(f, s): 0.01 * f + (0.04 if s else -0.02) for f in range(1, 6) for s in (0, 1)}
    records = [record("baseline", "lightweight", f, s, 0.5) for f, s in gains]
    records += [record("hrf", "lightweight", f, s, 0.5 + gain) for (f, s), gain in gains.items()]
    five = stats.compare(runs_frame(records), seed=4).iloc[0]
    fold_means = [0.01 * f + 0.01 for f in range(1, 6)]
    assert five["pairs"] == 5 and five["diff_mean"] == pytest.approx(np.mean(fold_means))
    assert (five["ci_low"], five["ci_high"]) == pytest.approx(stats.bootstrap_ci(fold_means, seed=4))
    assert stats.compare(runs_frame(records), seed=4).equals(stats.compare(runs_frame(records), seed=4))


def test_bootstrap_is_bca_and_falls_back_to_percentile_when_bca_cannot_apply():
    from scipy.stats import bootstrap

    values = np.array([0.01, 0.03, 0.02, 0.07, 0.04])
    bca = bootstrap((values,), np.mean, n_resamples=stats.RESAMPLES, method="BCa",
                    rng=np.random.default_rng(2)).confidence_interval
    assert stats.bootstrap_ci(values, seed=2) == pytest.approx((bca.low, bca.high))
    assert stats.bootstrap_ci([0.02] * 5) == (0.02, 0.02)  # no spread: BCa is undefined, the interval a point
    assert stats.bootstrap_ci([0.0, 0.1, 0.1, 0.1]) == pytest.approx((0.025, 0.1))  # 2 distinct: percentile


def test_five_folds_never_reach_wilcoxon_p_below_five_percent():
    # the default study (5 folds x 3 seeds), every run better: 15 run pairs gave p = 2 / 2^15 before
    cells = [(f, s) for f in range(1, 6) for s in range(3)]
    records = [record("baseline", "lightweight", f, s, 0.5) for f, s in cells]
    records += [record("hrf", "lightweight", f, s, 0.5 + 0.01 * (f + s)) for f, s in cells]
    row = stats.compare(runs_frame(records)).iloc[0]
    assert row["pairs"] == 5 and row["p_wilcoxon"] == pytest.approx(2 / 2 ** 5)  # 0.0625, the smallest
    assert stats.wilcoxon_p([0.02] * 5) == pytest.approx(0.0625)  # ties do not go below it either
    assert stats.wilcoxon_p([0.02] * 6) == pytest.approx(2 / 64)


@pytest.mark.parametrize("case", range(6))
def test_macro_f1_averages_over_every_class_like_scikit_learn(case):
    from sklearn.metrics import f1_score

    from bench.training.metrics import scores

    rng = np.random.default_rng(case)
    num_classes = 4 + case % 3
    present = rng.choice(num_classes, size=num_classes - 1 - case % 2, replace=False)  # 1-2 classes absent
    labels = rng.choice(present, size=40)
    predictions = np.where(rng.random(40) < 0.6, labels, rng.integers(0, num_classes, size=40))
    expected = f1_score(labels, predictions, labels=range(num_classes), average="macro", zero_division=0)
    assert scores(labels, predictions, num_classes)["macro_f1"] == pytest.approx(expected)
    # the case from the issue: 2 of 3 classes present, 0.762 over the present ones, 0.508 over all
    assert scores([0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 2], 3)["macro_f1"] == pytest.approx(
        f1_score([0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 2], labels=range(3), average="macro", zero_division=0))


def test_runs_of_one_dataset_name_on_different_corpora_are_told_apart():
    first = [dict(r, corpus_fingerprint="aaaaaaaa1111") for r in fixed_records()]
    second = [dict(r, run_id=r["run_id"] + "-b", corpus_fingerprint="bbbbbbbb2222", ua=r["ua"] - 0.3)
              for r in fixed_records()]
    older = [dict(r, run_id=r["run_id"] + "-c") for r in fixed_records() if r["method"] == "baseline"]
    runs = runs_frame(first + second + older)
    assert set(runs["dataset"]) == {"toy@aaaaaaaa", "toy@bbbbbbbb", "toy@unknown"}
    table = summary_table(runs).set_index(["dataset", "method", "preset"])
    assert table.loc[("toy@aaaaaaaa", "hrf", "lightweight"), "ua_mean"] == pytest.approx(0.625)
    assert table.loc[("toy@bbbbbbbb", "hrf", "lightweight"), "ua_mean"] == pytest.approx(0.325)
    assert table.loc[("toy@bbbbbbbb", "hrf", "lightweight"), "light_ua"] == pytest.approx(0.05)  # paired within
    assert table.loc[("toy@unknown", "baseline", "lightweight"), "runs"] == 4
    assert "## toy@aaaaaaaa" in to_markdown(table.reset_index())
    one = runs_frame(first)  # one corpus per name: the plain name
    assert set(one["dataset"]) == {"toy"} and set(runs_frame(fixed_records())["dataset"]) == {"toy"}


def failed(method: str, preset: str, fold: int, seed: int, reason: str) -> dict:
    kept = ("run_id", "method", "method_params", "backbone", "preset", "dataset", "fold", "seed", "train_epochs")
    return {k: v for k, v in record(method, preset, fold, seed, 0.0).items() if k in kept} | {
        "run_id": f"{method}-{preset}-{fold}-{seed}-failed", "status": "failed", "status_reason": reason}


def test_failed_runs_are_counted_and_listed_never_averaged_or_paired(capsys):
    from bench.reporting.summary import print_summary

    records = fixed_records() + [
        failed("hrf", "lightweight", 3, 0, "budget 355844 params unreachable: rank 1 holds 520548"),
        failed("baseline", "lightweight", 3, 0, "out of memory"), failed("lowrank", "lightweight", 1, 0, "unreachable budget")]
    runs = runs_frame(records)
    assert (runs["status"] == "failed").sum() == 3 and (runs["status"] == "ok").sum() == 12
    table = summary_table(runs).set_index(["method", "preset"])
    hrf = table.loc[("hrf", "lightweight")]
    assert hrf["ua_mean"] == pytest.approx(0.625) and hrf["runs"] == 4 and hrf["failed"] == 1
    assert hrf["folds"] == 2 and hrf["pairs"] == 2 and hrf["diff_mean"] == pytest.approx(0.05)
    assert table.loc[("baseline", "large"), "failed"] == 0
    lowrank = table.loc[("lowrank", "lightweight")]
    assert lowrank["runs"] == 0 and lowrank["failed"] == 1 and math.isnan(lowrank["ua_mean"])
    assert len(stats.paired_differences(runs)) == 8  # hrf and large, 4 pairs each; no failed run pairs
    print_summary(records)
    out = capsys.readouterr().out
    assert "3 failed runs" in out and "failed" in out.splitlines()[1]  # a column of the table
    assert "hrf-lightweight-3-0-failed: hrf convtransformer @lightweight toy fold 3 seed 0: budget 355844" in out
    assert "lowrank convtransformer @lightweight toy fold 1 seed 0: unreachable budget" in out


@pytest.mark.parametrize("large_gain, warned", [(-0.05, True), (0.0, True), (0.04, False)])
def test_methods_starting_from_the_large_model_warn_when_it_is_not_better(large_gain, warned):
    light = {1: 0.50, 2: 0.55, 3: 0.60}
    records = [record("baseline", "lightweight", f, 0, ua) for f, ua in light.items()]
    records += [record("baseline", "large", f, 0, ua + large_gain) for f, ua in light.items()]
    for method in ("kd", "prune", "lowrank", "prune-unstructured", "hrf", "quant", "kd+quant"):
        records += [record(method, "lightweight", f, 0, ua + 0.01) for f, ua in light.items()]
    # a record naming its teacher counts even for a method this registry does not know
    records += [record("distill-x", "lightweight", f, 0, ua, teacher_preset="large") for f, ua in light.items()]
    table = summary_table(runs_frame(records)).set_index("method")
    starting = ["kd", "prune", "lowrank", "prune-unstructured", "kd+quant", "distill-x"]
    for method in starting:
        assert bool(table.loc[method, "warning"]) is warned, method
    assert (table.loc[["hrf", "quant", "baseline"], "warning"] == "").all()
    if warned:
        assert "uninterpretable" in table.loc["kd", "warning"] and f"{100 * large_gain:+.1f} points over 3 folds" in \
            table.loc["kd", "warning"]
        terminal = to_terminal(table.reset_index())
        assert "warning: kd convtransformer @lightweight: baseline @large is not better" in terminal
    # no large baseline to judge by: no warning
    alone = summary_table(runs_frame([r for r in records if r["preset"] != "large"]))
    assert (alone["warning"] == "").all()


def test_a_large_lead_whose_paired_interval_includes_zero_gets_the_milder_warning():
    light = {1: 0.50, 2: 0.55, 3: 0.60, 4: 0.52, 5: 0.58}
    gains = {1: 0.08, 2: -0.03, 3: 0.02, 4: -0.02, 5: 0.01}  # mean +1.2 points, interval across 0
    records = [record("baseline", "lightweight", f, 0, ua) for f, ua in light.items()]
    records += [record("baseline", "large", f, 0, ua + gains[f]) for f, ua in light.items()]
    records += [record("kd", "lightweight", f, 0, ua + 0.01) for f, ua in light.items()]
    table = summary_table(runs_frame(records)).set_index("method")
    large = table.loc["baseline"].set_index("preset").loc["large"]
    assert large["diff_mean"] > 0 and large["ci_low"] <= 0 < large["ci_high"]
    warning = table.loc["kd", "warning"]
    assert "not shown better" in warning and "+1.2 points over 5 folds" in warning and "includes 0" in warning
    assert "uninterpretable" not in warning


def test_real_runs_pair_on_the_folds_both_ran_and_a_failed_run_is_listed(tiny_grid_results, capsys):
    from bench.reporting.results import RecordStore
    from bench.reporting.summary import print_summary

    records, problems = RecordStore(tiny_grid_results).load()
    assert not problems
    is_light = [r["method"] == "baseline" and r["preset"] == "lightweight" for r in records]
    # baseline @lightweight (the "large" reference here) kept on fold 1 only; its fold 2 seed 0 run failed
    kept = [r for r, light in zip(records, is_light) if not light or r["fold"] == 1]
    lost = next(r for r, light in zip(records, is_light) if light and r["fold"] == 2 and r["seed"] == 0)
    identity = ("run_id", "method", "method_params", "backbone", "preset", "dataset", "corpus_fingerprint", "fold", "seed")
    kept.append({k: v for k, v in lost.items() if k in identity or k.startswith(("train_", "features_"))}
                | {"status": "failed", "status_reason": "budget unreachable"})
    table = summary_table(runs_frame(kept), light_preset="tiny", large_preset="lightweight")
    table = table.set_index(["method", "preset"])
    ua = {(r["method"], r["preset"], r["fold"], r["seed"]): r["ua"] for r in kept if "ua" in r}
    fold_1 = [ua[("baseline", "lightweight", 1, s)] - ua[("baseline", "tiny", 1, s)] for s in (0, 1)]
    light = table.loc[("baseline", "lightweight")]
    assert (light["runs"], light["failed"], light["pairs"]) == (2, 1, 1)
    assert light["diff_mean"] == pytest.approx(np.mean(fold_1)) and math.isnan(light["ci_low"])
    if "hrf" in set(table.reset_index()["method"]):
        hrf = table.loc[("hrf", "tiny")]
        by_hand = np.mean([ua[("hrf", "tiny", 1, s)] - ua[("baseline", "lightweight", 1, s)] for s in (0, 1)])
        assert hrf["large_ua"] == pytest.approx(by_hand) and hrf["large_pairs"] == 1 and hrf["warning"] == ""
    print_summary(kept, light_preset="tiny", large_preset="lightweight")
    assert f"{lost['run_id']}: baseline {lost['backbone']} @lightweight toy fold 2 seed 0: budget unreachable" \
        in capsys.readouterr().out


def forest_records(deltas: dict[str, list[float]], method: str = "hrf") -> list[dict]:
    """``method`` and its plain baseline on each dataset, one fold per listed difference (seed 0)."""
    records = []
    for dataset, differences in deltas.items():
        for fold, delta in enumerate(differences, 1):
            base = 0.5 + 0.01 * fold
            records += [record("baseline", "lightweight", fold, 0, base, dataset=dataset,
                               run_id=f"b-{dataset}-{fold}"),
                        record(method, "lightweight", fold, 0, base + delta, dataset=dataset,
                               run_id=f"{method}-{dataset}-{fold}")]
    return records


def test_forest_pools_cells_by_inverse_variance_plus_heterogeneity():
    # two corpora that agree: equal fold spreads, no heterogeneity, so the pooled mean is the cells' mean
    agree = stats.forest(runs_frame(forest_records({"a": [0.01, 0.03, 0.05], "b": [0.02, 0.04, 0.06]})))
    cells, pooled = agree[agree["row"] == "cell"], agree[agree["row"] == "pooled"].iloc[0]
    assert list(cells["dataset"]) == ["a", "b"] and list(cells["diff_mean"]) == pytest.approx([0.03, 0.04])
    variance = np.var([0.01, 0.03, 0.05], ddof=1) / 3  # of each cell's mean
    # Q = sum w (d - mean)^2 = 2 * 0.005^2 / variance = 0.375 < k - 1 = 1: tau2 = 0, the fixed-effect answer
    assert pooled["tau2"] == 0.0 and pooled["diff_mean"] == pytest.approx(0.035)
    half = 1.959964 * math.sqrt(variance / 2)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((0.035 - half, 0.035 + half), rel=1e-4)
    assert list(cells["weight"]) == pytest.approx([0.5, 0.5]) and pooled["folds"] == 6

    # two that disagree: between-cell variance widens the interval beyond the fixed-effect one
    disagree = stats.forest(runs_frame(forest_records({"a": [0.01, 0.03, 0.05], "b": [-0.09, -0.07, -0.05]})))
    wide = disagree[disagree["row"] == "pooled"].iloc[0]
    assert wide["tau2"] > 0 and wide["i2"] > 0.9 and wide["diff_mean"] == pytest.approx(-0.02)
    assert wide["ci_high"] - wide["ci_low"] > 2 * half and wide["ci_low"] < 0 < wide["ci_high"]


def test_forest_shows_but_does_not_pool_a_single_fold_and_leaves_out_references():
    records = forest_records({"a": [0.01, 0.03, 0.05], "b": [0.02]})
    records += forest_records({"a": [0.1, 0.1, 0.1]}, method="svm")
    table = stats.forest(runs_frame(records), leave_out=("svm",))
    assert set(table["method"]) == {"hrf"} and list(table["row"]) == ["cell", "cell"]  # 1 usable cell: no pool
    single = table[table["dataset"] == "b"].iloc[0]
    assert single["folds"] == 1 and math.isnan(single["ci_low"]) and math.isnan(single["weight"])


def test_a_methods_budget_points_join_into_one_curve_per_other_setting():
    """The tradeoff figure's curves: prune's ratios joined per budget kind, presets of hrf joined, the
    plain baseline left to the frontier, a method with one point drawn as a point only."""
    import pandas as pd

    from bench.reporting.plots import method_curves

    rows = [("baseline", "", "tiny", 1e4, 0.60), ("baseline", "", "lightweight", 1e5, 0.70),
            ("prune", "prune.budget=params, prune.ratio=0.5", "lightweight", 4e5, 0.72),
            ("prune", "prune.budget=params, prune.ratio=0.125", "lightweight", 1e5, 0.66),
            ("prune", "prune.budget=macs, prune.ratio=0.5", "lightweight", 5e5, 0.71),
            ("prune", "prune.budget=macs, prune.ratio=0.25", "lightweight", 2e5, 0.69),
            ("hrf", "", "tiny", 1e4, 0.62), ("hrf", "", "lightweight", 1e5, 0.71), ("kd", "", "lightweight", 1e5, 0.7)]
    panel = pd.DataFrame(rows, columns=["method", "config", "preset", "params", "headline_mean"]).assign(settings="")
    curves = dict(method_curves(panel, "params"))
    assert sorted(k.split(" |")[0] for k in curves) == ["hrf ", "prune prune.budget=macs", "prune prune.budget=params"]
    params_curve = curves["prune prune.budget=params | "]
    assert list(params_curve["params"]) == [1e5, 4e5]  # by increasing cost
    assert list(curves["hrf  | "]["preset"]) == ["tiny", "lightweight"]
