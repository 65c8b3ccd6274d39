"""Held-out task accuracy, always beside the best constant answer, and what the CCM catches.

Every phase ends with :func:`evaluate_tasks` on the same held-out questions, so the report can
set accuracy after Phase 1, 2 and 3 side by side. Phase 2 adds :func:`budget_sweep` (accuracy
as a function of the thinking budget) and :func:`agreement_check` (does disagreement across
samples flag wrong answers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pdclm.cognition.ccm import (
    Budget,
    Solution,
    agreement,
    check,
    revise_refuted,
    solve,
    source_reliance,
)
from pdclm.cognition.selfplay import peer_context
from pdclm.config import TasksConfig
from pdclm.data.episodes import Episode, weighted_symbols
from pdclm.data.tasks import (
    DEV_SEED,
    Item,
    Source,
    constant_baseline,
    held_out,
    make_source,
)
from pdclm.eval.stats import proportion, wilson_interval
from pdclm.model.pdclm import LN2, PDCLM
from pdclm.vocab import EOS


def held_out_sets(cfg: TasksConfig) -> dict[str, list[Item]]:
    """The final evaluation's questions per task (never trained on, never used to steer)."""
    return {n: held_out(make_source(n), cfg.eval_level, cfg.eval_items) for n in cfg.names}


def dev_sets(
    cfg: TasksConfig, n: int, evaluation: dict[str, list[Item]], level: int | None = None
) -> dict[str, list[Item]]:
    """``n`` development questions per task, disjoint from ``evaluation`` (the final
    evaluation's sets) and, like them, excluded from training: what a probe that steers
    training (a curriculum, a best-model choice) measures generalisation on."""
    taken = frozenset(it.question for items in evaluation.values() for it in items)
    return {
        name: held_out(make_source(name), level or cfg.eval_level, n, DEV_SEED, taken)
        for name in cfg.names
    }


def eval_budget(cfg: TasksConfig, steps: int | None = None) -> Budget:
    return Budget(cfg.think_steps if steps is None else steps, cfg.think_bytes, cfg.answer_bytes)


def autocast_context(bf16: bool):
    """Teacher-forced forwards of many positions at once (held-out bits, scoring, log-probs)
    run under the training's bf16 autocast where that is enabled.

    Generation does not: each step is one position per row, matmuls of a few rows at most,
    where autocast costs more than bf16 saves (it re-casts every weight at every step). On 2
    cores with AMX, fp32 generated x1.65 the bytes/s of bf16 for one row and x1.3 for a batch
    of task questions (docs/fast_paths.md)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def run_items(
    model: PDCLM,
    items: Sequence[Item],
    budget: Budget,
    batch: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[Solution]:
    model.eval()
    return solve(
        model, [it.question for it in items], budget, temperature, generator=generator, batch=batch
    )


@torch.no_grad()
def gold_bits(model: PDCLM, items: Sequence[Item], bf16: bool, batch: int = 32) -> list[float]:
    """Per item, the bits per symbol the model spends on its gold thinking and answer, read
    teacher-forced after the question: a continuous measure of how well a task is learned,
    far less noisy than greedy accuracy on a few questions (a curriculum's progress signal)."""
    model.eval()
    rows = [weighted_symbols(Episode(it.question, it.steps, it.answer), 0.0) for it in items]
    out: list[float] = []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        width = max(len(s) for s, _ in part)  # one item per row, padded after its end
        t = torch.tensor([s + [EOS] * (width - len(s)) for s, _ in part])
        w = torch.tensor([ws[1:] + [0.0] * (width - len(ws)) for _, ws in part])
        with autocast_context(bf16):
            logits = model(t)
        ce = F.cross_entropy(logits.float().transpose(1, 2), t[:, 1:], reduction="none")
        out += ((ce * w).sum(1) / w.sum(1).clamp(min=1) / LN2).tolist()
    return out


def flag_stats(flagged: Sequence[bool], wrong: Sequence[bool]) -> dict[str, float | int]:
    """How well a flag finds wrong answers: precision and recall against the verifier."""
    tp = sum(f and w for f, w in zip(flagged, wrong, strict=True))
    n_flag, n_wrong = sum(flagged), sum(wrong)
    return {
        "flagged": n_flag,
        "wrong": n_wrong,
        "caught": tp,
        "precision": tp / n_flag if n_flag else None,
        "recall": tp / n_wrong if n_wrong else None,
    }


def solve_sets(
    model: PDCLM, sets: dict[str, list[Item]], budget: Budget, batch: int
) -> dict[str, list[Solution]]:
    """Greedy solutions for every task's items, in one batched pass, grouped back by task."""
    flat = [it for items in sets.values() for it in items]
    sols = iter(run_items(model, flat, budget, batch))
    return {name: [next(sols) for _ in items] for name, items in sets.items()}


def correct(source: Source, items: Sequence[Item], sols: Sequence[Solution]) -> list[bool]:
    """Full credit only, by the task's own verifier."""
    return [source.score(it, s.answer) >= 1.0 for it, s in zip(items, sols, strict=True)]


def evaluate_tasks(
    model: PDCLM, sets: dict[str, list[Item]], cfg: TasksConfig, checked: bool = True
) -> dict[str, Any]:
    """Per task: accuracy with its item count and 95 % Wilson interval, the best constant
    answer's accuracy (and whether the interval is clear of it), forced-answer rate, thinking
    length, and the consistency check's precision/recall at catching wrong answers.

    With ``checked`` and ``cfg.check_retries``, also the accuracy under checked decoding
    (:func:`revise_refuted`): a refuted chain of thought is resumed before its first refuted
    step. It is reported beside the plain greedy accuracy, never in its place. On the cpu
    preset it costs ~15 s against ~8 s for the greedy pass (2 cores, 624 questions)."""
    budget = eval_budget(cfg)
    solved = solve_sets(model, sets, budget, cfg.batch)
    revisions: dict[str, list[Solution]] = {}
    if checked and cfg.check_retries:
        flat = [it.question for items in sets.values() for it in items]
        firsts = [s for part in solved.values() for s in part]
        gen = torch.Generator().manual_seed(0)
        revised = iter(
            revise_refuted(
                model, flat, firsts, budget, cfg.check_retries, generator=gen, batch=cfg.batch
            )
        )
        revisions = {name: [next(revised) for _ in items] for name, items in sets.items()}
    out: dict[str, Any] = {}
    all_flags, all_wrong = [], []
    for name, items in sets.items():
        source, part = make_source(name), solved[name]
        wrong = [not c for c in correct(source, items, part)]
        flags = [
            not check(s.steps, s.answer, it.task, s.question).consistent
            for it, s in zip(items, part, strict=True)
        ]
        all_flags += flags
        all_wrong += wrong
        const, const_acc = constant_baseline(source, items)
        acc = proportion(len(items) - sum(wrong), len(items))
        out[name] = {
            **acc,
            "constant_baseline": const_acc,
            "constant_answer": const,
            # above the best constant answer only where the interval is clear of it
            "above_constant": acc["ci95"][0] > const_acc,
            "forced": sum(s.forced for s in part) / max(1, len(part)),
            "thinking_bytes": sum(s.thinking_bytes for s in part) / max(1, len(part)),
            "consistency": flag_stats(flags, wrong),
            "example": {
                "question": items[0].question,
                "steps": list(part[0].steps),
                "answer": part[0].answer,
                "gold": items[0].answer,
            }
            if items
            else None,
        }
        if name in revisions:
            revised = revisions[name]
            out[name]["checked"] = {
                **proportion(sum(correct(source, items, revised)), len(items)),
                "revised": sum(a is not b for a, b in zip(part, revised, strict=True)),
            }
    return {"tasks": out, "consistency": flag_stats(all_flags, all_wrong)}


def budget_sweep(
    model: PDCLM, sets: dict[str, list[Item]], cfg: TasksConfig
) -> dict[str, dict[str, float]]:
    """Accuracy per task for each thinking-step budget in ``cfg.budgets``."""
    subsets = {n: items[: cfg.sweep_items] for n, items in sets.items()}
    out: dict[str, dict[str, float]] = {n: {} for n in subsets}
    for steps in cfg.budgets:
        solved = solve_sets(model, subsets, eval_budget(cfg, steps), cfg.batch)
        for name, items in subsets.items():
            right = correct(make_source(name), items, solved[name])
            out[name][str(steps)] = sum(right) / max(1, len(items))
    return out


def agreement_check(
    model: PDCLM, sets: dict[str, list[Item]], cfg: TasksConfig, seed: int
) -> dict[str, Any]:
    """Sample several answers per question; does disagreement flag a wrong greedy answer?"""
    subsets = {n: items[: cfg.sweep_items] for n, items in sets.items()}
    flat = [it for items in subsets.values() for it in items]
    budget = eval_budget(cfg)
    greedy = run_items(model, flat, budget, cfg.batch)
    gen = torch.Generator().manual_seed(seed)
    k = cfg.agreement_samples
    sampled = run_items(model, [it for it in flat for _ in range(k)], budget, cfg.batch, 0.7, gen)
    sources: dict[str, Source] = {n: make_source(n) for n in subsets}
    flags, wrong = [], []
    for j, (it, g) in enumerate(zip(flat, greedy, strict=True)):
        answers = [g.answer] + [s.answer for s in sampled[j * k : (j + 1) * k]]
        flags.append(bool(agreement(answers)["disagree"]))
        wrong.append(sources[it.source].score(it, g.answer) < 1.0)
    return {"samples": k, **flag_stats(flags, wrong)}


def source_separation(
    model: PDCLM, sets: dict[str, list[Item]], per_task: int = 8
) -> dict[str, Any]:
    """How much the gold answer's likelihood leans on a given context, per answer: the
    context is other agents' answers (the dialogue format), once stating the gold answer and
    once a wrong one. A model that keeps its sources apart gains when the context supports the
    answer and loses when it contradicts it; one that ignores the context shows ~0 for both."""

    model.eval()
    rows = []
    for name, items in sets.items():
        for it in items[:per_task]:
            wrong = next(a for a in ("0", "1", "2") if a != it.answer)
            support = source_reliance(model, peer_context([it.answer]), it.question, it.answer)
            against = source_reliance(model, peer_context([wrong]), it.question, it.answer)
            rows.append(
                {
                    "task": name,
                    "gain_supporting": support["context_gain_nats"],
                    "gain_contradicting": against["context_gain_nats"],
                }
            )
    n = max(1, len(rows))
    return {
        "answers": len(rows),
        "mean_gain_supporting_nats": sum(r["gain_supporting"] for r in rows) / n,
        "mean_gain_contradicting_nats": sum(r["gain_contradicting"] for r in rows) / n,
        "share_supporting_helps": sum(r["gain_supporting"] > 0 for r in rows) / n,
        "share_contradicting_hurts": sum(r["gain_contradicting"] < 0 for r in rows) / n,
        "per_answer": rows,
    }


def plot_task_accuracy(by_phase: dict[str, dict[str, Any]], path: Path) -> Path:
    """Held-out accuracy per task, one row per task so that every name reads horizontally:
    each phase a dot with its 95 % Wilson interval (an accuracy of 0 on a few items is a dot
    at 0 with a visible interval, not a missing bar), the best constant answer a black bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = {k: v for k, v in by_phase.items() if v}
    names = list(next(iter(phases.values())))
    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.42 * len(names)))
    spread = 0.5 / max(1, len(phases))
    for j, (label, tasks) in enumerate(phases.items()):
        ys, accs, lows, highs = [], [], [], []
        for i, name in enumerate(names):
            if name not in tasks:
                continue
            acc, n = tasks[name]["accuracy"], int(tasks[name].get("n", 0))
            lo, hi = wilson_interval(acc, n)
            ys.append(i + (j - (len(phases) - 1) / 2) * spread)
            accs.append(acc)
            lows.append(acc - lo)
            highs.append(hi - acc)
        ax.errorbar(
            accs,
            ys,
            xerr=[lows, highs],
            fmt="o",
            ms=5,
            capsize=2,
            lw=1.2,
            color=colours[j % len(colours)],
            label=label,
            zorder=3,
        )
    last = list(phases.values())[-1]
    consts = [last[n]["constant_baseline"] if n in last else math.nan for n in names]
    ax.scatter(
        consts,
        range(len(names)),
        marker="|",
        s=300,
        c="k",
        lw=2,
        label="best constant answer",
        zorder=2,
    )
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first task on top, as in the report's table
    for i in range(1, len(names)):
        ax.axhline(i - 0.5, color="0.9", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("held-out accuracy (dot) with its 95 % Wilson interval")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(phases) + 1,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_budget_sweep(sweep: dict[str, dict[str, float]], path: Path) -> Path:
    """Accuracy by thinking-step budget as a heat map, one row per task and the mean of all
    tasks in the last row: a dozen tasks read at a glance, each cell labelled with its value,
    where a dozen overlapping lines would reuse colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sweep)
    budgets = sorted({int(b) for accs in sweep.values() for b in accs})
    grid = [[sweep[n].get(str(b), math.nan) for b in budgets] for n in names]
    columns = [[row[k] for row in grid if not math.isnan(row[k])] for k in range(len(budgets))]
    grid.append([sum(c) / len(c) if c else math.nan for c in columns])
    labels = [*names, "mean of all tasks"]
    fig, ax = plt.subplots(figsize=(2.6 + 0.9 * len(budgets), 1.2 + 0.36 * len(labels)))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(grid):
        for k, v in enumerate(row):
            if not math.isnan(v):
                ax.text(
                    k,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="k" if v > 0.6 else "w",
                    weight="bold" if i == len(names) else None,
                )
    ax.axhline(len(names) - 0.5, color="w", lw=3)
    ax.set_xticks(range(len(budgets)))
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.get_yticklabels()[-1].set_fontweight("bold")
    ax.set_xlabel("thinking budget (steps)")
    ax.set_title("held-out accuracy by thinking budget", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_steps(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Each curriculum probe's accuracy on development questions (never trained on) against
    the optimizer step it ran at: a thin line per task, the mean of all tasks a thick black
    one. A task is probed at its level of the moment, so a point where the level moved is
    labelled with the new level (a dip there is a harder level, not forgetting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(n for r in records for n in r["tasks"]))
    colours = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, name in enumerate(names):
        points = [(r["step"], r["tasks"].get(name), r["levels"].get(name)) for r in records]
        points = [p for p in points if p[1] is not None]
        colour = colours[i % len(colours)]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "o-", ms=3, lw=1, color=colour, label=name)
        for (_, _, before), (x, y, level) in zip(points, points[1:], strict=False):
            if level != before:
                ax.annotate(
                    f"L{level}",
                    (x, y),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour,
                )
    means = [r for r in records if r["mean"] is not None]
    ax.plot(
        [r["step"] for r in means],
        [r["mean"] for r in means],
        "o-",
        color="k",
        lw=2.5,
        ms=5,
        label="mean of all tasks",
        zorder=5,
    )
    ax.set_xlabel("Phase 2 optimizer step")
    ax.set_ylabel("accuracy on development questions")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("curriculum probe on questions never trained on (Lk: level moved)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
