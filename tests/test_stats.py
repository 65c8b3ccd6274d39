"""The statistics behind every accuracy in the report: intervals, paired and unpaired tests,
the items a claim needs, and the robustness verdict they support."""

from __future__ import annotations

import math

import pytest

from pdclm.cognition.ccm import Solution
from pdclm.config import TasksConfig
from pdclm.data.tasks import held_out, make_source
from pdclm.eval import claims, stats
from pdclm.eval import tasks as eval_tasks
from pdclm.eval.report import headline, task_table

Z = 1.959963984540054  # the normal 97.5 % quantile


# ------------------------------------------------------------------------------ intervals
def test_wilson_interval_at_none_half_and_all_of_48():
    # none right: [0, z^2 / (n + z^2)], the closed form of the Wilson bound at p = 0
    assert stats.wilson_interval(0.0, 48, Z) == (0.0, pytest.approx(Z**2 / (48 + Z**2)))
    assert stats.wilson_interval(0.0, 48)[1] == pytest.approx(0.0741, abs=1e-4)
    # half right: centre 0.5, half-width z / (1 + z^2/n) * sqrt(1/(4n) + z^2/(4n^2))
    half = Z / (1 + Z**2 / 48) * math.sqrt(0.25 / 48 + Z**2 / (4 * 48**2))
    lo, hi = stats.wilson_interval(0.5, 48, Z)
    assert (lo, hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert (lo, hi) == (pytest.approx(0.3639, abs=1e-4), pytest.approx(0.6361, abs=1e-4))
    # all right mirrors none right
    assert stats.wilson_interval(1.0, 48) == (pytest.approx(1 - 0.0741, abs=1e-4), 1.0)
    assert stats.proportion(12, 48) == {
        "right": 12,
        "n": 48,
        "accuracy": 0.25,
        "ci95": list(stats.wilson_interval(0.25, 48)),
    }


def test_clopper_pearson_matches_closed_forms_and_tables():
    # 0 of n: upper = 1 - (alpha/2)^(1/n); n of n: lower = (alpha/2)^(1/n)
    assert stats.clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025**0.1, abs=1e-9))
    assert stats.clopper_pearson(10, 10) == (pytest.approx(0.025**0.1, abs=1e-9), 1.0)
    lo, hi = stats.clopper_pearson(5, 10)  # the tabulated exact interval of 5/10
    assert lo == pytest.approx(0.1871, abs=1e-4) and hi == pytest.approx(0.8129, abs=1e-4)


# ---------------------------------------------------------------------------- comparisons
def test_exact_mcnemar_is_the_two_sided_binomial_on_discordant_pairs():
    # 8 vs 1 discordant: 2 * P(X <= 1 | 9, 1/2) = 2 * (1 + 9) / 2^9
    assert stats.mcnemar_exact(8, 1) == pytest.approx(20 / 512)
    assert stats.mcnemar_exact(1, 8) == stats.mcnemar_exact(8, 1)
    assert stats.mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # 5-0 is not yet significant
    assert stats.mcnemar_one_sided(6, 1) == pytest.approx(8 / 128)  # P(X >= 6 | 7, 1/2)
    assert stats.mcnemar_one_sided(1, 6) == pytest.approx(127 / 128)  # the other way
    assert stats.mcnemar_one_sided(0, 0) == 1.0
    assert stats.mcnemar_exact(6, 0) == pytest.approx(2 / 64)  # 6-0 is
    assert stats.mcnemar_exact(4, 4) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0


def test_paired_relative_interval_agrees_with_the_test():
    sig = stats.paired(both=10, only_a=8, only_b=1, neither=30)
    assert sig["a"]["right"] == 18 and sig["b"]["right"] == 11 and sig["n"] == 49
    assert sig["relative_change"] == pytest.approx(18 / 11 - 1)
    assert sig["p_value"] == pytest.approx(20 / 512)
    lo, hi = sig["relative_ci95"]
    assert 0 < lo < sig["relative_change"] < hi  # significant: the interval excludes 0
    flat = stats.paired(both=10, only_a=5, only_b=0, neither=30)
    assert flat["p_value"] > 0.05 and flat["relative_ci95"][0] < 0
    # B never right: the change has no upper bound (None, since JSON has no infinity)
    none = stats.paired(both=0, only_a=3, only_b=0, neither=10)
    assert none["relative_change"] is None and none["relative_ci95"][1] is None
    assert stats.paired_from_flags([True, True, False], [True, False, True]) == stats.paired(
        1, 1, 1, 0
    )


def test_fisher_exact_for_different_items():
    # hypergeometric tables of 10/40 vs 2/40 no likelier than the one seen (scipy: 0.025204)
    assert stats.fisher_exact(10, 40, 2, 40) == pytest.approx(0.025204, abs=1e-6)
    assert stats.fisher_exact(3, 78, 3, 78) == pytest.approx(1.0)
    u = stats.unpaired(10, 40, 2, 40)
    assert u["relative_change"] == pytest.approx(4.0) and u["relative_ci95"][0] > 0


# ---------------------------------------------------------------------------- sample size
def test_items_needed_matches_a_worked_example_and_grows_as_the_effect_shrinks():
    # base 0.25, +40 % (delta 0.1), 20 % of items discordant:
    # (1.95996 sqrt(0.2) + 0.84162 sqrt(0.2 - 0.01))^2 / 0.01 = 154.6 -> 155
    assert stats.paired_items_needed(0.25, 0.4, 0.2) == 155
    needs = [stats.paired_items_needed(0.25, r, 0.2) for r in (0.8, 0.6, 0.4, 0.3, 0.2, 0.1)]
    assert needs == sorted(needs) and len(set(needs)) == len(needs)
    assert stats.paired_items_needed(0.25, 0.4, 0.3) > 155  # more discordance, more items
    assert stats.paired_items_needed(0.25, 0.4, 0.2, power=0.9) > 155
    assert stats.paired_items_needed(0.05, 0.3, 0.02) < stats.paired_items_needed(0.05, 0.3)
    assert stats.paired_items_needed(0.0, 0.3) is None  # no base rate: no relative change
    assert stats.paired_items_needed(0.9, 0.3) is None  # 1.17 is no accuracy


# ------------------------------------------------------------------- the robustness claim
def robustness(both: int, reflect_only: int, plain_only: int, neither: int) -> dict:
    """Phase 3's robustness record with per-item pairs on the perturbed wording."""
    n = both + reflect_only + plain_only + neither
    return {
        "items": n,
        "items_per_task": 6,
        "plain": {"clean": 0.5, "perturbed": (both + plain_only) / n},
        "reflect": {"clean": 0.5, "perturbed": (both + reflect_only) / n},
        "paired": {
            "perturbed": {
                "both": both,
                "reflect_only": reflect_only,
                "plain_only": plain_only,
                "neither": neither,
            }
        },
    }


def test_robustness_holds_on_a_significant_gain_of_thirty_percent():
    r = claims.robustness_row(robustness(40, 40, 10, 310), "x")  # 0.20 vs 0.125: +60 %
    assert r["verdict"] == "holds" and r["ratio"] == pytest.approx(1.6)
    assert r["test"]["test"] == "exact McNemar" and r["test"]["p_value"] < 1e-4
    assert "40 vs 10" not in r["measure"] and "80 vs 50 right" in r["measure"]


def test_robustness_does_not_hold_when_the_interval_lies_below_thirty_percent():
    r = claims.robustness_row(robustness(100, 10, 10, 280), "x")  # no change, tight interval
    assert r["verdict"] == "does not hold"
    assert r["test"]["relative_ci95"][1] < 0.3 and "below +30 %" in r["measure"]
    worse = claims.robustness_row(robustness(20, 2, 20, 158), "x")
    assert worse["verdict"] == "does not hold" and "significantly worse" in worse["measure"]


def test_robustness_not_measurable_says_how_many_items_it_needs():
    rob = robustness(1, 3, 2, 72)  # 78 questions, 4 vs 3 right
    r = claims.robustness_row(rob, "x")
    need = stats.paired_items_needed(3 / 78, 0.3, 5 / 78)
    assert r["verdict"] == "not measurable at this size"
    assert r["test"]["needed_items"] == need and need > 78
    assert f"about {need:,} questions" in r["measure"] and "78 held-out questions" in r["measure"]
    # a report from before the pairing was recorded: Fisher's test, independent discordance
    del rob["paired"]
    old = claims.robustness_row(rob, "x")
    assert old["verdict"] == "not measurable at this size"
    assert old["test"]["test"] == "Fisher exact" and "pairing was not recorded" in old["measure"]
    assert old["test"]["needed_items"] == stats.paired_items_needed(3 / 78, 0.3)
    # the main job's 2026-12-04 run: 5 and 5 right, the same five. No pair told the two
    # apart, which 78 items cannot rule out: the interval spans what 0 of 78 allows
    same = claims.robustness_row(robustness(5, 0, 0, 73), "x")
    lo, hi = same["test"]["relative_ci95"]
    assert lo < -0.3 and hi > 0.3 and same["verdict"] == "not measurable at this size"
    none = claims.robustness_row(robustness(0, 3, 0, 75), "x")
    assert none["verdict"] == "not measurable at this size"
    assert "got none right" in none["measure"]


# ----------------------------------------------------------------------------- reporting
def test_evaluate_tasks_carries_counts_and_intervals(monkeypatch):
    items = held_out(make_source("arithmetic"), 1, 20)

    def solve_sets(model, sets, budget, batch):
        return {
            name: [
                Solution(it.question, (), it.answer if i < 10 else "nonsense", False, 0)
                for i, it in enumerate(v)
            ]
            for name, v in sets.items()
        }

    monkeypatch.setattr(eval_tasks, "solve_sets", solve_sets)
    cfg = TasksConfig(names=["arithmetic"])
    t = eval_tasks.evaluate_tasks(None, {"arithmetic": items}, cfg)["tasks"]["arithmetic"]
    assert (t["right"], t["n"], t["accuracy"]) == (10, 20, 0.5)
    assert t["ci95"] == list(stats.wilson_interval(0.5, 20))
    assert t["above_constant"] == (t["ci95"][0] > t["constant_baseline"])
    assert (t["checked"]["right"], t["checked"]["revised"]) == (10, 0)  # nothing refuted

    def revise_refuted(model, questions, first, *args, **kwargs):  # the checks fix 3 answers
        return [
            Solution(q, (), items[i].answer, False, 0) if 10 <= i < 13 else s
            for i, (q, s) in enumerate(zip(questions, first, strict=True))
        ]

    monkeypatch.setattr(eval_tasks, "revise_refuted", revise_refuted)
    t = eval_tasks.evaluate_tasks(None, {"arithmetic": items}, cfg)["tasks"]["arithmetic"]
    assert t["accuracy"] == 0.5  # the greedy accuracy is not replaced
    assert (t["checked"]["right"], t["checked"]["n"], t["checked"]["revised"]) == (13, 20, 3)
    cfg.check_retries = 0
    assert (
        "checked"
        not in eval_tasks.evaluate_tasks(None, {"arithmetic": items}, cfg)["tasks"]["arithmetic"]
    )


def test_report_shows_intervals_and_the_paired_test():
    def task(acc: float, const: float) -> dict:
        return {"accuracy": acc, "n": 48, "constant_baseline": const, "constant_answer": "1"}

    tasks = {"clear": task(0.5, 0.30), "inside": task(0.5, 0.45)}
    report = {"phase3": {"tasks": tasks, "robustness": robustness(1, 8, 1, 68)}}
    _, rows = task_table(report)
    assert rows[0] == ["clear", "48", "0.30 (`1`)", "**0.50 [0.36, 0.64]**"]
    assert rows[1] == ["inside", "48", "0.45 (`1`)", "0.50 [0.36, 0.64]"]  # constant inside
    for t, right in zip(tasks.values(), (36, 24), strict=True):  # with the checks' accuracy
        t["checked"] = {"accuracy": right / 48, "n": 48, "revised": 3}
    header, rows = task_table(report)
    assert header[-1] == "phase3 with checked decoding"
    assert rows[0][-1] == "**0.75 [0.61, 0.85]**" and rows[1][-1] == "0.50 [0.36, 0.64]"
    assert rows[2][-1].startswith("**0.62")  # all tasks: 60 of 96
    line = next(r for r in headline(report) if "checked decoding" in r[0])
    assert line[1].startswith("0.62") and "6 answers revised" in line[2]
    line = next(r for r in headline(report) if r[0].startswith("accuracy on perturbed"))
    (rl, rh), (pl, ph) = stats.wilson_interval(9 / 78, 78), stats.wilson_interval(2 / 78, 78)
    assert (
        line[1] == f"reflect-and-revise 0.12 [{rl:.2f}, {rh:.2f}], direct 0.03 [{pl:.2f}, {ph:.2f}]"
    )
    assert "9 vs 2 right" in line[2] and "exact McNemar p = 0.039" in line[2]
