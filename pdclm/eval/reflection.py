"""What Phase 3 changed, measured on held-out questions: the reflection network's precision
and recall, robustness to perturbed wording with and without reflect-and-revise, answers to
unanswerable questions, and the reward channels over training."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch

from pdclm.cognition.reflection import (
    Reflector,
    gold_pair,
    judge,
    reflect_and_revise,
    score,
)
from pdclm.cognition.rewards import CHANNELS
from pdclm.config import Config
from pdclm.data.tasks import UNANSWERABLE, Item, unanswerable, verify
from pdclm.eval.robustness import perturbed_sets
from pdclm.eval.stats import paired_from_flags
from pdclm.eval.tasks import eval_budget, flag_stats, run_items
from pdclm.model.pdclm import PDCLM


def _subsets(sets: dict[str, list[Item]], n: int) -> list[Item]:
    return [it for items in sets.values() for it in items[:n]]


def reflection_quality(
    policy: PDCLM, critic: Reflector, sets: dict[str, list[Item]], cfg: Config
) -> dict[str, Any]:
    """Precision/recall of the critic's flags on the policy's held-out rollouts (greedy and
    one sample each), against the verifier (answers) and the CCM's step checks (steps); and
    how often it ranks a corrupted gold trace below its correct twin."""
    items = _subsets(sets, cfg.tasks.sweep_items)
    gen = torch.Generator().manual_seed(cfg.train.seed + 7)
    budget = eval_budget(cfg.tasks)
    sols = run_items(policy, items, budget, cfg.tasks.batch)
    sols += run_items(policy, items, budget, cfg.tasks.batch, 1.0, gen)
    judged = [judge(it, s) for it, s in zip(items + items, sols, strict=True)]
    scores = score(critic, [j.episode for j in judged])
    t = cfg.rl.reflection.threshold
    answer = flag_stats([s.answer < t for s in scores], [not j.answer_ok for j in judged])
    step_flags, step_wrong = [], []
    for j, s in zip(judged, scores, strict=True):
        for ok, p in zip(j.step_ok, s.steps, strict=False):
            if ok is not None:
                step_flags.append(p < t)
                step_wrong.append(not ok)
    rng = random.Random(cfg.train.seed)
    pairs = [p for it in items if it.steps and len(p := gold_pair(it, rng)) == 2]
    twin = score(critic, [ep.episode for pair in pairs for ep in pair])
    ranked = [twin[2 * i].answer > twin[2 * i + 1].answer for i in range(len(pairs))]
    return {
        "rollouts": len(judged),
        "answer": answer,
        "step": flag_stats(step_flags, step_wrong),
        "twin_pairs": len(pairs),
        "twin_ranked_right": sum(ranked) / len(ranked) if ranked else None,
        "params": sum(p.numel() for p in critic.parameters()),
        "params_vs_policy": sum(p.numel() for p in critic.parameters())
        / sum(p.numel() for p in policy.parameters()),
    }


def _accuracy(items: list[Item], answers: list[str]) -> float:
    return sum(verify(it, a) for it, a in zip(items, answers, strict=True)) / max(1, len(items))


def robustness_tasks(dev_accuracy: dict[str, float], constants: dict[str, float]) -> list[str]:
    """The tasks robustness is measured on: those the model answers above their best constant
    answer (``constants``: its accuracy on the evaluation's questions, as the task evaluation
    reports it) on its *development* questions, so the choice never looks at how it did on the
    questions measured; every task when none is. On a task the model cannot do, both modes
    score zero and the paired test learns nothing from its questions."""
    above = [n for n, const in constants.items() if dev_accuracy.get(n, 0.0) > const]
    return above or list(constants)


def robustness(
    policy: PDCLM, critic: Reflector, sets: dict[str, list[Item]], cfg: Config
) -> dict[str, Any]:
    """Accuracy on clean and perturbed wording of the same held-out questions, answering
    directly (``plain``) and with reflect-and-revise (``reflect``). ``retained`` is perturbed
    over clean accuracy; ``reflect_vs_plain`` the relative change reflection makes to it.
    ``paired`` counts, per wording, the items both modes, only one, or neither got right: what
    the claims table's paired test of reflection against answering directly needs."""
    n = cfg.rl.robustness_items
    clean = {k: v[:n] for k, v in sets.items()}
    noisy = perturbed_sets(clean, cfg.train.seed)
    budget = eval_budget(cfg.tasks)
    gen = torch.Generator().manual_seed(cfg.train.seed + 11)
    out: dict[str, Any] = {
        "items": sum(map(len, clean.values())),
        "items_per_task": n,
        "tasks": list(clean),
    }
    right: dict[tuple[str, str], list[bool]] = {}
    for mode in ("plain", "reflect"):
        accs = {}
        for label, group in (("clean", clean), ("perturbed", noisy)):
            items = [it for v in group.values() for it in v]
            if mode == "plain":
                sols = run_items(policy, items, budget, cfg.tasks.batch)
                answers = [s.answer for s in sols]
            else:
                history = reflect_and_revise(
                    policy,
                    critic,
                    [it.question for it in items],
                    budget,
                    cfg.rl.reflection,
                    gen,
                    cfg.tasks.batch,
                )
                answers = [h[-1].solution.answer for h in history]
            right[mode, label] = [verify(it, a) for it, a in zip(items, answers, strict=True)]
            accs[label] = sum(right[mode, label]) / max(1, len(items))
        accs["retained"] = accs["perturbed"] / accs["clean"] if accs["clean"] else None
        out[mode] = accs
    out["paired"] = {}
    for label in ("clean", "perturbed"):
        pairs = paired_from_flags(right["reflect", label], right["plain", label])
        out["paired"][label] = {
            "both": pairs["both"],
            "reflect_only": pairs["only_a"],
            "plain_only": pairs["only_b"],
            "neither": pairs["neither"],
        }
    p, r = out["plain"]["retained"], out["reflect"]["retained"]
    out["reflect_vs_plain"] = (r / p - 1) if p and r is not None else None
    pp, rp = out["plain"]["perturbed"], out["reflect"]["perturbed"]
    out["perturbed_accuracy_change"] = (rp / pp - 1) if pp else None
    return out


def unanswerable_check(policy: PDCLM, sets: dict[str, list[Item]], cfg: Config) -> dict[str, Any]:
    """Held-out questions with one number hidden: how often the model says so; and how often
    it wrongly says so on the intact questions."""
    rng = random.Random(cfg.train.seed)
    intact = _subsets(sets, cfg.tasks.sweep_items)
    hidden = [h for it in intact if (h := unanswerable(it, rng)) is not None]
    if not hidden:
        return {"items": 0}
    budget = eval_budget(cfg.tasks)
    said = run_items(policy, hidden, budget, cfg.tasks.batch)
    normal = run_items(policy, intact, budget, cfg.tasks.batch)
    return {
        "items": len(hidden),
        "says_unanswerable": _accuracy(hidden, [s.answer for s in said]),
        "false_unanswerable": sum(s.answer.strip().lower() == UNANSWERABLE for s in normal)
        / len(normal),
    }


def reward_curves(metrics: Path | None, phase: str = "phase3/grpo") -> dict[str, list[float]]:
    """Each reward channel's batch mean per update, from ``metrics.jsonl``."""
    out: dict[str, list[float]] = {c: [] for c in (*CHANNELS, "thinking_bytes")}
    if metrics is None or not metrics.exists():
        return out
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("phase") == phase and "correctness" in rec:
            for c in out:
                v = rec.get(c)
                out[c].append(float(v) if v is not None and not math.isnan(v) else float("nan"))
    return out


def plot_reward_channels(curves: dict[str, list[float]], path: Path) -> Path:
    """Every reward channel's mean over the updates (left) and the mean thinking length (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for c in CHANNELS:
        ax.plot(curves.get(c, []), label=c)
    ax.set_xlabel("update")
    ax.set_ylabel("batch mean reward")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    bx.plot(curves.get("thinking_bytes", []), "k-")
    bx.set_xlabel("update")
    bx.set_ylabel("mean thinking bytes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
