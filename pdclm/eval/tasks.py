"""Held-out task accuracy, always beside the best constant answer, and what the CCM catches.

Every phase ends with :func:`evaluate_tasks` on the same held-out questions, so the report can
set accuracy after Phase 1, 2 and 3 side by side. Phase 2 adds :func:`budget_sweep` (accuracy
as a function of the thinking budget) and :func:`agreement_check` (does disagreement across
samples flag wrong answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from pdclm.cognition.ccm import Budget, Solution, agreement, check, solve, source_reliance
from pdclm.cognition.selfplay import peer_context
from pdclm.config import TasksConfig
from pdclm.data.tasks import Item, Source, constant_baseline, held_out, make_source
from pdclm.model.pdclm import PDCLM


def held_out_sets(cfg: TasksConfig) -> dict[str, list[Item]]:
    return {n: held_out(make_source(n), cfg.eval_level, cfg.eval_items) for n in cfg.names}


def eval_budget(cfg: TasksConfig, steps: int | None = None) -> Budget:
    return Budget(cfg.think_steps if steps is None else steps, cfg.think_bytes, cfg.answer_bytes)


def generation_context(bf16: bool):
    """Generation runs under the same bf16 autocast as training where that is enabled."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def run_items(
    model: PDCLM,
    items: Sequence[Item],
    budget: Budget,
    batch: int,
    bf16: bool,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[Solution]:
    model.eval()
    with generation_context(bf16):
        return solve(
            model,
            [it.question for it in items],
            budget,
            temperature,
            generator=generator,
            batch=batch,
        )


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
    model: PDCLM, sets: dict[str, list[Item]], budget: Budget, batch: int, bf16: bool
) -> dict[str, list[Solution]]:
    """Greedy solutions for every task's items, in one batched pass, grouped back by task."""
    flat = [it for items in sets.values() for it in items]
    sols = iter(run_items(model, flat, budget, batch, bf16))
    return {name: [next(sols) for _ in items] for name, items in sets.items()}


def correct(source: Source, items: Sequence[Item], sols: Sequence[Solution]) -> list[bool]:
    """Full credit only, by the task's own verifier."""
    return [source.score(it, s.answer) >= 1.0 for it, s in zip(items, sols, strict=True)]


def evaluate_tasks(
    model: PDCLM, sets: dict[str, list[Item]], cfg: TasksConfig, bf16: bool
) -> dict[str, Any]:
    """Per task: accuracy, the best constant answer's accuracy, forced-answer rate, thinking
    length, and the consistency check's precision/recall at catching wrong answers."""
    solved = solve_sets(model, sets, eval_budget(cfg), cfg.batch, bf16)
    out: dict[str, Any] = {}
    all_flags, all_wrong = [], []
    for name, items in sets.items():
        source, part = make_source(name), solved[name]
        wrong = [not c for c in correct(source, items, part)]
        flags = [
            not check(s.steps, s.answer, it.task).consistent
            for it, s in zip(items, part, strict=True)
        ]
        all_flags += flags
        all_wrong += wrong
        const, const_acc = constant_baseline(source, items)
        out[name] = {
            "accuracy": (len(items) - sum(wrong)) / max(1, len(items)),
            "constant_baseline": const_acc,
            "constant_answer": const,
            "n": len(items),
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
    return {"tasks": out, "consistency": flag_stats(all_flags, all_wrong)}


def budget_sweep(
    model: PDCLM, sets: dict[str, list[Item]], cfg: TasksConfig, bf16: bool
) -> dict[str, dict[str, float]]:
    """Accuracy per task for each thinking-step budget in ``cfg.budgets``."""
    subsets = {n: items[: cfg.sweep_items] for n, items in sets.items()}
    out: dict[str, dict[str, float]] = {n: {} for n in subsets}
    for steps in cfg.budgets:
        solved = solve_sets(model, subsets, eval_budget(cfg, steps), cfg.batch, bf16)
        for name, items in subsets.items():
            right = correct(make_source(name), items, solved[name])
            out[name][str(steps)] = sum(right) / max(1, len(items))
    return out


def agreement_check(
    model: PDCLM, sets: dict[str, list[Item]], cfg: TasksConfig, bf16: bool, seed: int
) -> dict[str, Any]:
    """Sample several answers per question; does disagreement flag a wrong greedy answer?"""
    subsets = {n: items[: cfg.sweep_items] for n, items in sets.items()}
    flat = [it for items in subsets.values() for it in items]
    budget = eval_budget(cfg)
    greedy = run_items(model, flat, budget, cfg.batch, bf16)
    gen = torch.Generator().manual_seed(seed)
    k = cfg.agreement_samples
    sampled = run_items(
        model, [it for it in flat for _ in range(k)], budget, cfg.batch, bf16, 0.7, gen
    )
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
    """Held-out accuracy per task for each phase, with the best constant answer marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = {k: v for k, v in by_phase.items() if v}
    names = list(next(iter(phases.values())))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names)), 4.0))
    width = 0.8 / max(1, len(phases))
    for j, (label, tasks) in enumerate(phases.items()):
        xs = [i + j * width for i in range(len(names))]
        ax.bar(xs, [tasks[n]["accuracy"] for n in names], width, label=label)
    last = list(phases.values())[-1]
    for i, n in enumerate(names):
        ax.hlines(last[n]["constant_baseline"], i - width / 2, i + 0.8 - width / 2, colors="k")
    ax.plot([], [], "k-", label="best constant answer")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=35, ha="right")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_budget_sweep(sweep: dict[str, dict[str, float]], path: Path) -> Path:
    """Accuracy against the thinking-step budget: one line per task, the mean in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    budgets = sorted({int(b) for accs in sweep.values() for b in accs})
    for name, accs in sweep.items():
        ax.plot(budgets, [accs[str(b)] for b in budgets], alpha=0.5, lw=1, label=name)
    mean = [sum(a[str(b)] for a in sweep.values()) / len(sweep) for b in budgets]
    ax.plot(budgets, mean, "k-o", lw=2.5, label="mean")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("thinking budget (steps)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
