"""The run report for a person: report.md and the terminal summary say what ran and the
headline figures with their intervals, one task table, the claims by source and the plots, in
a page or two; the plots stay readable with a dozen tasks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.figure
import pytest

from pdclm.config import GENERATED_TASKS, GYM_TASKS, load_preset
from pdclm.eval import claims
from pdclm.eval.report import markdown, print_summary, task_table, write_report
from pdclm.eval.tasks import plot_budget_sweep, plot_task_accuracy, wilson_interval

TASKS = [*GYM_TASKS, *GENERATED_TASKS]


def task_results(accuracy: float, n: int = 40) -> dict:
    flags = {"flagged": 3, "wrong": 30, "caught": 2, "precision": 0.67, "recall": 0.07}
    tasks = {
        name: {
            "accuracy": accuracy if i % 2 else 0.0,
            "constant_baseline": 0.05,
            "constant_answer": "BC AB CB AC BA BC AC" if name == "hanoi" else "8",
            "n": n,
            "forced": 0.5,
            "thinking_bytes": 30.0,
            "consistency": flags,
            "example": {"question": "q", "steps": ["s"], "answer": "a", "gold": "g"},
        }
        for i, name in enumerate(TASKS)
    }
    return {"tasks": tasks, "consistency": flags}


def results() -> dict:
    """Three phases shaped as the trainers return them (13 tasks, 40 items each)."""
    p1 = task_results(0.0) | {
        "data": {"train_bytes": 308643, "val_bytes": 5753, "sources": ["stdlib"]},
        "entropy_model": {"params": 29536, "steps": 30, "val_bpb": 5.64},
        "patcher": {"rule": "entropy_jump", "mean_len": 4.34, "median_len": 3.0, "max_len": 16},
        "model": {"params": 175712},
        "train": {"steps": 30, "seconds": 0.4, "bytes_per_s": 41323.7, "final_loss": 3.9},
        "val_bpb_initial": 8.0456,
        "val_bpb": 5.5590,
        "plots": ["phase1_patch_lengths.png"],
        "seconds": 3.1,
    }
    p2 = task_results(0.5) | {
        "budget_sweep": {n: {"0": 0.0, "2": 0.25, "16": 0.5} for n in TASKS},
        "agreement": {"samples": 2, "flagged": 12, "wrong": 12, "caught": 12},
        "text_bpb_before": 5.559,
        "text_bpb_after": 5.17,
        "rounds": [{"round": 0, "episodes": {"curriculum": 60, "dialogue": 4}}],
        "train": {"steps": 12, "seconds": 0.2, "symbols_per_s": 29527.1, "final_loss": 3.7},
        "plots": ["phase2_task_accuracy.png", "phase2_accuracy_vs_budget.png"],
        "seconds": 8.1,
    }
    p3 = task_results(0.4) | {
        "reflection": {"answer": {"flagged": 24, "wrong": 24, "caught": 20}},
        "robustness": {
            "items": 8,
            "items_per_task": 4,
            "tasks": ["chain_sum", "count_bits"],
            "plain": {"clean": 0.25, "perturbed": 0.125, "retained": 0.5},
            "reflect": {"clean": 0.25, "perturbed": 0.125, "retained": 0.5},
        },
        "rewards": {"correctness": {"first": 0.0, "last": 0.1}},
        "critic_trainings": [{"version": 0}, {"version": 1}],
        "train": {"steps": 4, "seconds": 2.7, "symbols_per_s": 233.0, "final_loss": 0.0},
        "plots": ["phase3_task_accuracy.png"],
        "seconds": 10.3,
    }
    return {"phase1": p1, "phase2": p2, "phase3": p3}


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict]:
    """A run folder with the report written over saved benchmarks that measure the
    robustness claim twice (two files) and the speed claim once."""
    bench = tmp_path / "bench"
    bench.mkdir()
    robust = claims.CLAIMS["robustness"]
    for name, ratio in (("a_cpu.json", 2.0), ("b_cpu.json", 0.5)):
        rows = [claims.row(robust, "m", ratio, 1.0, "holds", "pdclm bench x")]
        (bench / name).write_text(json.dumps({"claims": rows, "finished": "today"}))
    speed = claims.row(claims.CLAIMS["speed"], "m", 1.2, 1.0, "holds", "pdclm bench pretrain")
    (bench / "c_cpu.json").write_text(json.dumps({"claims": [speed]}))
    cfg = load_preset("tiny")
    cfg.bench.results_dir = str(bench)
    run = tmp_path / "run"
    run.mkdir()
    res = results()
    plot_task_accuracy({"after Phase 1": res["phase1"]["tasks"]}, run / "phase1_patch_lengths.png")
    plot_task_accuracy({"after Phase 2": res["phase2"]["tasks"]}, run / "phase2_task_accuracy.png")
    plot_budget_sweep(res["phase2"]["budget_sweep"], run / "phase2_accuracy_vs_budget.png")
    plot_task_accuracy({"after Phase 3": res["phase3"]["tasks"]}, run / "phase3_task_accuracy.png")
    return run, write_report(run, cfg, res, 21.5)


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(0.5, 10)  # the textbook case: 5 of 10
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0.0, 6)  # none right of 6: [0, z^2 / (n + z^2)]
    assert lo == 0.0 and hi == pytest.approx(1.96**2 / (6 + 1.96**2))
    assert wilson_interval(1.0, 6) == (pytest.approx(1 - hi), 1.0)
    assert wilson_interval(0.3, 0) == (0.0, 1.0)


def test_report_md_is_short_and_for_a_person(written):
    run, report = written
    md = (run / "report.md").read_text()
    assert len(md.splitlines()) < 150
    for section in ("## What ran", "## Headline figures", "## Held-out task accuracy"):
        assert section in md
    assert "## Claims" in md and "## Plots" in md
    assert not re.search(r"phase\d\.\w+\.", md), "raw dotted keys belong in report.json"
    assert "None" not in md
    # what ran: each phase's steps and wall time
    assert "| phase1 (pretrain) |" in md and "| 30 |" in md and "8.1 s" in md
    # headline: bits per byte before/after, pooled accuracy with its interval over 520 items
    assert "8.046 → 5.559" in md
    acc = 6 * 0.5 / 13
    lo, hi = wilson_interval(acc, 520)
    assert f"| mean held-out task accuracy, phase2 | {acc:.2f} [{lo:.2f}, {hi:.2f}] |" in md
    # the task table: every task once, n, interval per phase, beside the constant answer
    header, rows = task_table(report)
    assert header == [
        "task",
        "n",
        "best constant",
        "phase1 accuracy",
        "phase2 accuracy",
        "phase3 accuracy",
    ]
    assert [r[0] for r in rows] == [*TASKS, "all tasks"]
    lo, hi = wilson_interval(0.5, 40)
    chain = rows[TASKS.index("chain_sum")]
    assert chain[1:4] == ["40", "0.05 (`8`)", "0.00 [0.00, 0.09]"]
    assert chain[4] == f"**0.50 [{lo:.2f}, {hi:.2f}]**"  # wholly above the constant: bold
    # every plot is linked, exists, and comes with a caption
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 4 and all((run / f).exists() for f in links)
    assert markdown(report) == md


def test_claims_are_one_row_per_claim_with_this_run_first_and_apart(written):
    _, report = written
    md = markdown(report)
    section = md[md.index("## Claims") : md.index("## Plots")]
    ours = section[section.index("### Measured by this run") : section.index("### Saved")]
    saved = section[section.index("### Saved benchmarks") :]
    robust = claims.CLAIMS["robustness"]
    assert ours.count(robust) == 1 and "this run (Phase 3 robustness)" in ours
    # the tasks robustness was measured on, and why those, in the row and in the report's table
    assert "4 per task, of chain_sum, count_bits: the tasks answered above" in ours
    assert "8 questions (chain_sum, count_bits)." in md
    assert "a_cpu.json" not in ours
    assert saved.count(robust) == 1  # two files measured it: one row naming both
    row = next(line for line in saved.splitlines() if robust in line)
    assert "a_cpu.json" in row and "b_cpu.json" in row and "x0.50" in row
    for name in claims.CLAIMS.values():  # every claim, once per table
        assert saved.count(f"| {name} |") == 1
    # report.json keeps one row per claim and source
    sources = [r["source"] for r in report["claims"]["claims"] if r["claim"] == robust]
    assert sources[0] == "this run (Phase 3 robustness)" and len(sources) == 3


def test_terminal_summary_has_no_raw_keys_or_cut_names(written, capsys):
    _, report = written
    print_summary(report)
    out = capsys.readouterr().out
    assert not re.search(r"phase\d\.\w+\.", out) and "None" not in out
    for name in TASKS:
        assert name in out, name
    assert "8.046 → 5.559" in out and "[0.00, 0.09]" not in out  # intervals: report.md's
    assert "0.23 [" in out  # but the pooled accuracy's in the headline
    # the claims: this run's row, then one per claim from the saved files
    assert out.count("this run") == 1 and "a_cpu.json (+1 more)" in out
    assert "b_cpu.json" not in out


@pytest.fixture
def drawn(monkeypatch) -> list[matplotlib.figure.Figure]:
    """The figures the plot functions save, for inspection after they close them."""
    figures = []
    real = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return figures


def test_budget_sweep_is_a_heat_map_with_every_task_named(tmp_path, drawn):
    sweep = {n: {"0": 0.0, "2": i / 13, "16": 1 - i / 13} for i, n in enumerate(TASKS)}
    plot_budget_sweep(sweep, tmp_path / "sweep.png")
    ax = drawn[0].axes[0]
    assert len(ax.images) == 1, "one heat map"
    assert len(ax.lines) == 1  # the rule above the mean row; no line per task to share colours
    assert ax.images[0].get_array().shape == (len(TASKS) + 1, 3)  # + the mean row
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [*TASKS, "mean of all tasks"]
    cells = {t.get_text() for t in ax.texts}
    assert {"0.00", "1.00", "0.46", "0.54"} <= cells  # each cell labelled, the means too


def test_task_accuracy_plot_gives_each_phase_its_colour_and_each_task_a_row(tmp_path, drawn):
    by_phase = {
        "after Phase 2": task_results(0.5)["tasks"],
        "after Phase 3": task_results(0.25)["tasks"],
    }
    plot_task_accuracy(by_phase, tmp_path / "acc.png")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == TASKS
    _, labels = ax.get_legend_handles_labels()
    assert sorted(labels) == ["after Phase 2", "after Phase 3", "best constant answer"]
    colours = [c[0].get_color() for c in ax.containers]  # one error-bar series per phase
    assert len(colours) == 2 and len(set(colours)) == 2
